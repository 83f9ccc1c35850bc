"""The registry service: admits volunteer nodes and keeps their liveness in etcd leases.

Modules:
    config: ``RegistryConfig`` from flags and environment.
    admission: pure validation of node profiles.
    store: ``NodeStore`` (contract) and ``EtcdNodeStore`` (lease-bound records).
    servicer: the thin gRPC adapter.
    server: ``create_registry_server`` and ``serve``.
"""
