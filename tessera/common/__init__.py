"""Shared kernel of the services and the SDK.

Modules:
    errors: the ``TesseraError`` hierarchy.
    grpc_server: ``create_server``, the one place server options, health and reflection are set.
    status: mapping between domain errors and gRPC status codes.
    retry: backoff helper used by background loops and the SDK.
    etcd: etcd client factory, key schema and record formats.
    metrics: Prometheus helpers.
"""
