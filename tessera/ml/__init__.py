"""Vetted models and data sets (pure torch; no gRPC, no code from the network).

Modules:
    datasets: data sets every node can load offline, and deterministic sharding.
    zoo: the model registry (job specs name a model; they never ship code).
    training: gradient computation, optimizer steps and evaluation shared by worker and aggregator.
"""
