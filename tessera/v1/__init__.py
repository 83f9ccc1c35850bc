"""Generated protobuf and gRPC modules for package ``tessera.v1``; do not edit.

Regenerate with ``python scripts/gen_protos.py`` after changing ``protos/tessera/v1/*.proto``.
"""
