"""Tessera services: registry, scheduler, aggregator and worker; each runs as its own process."""
