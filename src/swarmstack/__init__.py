"""Swarm: turn a written spec into merged, tested code by running many coding agents at once."""

__version__ = "0.1.0"
