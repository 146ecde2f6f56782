"""The agent side: the runner that works tickets inside a sandbox, and the drivers it runs."""
