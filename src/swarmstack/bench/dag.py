"""Synthetic plans for benchmarks and tests: seeded, so a run can be repeated."""

from __future__ import annotations

import math
import random

from swarmstack.tickets.models import PlanSpec, Requirement, TicketSpec


def _synthetic(i: int, deps: list[str], rng: random.Random) -> TicketSpec:
    return TicketSpec(
        id=f"T{i}",
        title=f"synthetic ticket {i}",
        depends_on=deps,
        files=[f"src/mod_{i}.py"],
        estimate=rng.choice((0.5, 1.0, 2.0)),
        priority=rng.randint(0, 3),
    )


def random_plan(tickets: int, *, seed: int = 0, max_deps: int = 2, window: int = 200) -> PlanSpec:
    """A random DAG: ticket i depends on up to ``max_deps`` of the ``window`` tickets before it.

    About a third of the tickets have no dependency, so there is always parallel work, and
    most have one or two, so completions keep making tickets ready (which is what dispatch
    latency measures).
    """
    rng = random.Random(seed)
    specs = []
    for i in range(tickets):
        lo = max(0, i - window)
        k = rng.randint(0, max_deps) if i else 0
        deps = sorted({f"T{rng.randrange(lo, i)}" for _ in range(k)}) if i else []
        specs.append(_synthetic(i, deps, rng))
    return PlanSpec(title=f"synthetic DAG of {tickets}", tickets=specs)


def layered_plan(tickets: int, *, width: int = 200, seed: int = 0, max_deps: int = 2) -> PlanSpec:
    """Layers of ``width`` tickets; each ticket past the first layer depends on one to
    ``max_deps`` random tickets of the layer before.

    Every completion can make a dependent ready, so dispatch is exercised all the time, while
    the ready set stays wider than a hundred agents: the benchmark measures the control plane,
    not a DAG too narrow to keep the agents busy.
    """
    rng = random.Random(seed)
    specs = []
    for i in range(tickets):
        layer, previous = divmod(i, width)[0], (i // width - 1) * width
        deps: list[str] = []
        if layer:
            k = rng.randint(1, max_deps)
            deps = sorted({f"T{previous + rng.randrange(width)}" for _ in range(k)})
        specs.append(_synthetic(i, deps, rng))
    return PlanSpec(title=f"layered DAG of {tickets} ({width} wide)", tickets=specs)


def waved_plan(tickets: int, *, waves: int = 8, seed: int = 0, spread: float = 0.4) -> PlanSpec:
    """A plan in ``waves`` topological generations shaped as designed plans are: a few
    tickets first, the widest waves in the middle, fewer again at the end (wave sizes follow
    a sine arch, each scaled by a random factor of 0.7-1.3).

    A ticket of wave k > 0 depends on one random ticket of wave k - 1, which puts it in wave
    k, and half of them also on a random ticket of one of the four waves before it.
    Estimates are lognormal (median 1, ``spread`` the sigma of their logarithm), rounded to
    hundredths, as people estimate: most tickets alike, a few several times longer.
    """
    rng = random.Random(seed)
    waves = max(1, min(waves, tickets))
    weights = [
        (0.25 + math.sin(math.pi * (k + 0.5) / waves)) * rng.uniform(0.7, 1.3) for k in range(waves)
    ]
    # Every wave gets one ticket; the rest are shared by weight, largest remainders first.
    share = [(tickets - waves) * w / sum(weights) for w in weights]
    widths = [1 + int(s) for s in share]
    for k in sorted(range(waves), key=lambda k: int(share[k]) - share[k])[: tickets - sum(widths)]:
        widths[k] += 1
    layers: list[list[str]] = []
    specs: list[TicketSpec] = []
    for k, width in enumerate(widths):
        layer = [f"T{len(specs) + j}" for j in range(width)]
        for key in layer:
            deps = set()
            if k:
                deps.add(rng.choice(layers[k - 1]))
                if rng.random() < 0.5:
                    deps.add(rng.choice(layers[rng.randint(max(0, k - 4), k - 1)]))
            estimate = max(0.05, round(math.exp(rng.gauss(0.0, spread)), 2))
            specs.append(
                TicketSpec(
                    id=key,
                    title=f"wave {k} ticket {key}",
                    depends_on=sorted(deps),
                    estimate=estimate,
                )
            )
        layers.append(layer)
    return PlanSpec(title=f"waved DAG of {tickets} in {waves} waves", tickets=specs)


def chain_plan(tickets: int) -> PlanSpec:
    """T0 <- T1 <- ... : the deepest possible DAG."""
    return PlanSpec(
        title=f"chain of {tickets}",
        tickets=[
            TicketSpec(id=f"T{i}", title=f"step {i}", depends_on=[f"T{i - 1}"] if i else [])
            for i in range(tickets)
        ],
    )


def designed_plan(tickets: int, *, seed: int = 0, requirements: int | None = None) -> PlanSpec:
    """A random DAG shaped the way the design agent makes one, so that every check runs:
    a skeleton ticket that everything reaches, requirements that each ticket covers one of
    (about ten tickets a requirement), ``max_estimate``, and validation tickets at the end
    that depend on the work before them."""
    base = random_plan(tickets, seed=seed)
    count = requirements or max(1, tickets // 10)
    rng = random.Random(seed + 1)
    validation = set(range(max(1, tickets - max(1, tickets // 100)), tickets))
    specs = []
    for i, ticket in enumerate(base.tickets):
        deps = ticket.depends_on or ([] if i == 0 else ["T0"])
        if i in validation:
            deps = sorted({*deps, f"T{rng.randrange(0, min(validation))}"})
        specs.append(
            ticket.model_copy(
                update={
                    "phase": "skeleton"
                    if i == 0
                    else "validation"
                    if i in validation
                    else "expansion",
                    "depends_on": deps,
                    "covers": [f"R{i % count + 1}"],
                }
            )
        )
    return PlanSpec(
        title=f"designed DAG of {tickets}",
        requirements=[
            Requirement(id=f"R{n + 1}", text=f"requirement {n + 1}") for n in range(count)
        ],
        max_estimate=4.0,
        tickets=specs,
    )
