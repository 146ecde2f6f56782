"""Prometheus metrics, one registry per app so that several apps can live in one process."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from swarmstack.tickets.models import TicketState


class _TicketGauge(Collector):
    """Reads ticket counts from the store at scrape time, so they are never out of date."""

    def __init__(self, counts: Callable[[], dict[str, int]], waiting: Callable[[], int]) -> None:
        self._counts = counts
        self._waiting = waiting

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("swarm_tickets", "Tickets by state", labels=["state"])
        counts = self._counts()
        for state in TicketState:
            gauge.add_metric([state.value], counts.get(state.value, 0))
        yield gauge
        yield GaugeMetricFamily(
            "swarm_claim_waiters", "Agents long-polling for a ticket", value=self._waiting()
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "swarm_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.claims = Counter(
            "swarm_claims", "Claim requests by outcome", ["outcome"], registry=self.registry
        )
        self.lease_writes = Counter(
            "swarm_lease_writes",
            "Agent writes by kind and outcome",
            ["op", "outcome"],
            registry=self.registry,
        )
        self.claim_wait = Histogram(
            "swarm_claim_wait_seconds",
            "Time a claim request spent before it returned",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60),
            registry=self.registry,
        )

    def watch_store(self, counts: Callable[[], dict[str, int]], waiting: Callable[[], int]) -> None:
        self.registry.register(_TicketGauge(counts, waiting))

    def render(self) -> bytes:
        return generate_latest(self.registry)
