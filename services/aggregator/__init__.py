"""The aggregator service: owns each job's model, combines contributions, steps the optimizer.

Modules:
    config: ``AggregatorConfig``.
    ledger: exactly-once accounting by (job, round, task).
    models: ``JobModel``, a job's model, optimizer and open round (pure torch).
    rules: the aggregation-rule plugin family (mean, median, trimmed mean, Krum, centred clipping).
    ingest: receive buffers and the round's running sum (chunk folding, buffer pool).
    handlers: stream handling between protos and ``JobModel``.
    servicer, server: the gRPC adapter and its assembly.
"""
