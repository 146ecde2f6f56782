"""The ``swarm`` command: a thin layer over the library and the HTTP client."""
