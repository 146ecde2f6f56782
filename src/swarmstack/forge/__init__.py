"""Where branches go: the local forge (bare repositories held by the control plane), served to
sandboxes through the git broker."""
