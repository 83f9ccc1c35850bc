"""The worker: a volunteer's agent. Every connection it makes is outbound.

Modules:
    config: ``WorkerConfig``.
    heartbeat: ``HeartbeatSender``, the cancellable liveness loop.
    benchmark: measures the node's training throughput.
    trainer: computes a task's contribution with torch (no gRPC).
    agent: register, heartbeat, take tasks, fetch models, push gradients, report.
"""
