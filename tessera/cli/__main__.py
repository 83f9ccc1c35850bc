"""``python -m tessera.cli``: the ``tessera`` command without the console script."""

from tessera.cli.app import main

main()
