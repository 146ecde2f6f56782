"""``python -m swarmstack.agent``: the runner, quick to start in a sandbox."""

from swarmstack.cli.agent import main

main()
