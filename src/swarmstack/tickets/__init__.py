"""Tickets: the plan format, the DAG, and the store that agents pull work from."""
