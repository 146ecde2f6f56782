"""The bundled example, replayed without Claude Code: every ticket's session of
``agents.yaml`` on a copy of ``repo/``, each on its own branch from the integration branch as
it is when the ticket starts, merged with :func:`swarmstack.forge.merge.merge` in orders the
DAG allows, with the repository's checks (``.swarm.toml``) after every merge.

The replay plays Claude Code's part by Claude Code's rules: the scripted model answers each
turn (``${workspace}`` filled in from the working directory the request names), ``Read``,
``Write``, ``Edit`` and ``Bash`` run in the workspace, a file that exists must be read before
it is written or edited, and an ``Edit`` whose ``old_string`` is not in the file exactly once
is refused. A refusal fails the test, where the scripted agent would go on as if it had
worked. The last test runs three of the sessions through the real Claude Code CLI.

The agents' commands run in the replay one ticket at a time (and a fix attempt's in every
replay); the replays of many tickets at once run the checks after each merge, which is what
decides whether a ticket is done.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from swarmstack.agent.drivers.claude_code import ClaudeCodeDriver
from swarmstack.agent.task import Dependency, Task
from swarmstack.errors import UsageError
from swarmstack.forge.merge import merge
from swarmstack.llm.scripted import ScriptedModel, Session, create_app, load_script
from swarmstack.threaded import ThreadedServer
from swarmstack.tickets.models import Ticket, TicketSpec
from swarmstack.tickets.plan import load_plan

EXAMPLE = Path(__file__).parent.parent / "src" / "swarmstack" / "examples" / "todo"
PLAN = load_plan(EXAMPLE / "plan.json")
SCRIPT = load_script(EXAMPLE / "agents.yaml")
TICKETS = {t.id: t for t in PLAN.tickets}
CHECKS = tomllib.loads((EXAMPLE / "repo" / ".swarm.toml").read_text())["checks"]
# The planned miss: both register their command at the same place of one file.
PAIR = ("cmd-search", "cmd-export")
CONFLICTED = "src/todo/cli.py"
# The checks' sandbox has Debian's Python and nothing else; so do the agents' commands here.
PATH = (
    "/usr/bin:/bin"
    if Path("/usr/bin/python3").exists()
    else f"{Path(sys.executable).parent}:/usr/bin:/bin"
)
GIT_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "agent",
    "GIT_AUTHOR_EMAIL": "agent@localhost",
    "GIT_COMMITTER_NAME": "agent",
    "GIT_COMMITTER_EMAIL": "agent@localhost",
    "LC_ALL": "C",
}


def git(cwd: Path, *args: str, ok: tuple[int, ...] = (0,)) -> str:
    done = subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *args],
        cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode in ok, f"git {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout.strip()


def ancestors() -> dict[str, set[str]]:
    """Each ticket's dependencies, direct or not."""
    found: dict[str, set[str]] = {}
    for ticket in PLAN.tickets:  # plan order is a topological order here
        found[ticket.id] = set(ticket.depends_on).union(*(found[d] for d in ticket.depends_on))
    return found


ANCESTORS = ancestors()


def ordered(a: str, b: str) -> bool:
    return a in ANCESTORS[b] or b in ANCESTORS[a]


# -- the prompts, as the agent runner and the merge queue write them --------------------------


def prompt(spec: TicketSpec) -> str:
    ticket = Ticket.model_construct(
        key=spec.id, title=spec.title, body=spec.body, acceptance=spec.acceptance, files=spec.files
    )
    deps = tuple(
        Dependency(d, TICKETS[d].title, summary(session_named(d))) for d in spec.depends_on
    )
    task = Task(
        ticket=ticket,
        workspace=Path("/workspace"),
        model_base_url="http://127.0.0.1:8420/llm",
        model_api_key="unused",
        plan_title=PLAN.title,
        plan_description=PLAN.description,
        dependencies=deps,
    )
    return task.prompt()


def fix_prompt(key: str, conflicts: list[str]) -> str:
    return (
        f"You are fixing ticket {key} of the plan {PLAN.title!r}. The integration branch was "
        "merged into this ticket's branch and git left conflicts in: "
        + ", ".join(conflicts)
        + ". Resolve them keeping the intent of both sides, run the tests, and finish with a "
        "short summary. Do not commit or push: that is done for you.\n\n" + prompt(TICKETS[key])
    )


def session_named(name: str) -> Session:
    return next(s for s in SCRIPT.sessions if s.name == name)


def summary(session: Session) -> str:
    last = session.turns[-1].content
    return " ".join(b.text for b in last if b.text is not None)


def tool_calls(session: Session) -> Iterator[tuple[str, dict[str, Any]]]:
    for turn in session.turns:
        for block in turn.content:
            if block.tool_use is not None:
                yield block.tool_use.name, block.tool_use.input


def touched(session: Session) -> set[str]:
    """The files a session writes or edits, relative to the workspace."""
    return {
        args["file_path"].removeprefix("${workspace}/")
        for name, args in tool_calls(session)
        if name in ("Write", "Edit")
    }


# -- Claude Code's part ------------------------------------------------------------------------


class Refused(AssertionError):
    """What Claude Code would have refused, or a command that failed."""


@dataclass
class Agent:
    """One conversation with the scripted model, its tool calls run in ``workspace``."""

    workspace: Path
    run_commands: bool = True
    read: set[Path] = field(default_factory=set)
    session: str = ""

    def run(self, text: str) -> str:
        model = ScriptedModel(SCRIPT)
        system = f"You are a coding agent.\nPrimary working directory: {self.workspace}"
        messages: list[dict[str, Any]] = [{"role": "user", "content": text}]
        while True:
            body = {"system": system, "messages": messages}
            turn, self.session = model.answer(body)
            assert self.session, f"no session answers {text.splitlines()[0]!r}"
            content = model.message(body, turn)["content"]
            messages.append({"role": "assistant", "content": content})
            uses = [b for b in content if b["type"] == "tool_use"]
            if not uses:
                return " ".join(b["text"] for b in content if b["type"] == "text")
            results = [
                {"type": "tool_result", "tool_use_id": b["id"], "content": self.tool(b)}
                for b in uses
            ]
            messages.append({"role": "user", "content": results})

    def tool(self, use: dict[str, Any]) -> str:
        name, args = use["name"], use["input"]
        where = f"{self.session}: {name} {args.get('file_path', args.get('command'))}"
        if name == "Bash":
            return self.bash(args["command"], where)
        path = Path(args["file_path"])
        if not path.is_absolute() or not path.is_relative_to(self.workspace):
            raise Refused(f"{where}: not an absolute path in the workspace")
        if name == "Read":
            if not path.is_file():
                raise Refused(f"{where}: no such file")
            self.read.add(path)
            return path.read_text()
        if path.exists() and path not in self.read:
            raise Refused(f"{where}: the file exists and was not read first")
        if name == "Write":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(args["content"])
        elif name == "Edit":
            if not path.exists():
                raise Refused(f"{where}: no such file")
            text, old = path.read_text(), args["old_string"]
            if text.count(old) != 1:
                raise Refused(f"{where}: old_string found {text.count(old)} times: {old!r}")
            path.write_text(text.replace(old, args["new_string"]))
        else:
            raise Refused(f"{where}: a tool the replay does not know")
        self.read.add(path)
        return "ok"

    def bash(self, command: str, where: str) -> str:
        if not self.run_commands:
            return "(not run)"
        if command == CHECKS:
            git(self.workspace, "add", "--all")
            done = run_checks(git(self.workspace, "write-tree"), self.workspace)
        else:
            done = shell(command, self.workspace)
        if done.returncode != 0:
            raise Refused(f"{where}: exit code {done.returncode}\n{done.stdout}")
        return done.stdout


# The checks' result by the tree they ran on: a replay meets the same tree again and again
# (every run starts with the same three merges and ends with the same tree), and the tests
# of a tree pass or fail the same way each time.
CHECKED: dict[str, subprocess.CompletedProcess[str]] = {}


def run_checks(tree: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if tree not in CHECKED:
        CHECKED[tree] = shell(CHECKS, cwd, "sh")  # as the merge queue runs them
    return CHECKED[tree]


def shell(command: str, cwd: Path, program: str = "bash") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program, "-c", command],
        cwd=cwd,
        env={"PATH": PATH, "HOME": str(cwd), "LANG": "C.UTF-8"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )


# -- the forge and the merge queue's part -----------------------------------------------------


@dataclass
class Run:
    """One replay of the plan on a fresh forge, with what it did."""

    root: Path
    run_commands: bool = True
    merges: list[str] = field(default_factory=list)
    conflicts: list[tuple[str, list[str]]] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # the commit each check ran on

    def __post_init__(self) -> None:
        seed = self.root / "seed"
        shutil.copytree(EXAMPLE / "repo", seed)
        git(seed, "init", "-q")
        git(seed, "add", "--all")
        git(seed, "commit", "-qm", "The starting repository")
        self.bare = self.root / "plan.git"
        git(self.root, "clone", "-q", "--bare", str(seed), str(self.bare))
        self.check(git(self.bare, "rev-parse", "main"))

    def workspace(self, key: str, attempt: str) -> Path:
        path = self.root / "ws" / f"{key}-{attempt}"
        git(self.root, "clone", "-q", str(self.bare), str(path))
        (path / ".git" / "info" / "exclude").write_text("__pycache__/\n")
        return path

    def start(self, key: str) -> None:
        """The ticket's agent works on the integration branch as it is now, and pushes."""
        ws = self.workspace(key, "1")
        git(ws, "checkout", "-q", "-b", f"swarm/{key}")
        self.agent(ws, key, prompt(TICKETS[key]), self.run_commands)
        self.push(ws, key, f"{key}: {TICKETS[key].title}")

    def agent(self, ws: Path, session: str, text: str, commands: bool) -> None:
        """Run the agent on ``text`` in ``ws``; the scripted model answers with ``session``."""
        agent = Agent(ws, commands)
        agent.run(text)
        assert agent.session == session

    def push(self, ws: Path, key: str, message: str) -> None:
        git(ws, "add", "--all")
        git(ws, "commit", "-qm", message)
        git(ws, "push", "-q", "origin", f"+HEAD:refs/heads/swarm/{key}")

    def merge(self, key: str) -> None:
        """Merge the ticket's branch; on a conflict, a fix attempt and a merge again."""
        result = merge(self.bare, into="main", branch=f"swarm/{key}", message=f"Merge {key}")
        if not result.merged:
            assert result.how == "conflict", result
            self.conflicts.append((key, result.conflicts))
            self.fix(key, result.conflicts)
            result = merge(self.bare, into="main", branch=f"swarm/{key}", message=f"Merge {key}")
            assert result.merged, f"{key} still does not merge after its fix: {result}"
        assert result.sha is not None
        self.merges.append(key)
        self.check(result.sha)

    def fix(self, key: str, conflicts: list[str]) -> None:
        """The fix attempt: the ticket's branch with the integration branch merged in, git's
        conflict markers in the conflicted files, and the fix session on it."""
        ws = self.workspace(key, "fix")
        git(ws, "checkout", "-q", f"swarm/{key}")
        git(ws, "merge", "-q", "--no-edit", "origin/main", ok=(1,))
        for name in conflicts:
            assert "<<<<<<<" in (ws / name).read_text()
        self.agent(ws, f"fix-{key}", fix_prompt(key, conflicts), True)  # commands run always
        for name in conflicts:
            assert "<<<<<<<" not in (ws / name).read_text()
        git(ws, "add", "--all")
        git(ws, "commit", "-q", "--no-edit")
        git(ws, "push", "-q", "origin", f"HEAD:refs/heads/swarm/{key}")

    def check(self, sha: str) -> None:
        """The repository's checks on ``sha``, on its tree alone (no ``.git``)."""
        tree = self.root / "checks" / str(len(self.checks))
        tree.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", "--format=tar", sha],
            cwd=self.bare, env=GIT_ENV, capture_output=True, check=True,
        ).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        done = run_checks(git(self.bare, "rev-parse", f"{sha}^{{tree}}"), tree)
        after = self.merges[-1] if self.merges else "nothing"
        assert done.returncode == 0, f"the checks fail after merging {after}:\n{done.stdout}"
        self.checks.append(sha)

    def files(self) -> dict[str, str]:
        """The integration branch's files and their text."""
        names = git(self.bare, "ls-tree", "-r", "--name-only", "main").splitlines()
        return {n: self.show(f"main:{n}") for n in names}

    def show(self, blob: str) -> str:
        return subprocess.run(
            ["git", "show", blob], cwd=self.bare, env=GIT_ENV, capture_output=True, check=True
        ).stdout.decode()


def replay(
    run: Run, rng: random.Random | None, first: str | None = None, together: bool = True
) -> Run:
    """Start and merge every ticket. Without ``rng``, one at a time in plan order; with it, a
    random interleaving: any ready ticket may start, any started one may merge — except that
    ``first`` of the pair merges first, and the other starts before that (``together``) or
    only after it (not ``together``)."""
    keys = list(TICKETS)
    started: list[str] = []
    while len(run.merges) < len(keys):
        merged = set(run.merges)
        ready = [k for k in keys if k not in started and ANCESTORS[k] <= merged]
        waiting = [k for k in started if k not in merged]
        if rng is None:
            if waiting:
                run.merge(waiting[0])
            else:
                started.append(ready[0])
                run.start(ready[0])
            continue
        if first is not None:
            second = PAIR[1] if first == PAIR[0] else PAIR[0]
            if not together:
                ready = [k for k in ready if k != second or first in merged]
            elif not set(PAIR) <= set(started):
                waiting = [k for k in waiting if k not in PAIR]
            elif first not in merged:
                waiting = [k for k in waiting if k != second]
        moves = [("start", k) for k in ready] + [("merge", k) for k in waiting]
        move, key = rng.choice(moves)
        if move == "start":
            started.append(key)
            run.start(key)
        else:
            run.merge(key)
    return run


# -- the tests ---------------------------------------------------------------------------------


def test_every_ticket_has_one_session_and_every_session_a_ticket() -> None:
    model = ScriptedModel(SCRIPT)

    def answered_by(text: str) -> str | None:
        session, _ = model.session_for({"messages": [{"role": "user", "content": text}]})
        return session.name if session else None

    claimed = {answered_by(prompt(t)) for t in PLAN.tickets}
    assert [answered_by(prompt(t)) for t in PLAN.tickets] == list(TICKETS)
    for key in PAIR:
        name = answered_by(fix_prompt(key, [CONFLICTED]))
        assert name == f"fix-{key}"
        claimed.add(name)
    assert claimed == {s.name for s in SCRIPT.sessions}
    assert all(s.match is not None for s in SCRIPT.sessions)  # none is handed out in order
    for session in SCRIPT.sessions:
        last = session.turns[-1].content
        assert last and all(b.text for b in last), f"{session.name} ends without a summary"


def test_tickets_that_may_run_at_once_share_no_file_but_the_planned_one() -> None:
    files = {t.id: touched(session_named(t.id)) for t in PLAN.tickets}
    shared = {
        (a, b): files[a] & files[b]
        for a in TICKETS
        for b in TICKETS
        if a < b and not ordered(a, b) and files[a] & files[b]
    }
    # So a later ticket that touched the file would have to come after both of the pair.
    assert shared == {tuple(sorted(PAIR)): {CONFLICTED}}
    # The plan does not see it: neither lists the file, so the design checks did not order them.
    assert all(CONFLICTED not in TICKETS[k].files for k in PAIR)
    # A fix attempt touches only the conflicted file.
    assert all(touched(session_named(f"fix-{k}")) == {CONFLICTED} for k in PAIR)


@pytest.fixture(scope="module")
def in_plan_order(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return replay(Run(tmp_path_factory.mktemp("in-order")), None)


def test_one_ticket_at_a_time_the_checks_pass_after_every_merge(in_plan_order: Run) -> None:
    run = in_plan_order
    assert run.merges == list(TICKETS) and run.conflicts == []
    assert len(run.checks) == 1 + len(TICKETS)  # the start, then every merge
    files = run.files()
    # Every ticket's work is there, unless a ticket that comes after it changed it again.
    for ticket in PLAN.tickets:
        for name, args in tool_calls(session_named(ticket.id)):
            path = args.get("file_path", "").removeprefix("${workspace}/")
            redone = any(
                path in touched(session_named(k)) for k in TICKETS if ticket.id in ANCESTORS[k]
            )
            if name == "Write" and not redone:
                assert files[path] == args["content"], f"{ticket.id}'s {path} is not there"
            if name == "Edit":
                assert args["new_string"] in files[path], f"{ticket.id}'s edit of {path}"
        assert all(f in files for f in ticket.files), ticket.id
    final = run.root / "checks" / str(len(run.checks) - 1)
    help_text = shell("PYTHONPATH=src python3 -m todo --help", final)
    for command in ("add", "list", "done", "rm", "edit", "search", "export"):
        assert f"    {command} " in help_text.stdout


@pytest.mark.parametrize(
    ("seed", "first"),
    [(1, "cmd-search"), (2, "cmd-export"), (3, "cmd-export"), (4, "cmd-search"), (5, "cmd-search")],
)
def test_tickets_at_once_in_any_order_conflict_once_and_end_the_same(
    seed: int, first: str, tmp_path: Path, in_plan_order: Run
) -> None:
    run = replay(Run(tmp_path, run_commands=False), random.Random(seed), first)
    second = PAIR[1] if first == PAIR[0] else PAIR[0]
    assert run.merges.index(first) < run.merges.index(second)
    assert run.conflicts == [(second, [CONFLICTED])]
    assert len(run.checks) == 1 + len(TICKETS)
    assert sorted(run.merges) == sorted(TICKETS)
    # Whichever order, the end is the same tree as one ticket at a time.
    assert git(run.bare, "rev-parse", "main^{tree}") == git(
        in_plan_order.bare, "rev-parse", "main^{tree}"
    )


def test_the_pair_one_after_the_other_does_not_conflict(tmp_path: Path, in_plan_order: Run) -> None:
    # In plan order cmd-search merges before cmd-export starts; here the other way round, so
    # the anchor of cmd-search's edit must be there with cmd-export's already in.
    run = replay(Run(tmp_path, run_commands=False), random.Random(6), "cmd-export", False)
    assert run.merges.index("cmd-export") < run.merges.index("cmd-search")
    assert run.conflicts == []
    assert git(run.bare, "rev-parse", "main^{tree}") == git(
        in_plan_order.bare, "rev-parse", "main^{tree}"
    )


# -- the same sessions through the real Claude Code CLI ----------------------------------------


@dataclass(frozen=True)
class Prompted(Task):
    """A task whose prompt is given whole (a fix attempt's, here)."""

    text: str = ""

    def prompt(self) -> str:
        return self.text


@dataclass
class ClaudeRun(Run):
    """A replay in which the sessions named in ``claude`` are Claude Code's to run, with the
    agent runner's own driver, against the scripted model serving agents.yaml."""

    claude: frozenset[str] = frozenset()
    model_url: str = ""
    logs: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)

    def agent(self, ws: Path, session: str, text: str, commands: bool) -> None:
        if session not in self.claude:
            super().agent(ws, session, text, commands)
            return
        home = self.root / "home" / session
        home.mkdir(parents=True)
        task = Prompted(
            ticket=Ticket.model_construct(key=session),
            workspace=ws,
            model_base_url=self.model_url,
            model_api_key="sk-ant-scripted",
            env={"HOME": str(home), "PATH": PATH},
            timeout_s=300,
            text=text,
        )
        log = self.logs.setdefault(session, [])
        result = ClaudeCodeDriver().run(
            task, lambda kind, data: log.append((kind, data)), threading.Event()
        )
        assert result.ok, (session, result.error)
        assert result.summary == summary(session_named(session))


def test_claude_code_runs_a_ticket_and_a_fix_attempt_as_the_replay_does(
    tmp_path: Path, in_plan_order: Run
) -> None:
    try:
        ClaudeCodeDriver()
    except UsageError as exc:
        pytest.skip(f"no Claude Code CLI: {exc}")
    model = ScriptedModel(SCRIPT)
    server = ThreadedServer(create_app(model)).start()
    sessions = frozenset({"scaffold", "cmd-search", "fix-cmd-export"})
    try:
        run = ClaudeRun(tmp_path, run_commands=False, claude=sessions, model_url=server.url)
        replay(run, random.Random(1), first="cmd-search")
    finally:
        server.stop()
    assert run.conflicts == [("cmd-export", [CONFLICTED])]
    # Claude Code took every tool call as it is written: Read before Write and Edit, absolute
    # paths, Edit anchors found; and each session's commands ran and passed.
    assert set(run.logs) == sessions
    for session, log in run.logs.items():
        calls = [d for kind, d in log if kind == "tool_call"]
        results = [d for kind, d in log if kind == "tool_result"]
        assert len(calls) == len(list(tool_calls(session_named(session)))) == len(results)
        refused = [r["output"] for r in results if r["is_error"]]
        assert refused == [], (session, refused)
    answered = {r["session"] for r in model.requests if r["path"] == "/v1/messages"}
    assert answered == sessions
    # And the end is the tree of the replay, one ticket at a time.
    assert git(run.bare, "rev-parse", "main^{tree}") == git(
        in_plan_order.bare, "rev-parse", "main^{tree}"
    )
