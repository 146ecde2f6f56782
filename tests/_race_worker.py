"""One claimer process of tests/test_race.py, started once and driven round by round.

Kept apart from the test module so that a child process imports only this, the client and
httpx — not pytest — and so the forkserver can import it once, before it forks the children.
"""

from __future__ import annotations

import sys
import threading
import traceback
from typing import Any

from swarmstack.client import SwarmClient

# What a worker writes into its slot of the shared ``results`` array each round.
LOST = 0  # the claim answered 204: nothing to claim
ERROR = -1  # anything else went wrong; the traceback is on stderr
STOP = 0  # the plan id that tells the workers to leave

BARRIER_TIMEOUT_S = 60.0


def agent_name(index: int) -> str:
    return f"racer-{index}"


def run(
    index: int,
    url: str,
    token: str,
    start: threading.Barrier,
    done: threading.Barrier,
    plan_box: Any,
    results: Any,
    epochs: Any,
) -> None:
    """Wait at ``start``; claim once in the plan ``plan_box`` names; record it; wait at ``done``.

    ``results[index]`` gets the won ticket's id, ``LOST`` or ``ERROR``; ``epochs[index]`` the
    won lease's epoch. A ``plan_box`` of ``STOP``, or a broken barrier, ends the loop.
    """
    name = agent_name(index)
    with SwarmClient(url, token, timeout=30) as api:
        api.health()  # opens the keep-alive connection before the first round
        while True:
            try:
                start.wait(BARRIER_TIMEOUT_S)
            except threading.BrokenBarrierError:
                return
            plan_id = plan_box.value
            if plan_id == STOP:
                return
            try:
                lease = api.claim(name, plan_id=plan_id, wait_s=0)
            except Exception:
                traceback.print_exc(file=sys.stderr)
                results[index], epochs[index] = ERROR, 0
            else:
                results[index] = lease.ticket.id if lease else LOST
                epochs[index] = lease.epoch if lease else 0
            try:
                done.wait(BARRIER_TIMEOUT_S)
            except threading.BrokenBarrierError:
                return
