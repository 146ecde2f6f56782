"""The schema, as numbered migrations. Append new steps; never edit a released one."""

from __future__ import annotations

from swarmstack.db import Migration, Tx


def _v1_initial(tx: Tx) -> None:
    pk, real, big, txt = tx.dialect.autoincrement_pk, tx.dialect.real, tx.dialect.bigint, "TEXT"
    statements = [
        f"""CREATE TABLE plans (
            id {pk},
            title {txt} NOT NULL,
            description {txt} NOT NULL DEFAULT '',
            created_at {real} NOT NULL,
            spec {txt} NOT NULL
        )""",
        f"""CREATE TABLE tickets (
            id {pk},
            plan_id {big} NOT NULL REFERENCES plans(id),
            key {txt} NOT NULL,
            title {txt} NOT NULL,
            body {txt} NOT NULL,
            phase {txt} NOT NULL,
            depends_on {txt} NOT NULL,
            files {txt} NOT NULL,
            acceptance {txt} NOT NULL,
            covers {txt} NOT NULL,
            estimate {real} NOT NULL,
            priority INTEGER NOT NULL,
            rank {real} NOT NULL,
            state {txt} NOT NULL,
            unmet INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            epoch INTEGER NOT NULL DEFAULT 0,
            lease_agent {txt},
            lease_expires_at {real},
            retry_at {real},
            ready_at {real},
            updated_at {real} NOT NULL,
            last_error {txt},
            result {txt},
            UNIQUE (plan_id, key)
        )""",
        # Partial indexes hold only the rows each query looks for, so a state change touches
        # at most the index it leaves and the one it enters. The claim reads the first row.
        "CREATE INDEX tickets_claim ON tickets (rank DESC, priority DESC, id) "
        "WHERE state = 'ready'",
        "CREATE INDEX tickets_claim_plan ON tickets (plan_id, rank DESC, priority DESC, id) "
        "WHERE state = 'ready'",
        "CREATE INDEX tickets_lease ON tickets (lease_expires_at) WHERE state = 'claimed'",
        "CREATE INDEX tickets_retry ON tickets (retry_at) WHERE state = 'failed'",
        f"""CREATE TABLE deps (
            ticket_id {big} NOT NULL REFERENCES tickets(id),
            depends_on_id {big} NOT NULL REFERENCES tickets(id),
            PRIMARY KEY (ticket_id, depends_on_id)
        )""",
        "CREATE INDEX deps_reverse ON deps (depends_on_id, ticket_id)",
        f"""CREATE TABLE attempts (
            id {pk},
            ticket_id {big} NOT NULL REFERENCES tickets(id),
            epoch INTEGER NOT NULL,
            agent {txt} NOT NULL,
            token_hash {txt} NOT NULL,
            claimed_at {real} NOT NULL,
            ended_at {real},
            outcome {txt},
            request_hash {txt},
            response {txt},
            UNIQUE (ticket_id, epoch)
        )""",
        f"""CREATE TABLE tokens (
            id {pk},
            kind {txt} NOT NULL,
            name {txt} NOT NULL,
            token_hash {txt} NOT NULL,
            created_at {real} NOT NULL,
            revoked_at {real}
        )""",
        f"""CREATE TABLE events (
            seq {pk},
            ts {real} NOT NULL,
            kind {txt} NOT NULL,
            plan_id {big},
            ticket_id {big},
            data {txt} NOT NULL
        )""",
    ]
    for statement in statements:
        tx.execute(statement)


def _v2_usage(tx: Tx) -> None:
    """What model calls cost: one row per call through the LLM gateway, and a plan's budget."""
    pk, real, big, txt = tx.dialect.autoincrement_pk, tx.dialect.real, tx.dialect.bigint, "TEXT"
    for statement in (
        f"""CREATE TABLE usage (
            id {pk},
            ts {real} NOT NULL,
            plan_id {big} NOT NULL REFERENCES plans(id),
            ticket_id {big} NOT NULL REFERENCES tickets(id),
            epoch INTEGER NOT NULL,
            model {txt} NOT NULL,
            input_tokens {big} NOT NULL,
            output_tokens {big} NOT NULL,
            cache_creation_input_tokens {big} NOT NULL,
            cache_read_input_tokens {big} NOT NULL,
            cost_usd {real} NOT NULL
        )""",
        "CREATE INDEX usage_ticket ON usage (ticket_id)",
        "CREATE INDEX usage_plan ON usage (plan_id)",
        f"ALTER TABLE plans ADD COLUMN budget_usd {real}",
    ):
        tx.execute(statement)


def _v3_pull_requests(tx: Tx) -> None:
    """A pull-request record per ticket whose branch reached the forge."""
    pk, real, big, txt = tx.dialect.autoincrement_pk, tx.dialect.real, tx.dialect.bigint, "TEXT"
    tx.execute(
        f"""CREATE TABLE pull_requests (
            id {pk},
            plan_id {big} NOT NULL REFERENCES plans(id),
            ticket_id {big} NOT NULL UNIQUE REFERENCES tickets(id),
            base {txt} NOT NULL,
            head {txt} NOT NULL,
            base_sha {txt} NOT NULL,
            head_sha {txt} NOT NULL,
            files_changed INTEGER NOT NULL,
            insertions INTEGER NOT NULL,
            deletions INTEGER NOT NULL,
            state {txt} NOT NULL,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL
        )"""
    )
    tx.execute("CREATE INDEX pull_requests_plan ON pull_requests (plan_id, id)")


def _v4_ticket_events(tx: Tx) -> None:
    """A ticket's log is its events: read them without scanning everyone's."""
    tx.execute("CREATE INDEX events_ticket ON events (ticket_id, seq)")


def _v5_plan_status(tx: Tx) -> None:
    """A plan's stage: a design agent may write it first (``designing``, then ``draft`` or
    ``failed`` with an ``error``), and a draft's tickets exist only once a person approves it
    (``active``). ``design`` keeps the request a designed plan came from. Plans stored before
    this step had their tickets at once, so they are ``active``."""
    for statement in (
        "ALTER TABLE plans ADD COLUMN status TEXT NOT NULL DEFAULT 'active'",
        "ALTER TABLE plans ADD COLUMN error TEXT",
        "ALTER TABLE plans ADD COLUMN design TEXT",
    ):
        tx.execute(statement)


def _v6_merge_queue(tx: Tx) -> None:
    """The merge queue. A ticket whose branch arrived is ``merging`` until its work is in the
    integration branch; a merge that conflicts or fails its checks sends the ticket back with a
    ``fix`` (what went wrong, against which base). ``wave`` is the ticket's topological
    generation, for strict-wave scheduling. A plan may name its integration branch and its check
    command (else the repository's default branch and its ``.swarm.toml``), and the GitHub
    repository (``owner/name``) its work is published to. A pull request keeps the commit that
    merged it and, on GitHub, its number and address."""
    for statement in (
        "ALTER TABLE tickets ADD COLUMN fix TEXT",
        "ALTER TABLE tickets ADD COLUMN wave INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX tickets_merging ON tickets (plan_id, updated_at, id) WHERE state = 'merging'",
        "CREATE INDEX tickets_unfinished_wave ON tickets (plan_id, wave) "
        "WHERE state NOT IN ('done', 'dead', 'cancelled')",
        "ALTER TABLE plans ADD COLUMN strict_waves INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE plans ADD COLUMN integration TEXT",
        "ALTER TABLE plans ADD COLUMN checks TEXT",
        "ALTER TABLE plans ADD COLUMN github TEXT",
        "ALTER TABLE pull_requests ADD COLUMN merge_sha TEXT",
        "ALTER TABLE pull_requests ADD COLUMN number INTEGER",
        "ALTER TABLE pull_requests ADD COLUMN url TEXT",
    ):
        tx.execute(statement)


def _v7_pause_and_sandboxes(tx: Tx) -> None:
    """A paused plan's ready tickets are not handed out: its agents at work finish, no new
    work starts until it is resumed. A claimed ticket keeps what its runner last reported of
    its sandbox (JSON, with the epoch it was reported under)."""
    tx.execute("ALTER TABLE plans ADD COLUMN paused INTEGER NOT NULL DEFAULT 0")
    tx.execute("ALTER TABLE tickets ADD COLUMN sandbox TEXT")


def _v8_runs(tx: Tx) -> None:
    """Runs (agent pools a control plane starts for a plan) outlive the process that started
    them: a row per run, held by a control plane's lease (see :mod:`swarmstack.runstore`)."""
    pk, real, big = tx.dialect.autoincrement_pk, tx.dialect.real, tx.dialect.bigint
    tx.execute(
        f"""CREATE TABLE runs (
            id {pk},
            plan_id {big} NOT NULL REFERENCES plans(id),
            agents INTEGER NOT NULL,
            backend TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT,
            started_at {real} NOT NULL,
            ended_at {real},
            owner TEXT,
            lease_until {real},
            token_id {big},
            stop_requested INTEGER NOT NULL DEFAULT 0,
            adoptions INTEGER NOT NULL DEFAULT 0
        )"""
    )
    # One run going per plan, whichever replica starts it.
    tx.execute("CREATE UNIQUE INDEX runs_going ON runs (plan_id) WHERE state = 'running'")


MIGRATIONS: list[Migration] = [
    _v1_initial,
    _v2_usage,
    _v3_pull_requests,
    _v4_ticket_events,
    _v5_plan_status,
    _v6_merge_queue,
    _v7_pause_and_sandboxes,
    _v8_runs,
]
