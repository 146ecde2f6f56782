"""Agents in sandboxes: a host runs N agent slots, each a runner in a sandbox of its own.

Each slot loops: make a sandbox, start ``swarm agent`` in it (the agent token on its stdin, so
it is in no environment and no file), let it work up to ``tickets_per_sandbox`` tickets, destroy
the sandbox, and start over with a fresh one — nothing one ticket's agent left behind reaches the
next. Inside, the control plane is ``http://127.0.0.1:<port>`` through the sandbox's forwarder
and the host's :class:`~swarmstack.sandbox.relay.ControlRelay`; the sandbox has no other way out::

    host = AgentHost(HostConfig(api_url=url, token=agent_token, agents=10, state_dir=d))
    report = await host.run()  # until every slot's runner found nothing to do for idle_exit_s

The runner's code reaches the sandbox the way each backend allows: under bubblewrap the host's
own packages are bound read-only (:func:`runner_binds`); in a VM the image's runner runs, with
this host's version of the package unpacked over it when they differ (:func:`package_tarball`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import site
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import swarmstack
from swarmstack.agent.package import package_digest, package_tarball
from swarmstack.errors import UsageError
from swarmstack.sandbox.base import Backend, Exit, Limits, Output, Sandbox, SandboxSpec
from swarmstack.sandbox.relay import ControlRelay

log = logging.getLogger(__name__)

RUNNER_LIB = "/opt/swarm/lib"
VM_PYTHON = "/opt/swarm/venv/bin/python"
OVERLAY = "/tmp/swarm-runner"
# A started runner waits for this file (in its workspace) to hold its agent token, reads it and
# deletes it: a sandbox can be made and its runner loaded before a ticket is there for it.
TOKEN_FILE_NAME = ".swarm-agent-token"
TOKEN_FILE = f"/workspace/{TOKEN_FILE_NAME}"


@dataclass
class HostConfig:
    api_url: str  # the control plane as this host reaches it
    token: str  # an agent token; it goes to each runner on its stdin
    state_dir: Path
    agents: int = 1
    backend: str = "bwrap"
    runner_args: list[str] = field(default_factory=list)  # more `swarm agent` options
    plan_id: int | None = None
    tickets_per_sandbox: int = 1
    idle_exit_s: float | None = None  # a slot ends when its runner found nothing this long
    wait_s: float = 30.0
    limits: Limits = field(default_factory=Limits)
    control_port: int = 8420
    image: str | None = None  # VM backends: the image key (default: the newest built)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class SandboxRun:
    """One sandbox's life in a slot: how long it took to start, what its runner did."""

    slot: int
    sandbox_id: str
    create_s: float
    run_s: float
    exit_code: int
    outcomes: list[dict[str, Any]]
    output_tail: str = ""


@dataclass
class HostReport:
    runs: list[SandboxRun] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def outcomes(self) -> list[dict[str, Any]]:
        return [o for run in self.runs for o in run.outcomes]


class AgentHost:
    def __init__(
        self,
        config: HostConfig,
        *,
        backend: Backend | None = None,
        on_line: Callable[[int, str], None] | None = None,
    ) -> None:
        if config.agents < 1:
            raise UsageError("a host needs at least one agent slot")
        self.config = config
        self.backend = backend
        self.on_line = on_line or (lambda slot, line: log.info("slot %d: %s", slot, line))
        self.relay: ControlRelay | None = None
        self._runtime: Runtime | None = None
        self._stopping = asyncio.Event()
        self._running: dict[int, Sandbox] = {}
        self._warm: dict[int, asyncio.Task[_Launched]] = {}
        self.last_sandbox: Sandbox | None = None  # kept by run_one(keep=True)

    @property
    def control_dir(self) -> Path:
        return self.config.state_dir / "control"

    @property
    def sandbox_ids(self) -> set[str]:
        """The sandboxes whose runners have their token: the names those runners claim under."""
        return {sandbox.id for sandbox in self._running.values()}

    async def __aenter__(self) -> AgentHost:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.config.state_dir.chmod(0o711)
        self.relay = await ControlRelay(self.control_dir, self.config.api_url).start()
        if self.backend is None:
            self.backend = await asyncio.to_thread(self._make_backend)
        self._runtime = await asyncio.to_thread(Runtime.for_backend, self.backend)

    def _make_backend(self) -> Backend:
        name = self.config.backend
        root = self.config.state_dir
        if name == "bwrap":
            from swarmstack.sandbox.bwrap import BwrapBackend

            return BwrapBackend(
                root / "sandboxes", control_dir=self.control_dir, binds=runner_binds()
            )
        if name == "qemu":
            from swarmstack.sandbox.image import find_image
            from swarmstack.sandbox.qemu import QemuBackend

            image = find_image(name=self.config.image)
            return QemuBackend(root / "vms", image=image, control_dir=self.control_dir)
        raise UsageError(f"agents run on the bwrap or qemu backend, not {name!r}")

    async def warm(self) -> None:
        """Start every slot's first sandbox and runner now, so that they claim the moment
        :meth:`run` hands them their tokens (a host waiting for work stays warm)."""
        if self.relay is None:
            await self.start()
        for slot in range(self.config.agents):
            if slot not in self._warm:
                self._warm[slot] = asyncio.create_task(self._launch(slot))
        await asyncio.gather(*self._warm.values())

    async def run(self) -> HostReport:
        """Run every slot until each one's runner exits with nothing to do (``idle_exit_s``)
        or :meth:`stop` is called."""
        if self.relay is None:
            await self.start()
        report = HostReport()
        started = time.monotonic()
        try:
            await asyncio.gather(*(self._slot(i, report) for i in range(self.config.agents)))
        finally:
            report.wall_s = time.monotonic() - started
        return report

    async def stop(self) -> None:
        """Ask every runner to stop (SIGTERM: it releases its lease) and end the slots."""
        self._stopping.set()
        await asyncio.gather(
            *(self._signal(sb) for sb in list(self._running.values())), return_exceptions=True
        )

    async def close(self) -> None:
        await self.stop()
        for task in self._warm.values():  # warmed, never run
            task.cancel()
            with contextlib.suppress(BaseException):
                await (await task).discard()
        self._warm.clear()
        if self.backend is not None:
            await self.backend.close()
        if self.relay is not None:
            await self.relay.close()

    async def _signal(self, sandbox: Sandbox) -> None:
        # A runner writes its pid first thing; one still starting is waited for a while.
        script = (
            'f="$HOME/.swarm/runner.pid"; i=0; while [ $i -lt 100 ]; do '
            '[ -s "$f" ] && kill -TERM "$(cat "$f")" && exit 0; sleep 0.1; i=$((i+1)); done; exit 1'
        )
        await sandbox.exec(["/bin/sh", "-c", script], timeout_s=15)

    async def _slot(self, slot: int, report: HostReport) -> None:
        """Work tickets, a fresh sandbox for each: while one runner works, the next sandbox
        is started and its runner loaded, waiting for the token that lets it claim."""
        warm = self._warm.pop(slot, None)
        upcoming = warm if warm is not None else asyncio.create_task(self._launch(slot))
        try:
            while not self._stopping.is_set():
                launched = await upcoming
                await launched.go(self.config.token)
                upcoming = asyncio.create_task(self._launch(slot))
                run = await launched.finish()
                report.runs.append(run)
                if run.exit_code != 0 and not run.outcomes and not self._stopping.is_set():
                    log.warning(
                        "slot %d: the runner exited with %d: %s",
                        slot,
                        run.exit_code,
                        run.output_tail,
                    )
                    await asyncio.sleep(1.0)
                if not run.outcomes and self.config.idle_exit_s is not None:
                    return  # it waited idle_exit_s and found nothing: the work is done
        finally:
            upcoming.cancel()
            with contextlib.suppress(BaseException):
                launched = await upcoming
                await launched.discard()

    def spec(self) -> SandboxSpec:
        assert self._runtime is not None
        return SandboxSpec(
            image=self.config.image,
            limits=self.config.limits,
            env={**self.config.env, **self._runtime.env},
            control_port=self.config.control_port,
        )

    def runner_argv(self) -> list[str]:
        assert self._runtime is not None
        c = self.config
        argv = [*self._runtime.argv, "--token-file", TOKEN_FILE, "--json"]
        argv += ["--max-tickets", str(c.tickets_per_sandbox), "--wait", str(c.wait_s)]
        # A lease taken away (an admin stopped it) or run out ends this sandbox: a fresh one
        # replaces it.
        argv += ["--sandbox-backend", c.backend, "--end-on-lost"]
        if c.idle_exit_s is not None:
            argv += ["--idle-exit", str(c.idle_exit_s)]
        if c.plan_id is not None:
            argv += ["--plan", str(c.plan_id)]
        return [*argv, *c.runner_args]

    async def _launch(self, slot: int) -> _Launched:
        """A sandbox with a runner started in it, waiting for its token."""
        assert self.backend is not None and self._runtime is not None
        t0 = time.monotonic()
        sandbox = await self.backend.create(self.spec())
        launched = _Launched(self, slot, sandbox, t0, time.monotonic() - t0)
        try:
            await self._runtime.install(sandbox)
            launched.start(self.runner_argv())
        except BaseException:
            await sandbox.destroy()
            raise
        return launched

    async def run_one(self, slot: int, *, keep: bool = False) -> SandboxRun:
        """One sandbox, one runner in it, to the runner's end; the sandbox is destroyed after
        unless ``keep`` (then it is :attr:`last_sandbox`, for a look inside)."""
        launched = await self._launch(slot)
        await launched.go(self.config.token)
        return await launched.finish(keep=keep)


class _Launched:
    """A runner started in its sandbox: its output read as it comes, its end awaited."""

    def __init__(
        self, host: AgentHost, slot: int, sandbox: Sandbox, t0: float, create_s: float
    ) -> None:
        self.host = host
        self.slot = slot
        self.sandbox = sandbox
        self.t0 = t0
        self.create_s = create_s
        self.lines: list[str] = []
        self.exit_code = -1
        self.started = t0
        self._task: asyncio.Task[None] | None = None

    def start(self, argv: list[str]) -> None:
        self._task = asyncio.create_task(self._read(argv))

    async def _read(self, argv: list[str]) -> None:
        buffer = b""
        async for item in self.sandbox.exec_stream(argv):
            if isinstance(item, Output):
                buffer += item.data
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    line = raw.decode(errors="replace")
                    self.lines.append(line)
                    self.host.on_line(self.slot, line)
            elif isinstance(item, Exit):
                self.exit_code = item.exit_code
        if buffer:
            self.lines.append(buffer.decode(errors="replace"))

    async def go(self, token: str) -> None:
        """Hand the runner its token: it claims at once (it read it, then deleted the file)."""
        self.host._running[self.slot] = self.sandbox
        self.started = time.monotonic()
        await self.sandbox.write_file(TOKEN_FILE_NAME, (token + "\n").encode(), mode=0o600)

    async def finish(self, *, keep: bool = False) -> SandboxRun:
        assert self._task is not None
        try:
            await self._task
        finally:
            self.host._running.pop(self.slot, None)
            if keep:
                self.host.last_sandbox = self.sandbox
            else:
                await self.sandbox.destroy()
        outcomes: list[dict[str, Any]] = []
        for line in reversed(self.lines):
            if line.startswith("[") and line.endswith("]"):
                with contextlib.suppress(ValueError):
                    outcomes = json.loads(line)
                    break
        return SandboxRun(
            self.slot,
            self.sandbox.id,
            self.create_s,
            time.monotonic() - self.started,
            self.exit_code,
            outcomes,
            "\n".join(self.lines[-10:]),
        )

    async def discard(self) -> None:
        """A runner that never got its token: it is ended with its sandbox."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self.sandbox.destroy()


@dataclass
class Runtime:
    """How a backend's sandboxes start the runner."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    overlay: bytes | None = None  # the package, unpacked over the image's before starting

    @classmethod
    def for_backend(cls, backend: Backend) -> Runtime:
        if backend.name == "bwrap":
            python = getattr(backend, "python", "/usr/bin/python3")
            binds = getattr(backend, "binds", [])
            paths = [dest for _, dest in binds if dest.startswith(RUNNER_LIB)]
            if not paths:
                raise UsageError("this bubblewrap backend binds no runner code (runner_binds())")
            check_python(python)
            return cls([python, "-m", "swarmstack.agent"], {"PYTHONPATH": ":".join(paths)})
        image = getattr(backend, "image", None)
        built = getattr(image, "manifest", {}) if image is not None else {}
        overlay = None if built.get("runner_digest") == package_digest() else package_tarball()
        env = {"PYTHONPATH": OVERLAY} if overlay is not None else {}
        return cls([VM_PYTHON, "-m", "swarmstack.agent"], env, overlay)

    async def install(self, sandbox: Sandbox) -> None:
        if self.overlay is None:
            return
        await sandbox.write_file(".swarm-runner.tar.gz", self.overlay)
        done = await sandbox.exec(
            [
                "/bin/sh", "-c",
                f"mkdir -p {OVERLAY} && tar -xzf .swarm-runner.tar.gz -C {OVERLAY} "
                "&& rm .swarm-runner.tar.gz",
            ],
            timeout_s=60,
        )  # fmt: skip
        if not done.ok:
            raise UsageError(f"cannot unpack the runner in the sandbox: {done.stderr.decode()}")


def runner_binds() -> list[tuple[Path, str]]:
    """This interpreter's packages, to bind read-only into a bubblewrap sandbox: the directory
    that holds ``swarmstack`` first, then each site-packages directory. The sandbox's own
    ``python3`` runs them, so it must be this Python's version (the compiled extensions are)."""
    package_parent = Path(swarmstack.__file__).resolve().parent.parent
    sources = [package_parent]
    for directory in site.getsitepackages():
        path = Path(directory).resolve()
        if path.is_dir() and path not in sources:
            sources.append(path)
    return [(source, f"{RUNNER_LIB}/{i}") for i, source in enumerate(sources)]


def check_python(python: str) -> None:
    """Refuse a sandbox Python whose version differs from this one (for :func:`runner_binds`)."""
    import subprocess

    done = subprocess.run(
        [python, "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    theirs = done.stdout.split()
    ours = [str(v) for v in sys.version_info[:2]]
    if theirs != ours:
        raise UsageError(
            f"the sandbox's {python} is Python {'.'.join(theirs) or '?'}, this is "
            f"{'.'.join(ours)}: the runner's packages are bound from here and must match"
        )
