"""Benchmarks: each prints one JSON object (``swarm bench …``)."""
