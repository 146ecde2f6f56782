"""The store's claim order, simulated: what list scheduling alone gives, with no dispatch cost.

Agents take ready tickets by upward rank (then priority, then plan order) the moment they are
free, and a ticket is ready the moment its last dependency is done — as ``swarm serve`` does,
but with no time between a completion and the next claim. Set beside a measured run, it
separates what the scheduling policy costs from what dispatch over HTTP costs.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from swarmstack.tickets import graph
from swarmstack.tickets.models import PlanSpec


def makespan(
    spec: PlanSpec, seconds: Mapping[str, float], agents: int, *, strict_waves: bool = False
) -> float:
    """When the last ticket is done if ticket ``t`` takes ``seconds[t]`` on any of ``agents``.

    With ``strict_waves`` a ready ticket waits until every ticket of earlier waves is done.
    """
    rank = graph.upward_rank(spec)
    layers = graph.waves(spec)
    wave = {key: n for n, keys in enumerate(layers) for key in keys}
    order = {t.id: (-rank[t.id], -t.priority, i) for i, t in enumerate(spec.tickets)}
    unmet = {t.id: len(t.depends_on) for t in spec.tickets}
    dependents: dict[str, list[str]] = {t.id: [] for t in spec.tickets}
    for t in spec.tickets:
        for dep in t.depends_on:
            dependents[dep].append(t.id)
    left_in_wave = [len(keys) for keys in layers]
    open_wave = 0  # strict: the first wave with a ticket not done
    held: list[list[str]] = [[] for _ in left_in_wave]  # strict: ready, waiting for their wave
    ready: list[tuple[tuple[float, int, int], str]] = []

    def make_ready(key: str) -> None:
        if strict_waves and wave[key] > open_wave:
            held[wave[key]].append(key)
        else:
            heapq.heappush(ready, (order[key], key))

    for key, n in unmet.items():
        if n == 0:
            make_ready(key)
    running: list[tuple[float, int, str]] = []
    now, free = 0.0, agents
    while True:
        while free and ready:
            _, key = heapq.heappop(ready)
            heapq.heappush(running, (now + seconds[key], order[key][2], key))
            free -= 1
        if not running:
            return now
        now, _, key = heapq.heappop(running)
        free += 1
        left_in_wave[wave[key]] -= 1
        for dependent in dependents[key]:
            unmet[dependent] -= 1
            if unmet[dependent] == 0:
                make_ready(dependent)
        while open_wave < len(left_in_wave) - 1 and left_in_wave[open_wave] == 0:
            open_wave += 1
            for waiting in held[open_wave]:
                heapq.heappush(ready, (order[waiting], waiting))
            held[open_wave].clear()
