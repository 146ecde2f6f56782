"""The GitHub forge against a fake GitHub: a real HTTP server answering GitHub's REST API
(githubkit talks HTTP to it and validates every answer) and git's smart HTTP, with real git
on both sides."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fake_github import FakeGitHub, rate_limited
from swarmstack.config import Settings
from swarmstack.errors import (
    AuthError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unavailable,
)
from swarmstack.forge.github import GitHubRepo, GitHubSettings
from swarmstack.forge.pullbody import BODY_MAX, TITLE_MAX, pull_body, pull_title
from swarmstack.tickets.models import Ticket, TicketResult, TicketState

TOKEN = "ghp_fakeTOKENvalue0123456789abcdefABCDEF"
BASIC = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main",
         *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.strip()


def commit(work: Path, branch: str, start: str, files: dict[str, str]) -> None:
    git(work, "checkout", "-q", "-B", branch, start)
    for name, text in files.items():
        (work / name).write_text(text)
    git(work, "add", ".")
    git(work, "commit", "-qm", f"{branch}: {', '.join(files)}")


def ticket(id: int, title: str = "", **fields: Any) -> Ticket:
    values: dict[str, Any] = {
        "id": id, "plan_id": 3, "key": f"T-{id}", "title": title or f"ticket {id}",
        "body": "", "phase": "expansion", "depends_on": [], "files": [], "acceptance": [],
        "covers": [], "estimate": 1.0, "priority": 0, "rank": 1.0,
        "state": TicketState.CLAIMED, "unmet": 0, "attempts": 1, "max_attempts": 3,
        "epoch": 1, "lease_agent": None, "lease_expires_at": None, "retry_at": None,
        "ready_at": None, "updated_at": 0.0, "last_error": None, "result": None,
    }  # fmt: skip
    return Ticket(**{**values, **fields})


@pytest.fixture
def local(tmp_path: Path) -> Path:
    """The control plane's bare repository: main has a.txt; swarm/1 adds b.txt, swarm/2
    changes a.txt's second line, swarm/3 changes the same line another way."""
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q")
    (work / "a.txt").write_text("one\ntwo\nthree\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "first")
    commit(work, "swarm/1", "main", {"b.txt": "new\n"})
    commit(work, "swarm/2", "main", {"a.txt": "one\nTWO\nthree\n"})
    commit(work, "swarm/3", "main", {"a.txt": "one\n2\nthree\n"})
    bare = tmp_path / "plan-3.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    return bare


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeGitHub]:
    """GitHub with the user octo (token TOKEN) and the organization acme (octo a member)."""
    server = FakeGitHub(tmp_path / "github")
    server.add_user("octo", TOKEN)
    server.add_user("mona", "ghp_monas")
    server.add_org("acme", {"octo"})
    server.start()
    yield server
    server.stop()


def repo_of(fake: FakeGitHub, repository: str = "octo/shop", **settings: Any) -> GitHubRepo:
    values: dict[str, Any] = {
        "token": TOKEN, "repository": repository, "api_url": fake.api_url,
        "git_url": fake.url, "retry_base_s": 0.01, "max_rate_wait_s": 0,
    }  # fmt: skip
    return GitHubRepo(GitHubSettings(**{**values, **settings}))


@pytest.fixture
def shop(fake: FakeGitHub, local: Path) -> GitHubRepo:
    """octo/shop on GitHub, created, with main pushed."""
    github = repo_of(fake, create=True)
    github.ensure_repo()
    github.push(local, ["main"])
    return github


def requests(fake: FakeGitHub, method: str, path: str) -> int:
    return sum(1 for r in fake.requests if (r.method, r.path) == (method, path))


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "repository",
    ["shop", "octo/", "/shop", "octo/shop/x", "https://github.com/octo/shop", "octo/shop.git",
     "-octo/shop", "octo/..", "oc to/shop", "octo/sh op"],
)  # fmt: skip
def test_a_repository_is_written_owner_slash_name(repository: str) -> None:
    with pytest.raises(InvalidRequest, match=r"owner/name|without \.git"):
        GitHubSettings(token=TOKEN, repository=repository)


def test_settings_need_a_token_and_plain_urls() -> None:
    with pytest.raises(InvalidRequest, match="token"):
        GitHubSettings(token=" ", repository="octo/shop")
    with pytest.raises(InvalidRequest, match="not an http"):
        GitHubSettings(token=TOKEN, repository="octo/shop", api_url="ftp://example.com")
    with pytest.raises(InvalidRequest, match="credentials"):
        GitHubSettings(token=TOKEN, repository="octo/shop", git_url="https://u:p@example.com")
    assert TOKEN not in repr(GitHubSettings(token=TOKEN, repository="octo/shop"))


def test_settings_come_from_the_host_settings(no_swarm_env: None) -> None:
    with pytest.raises(InvalidRequest, match="SWARM_GITHUB_TOKEN"):
        GitHubSettings.from_settings(Settings(), "octo/shop")
    host = Settings(
        github_token=TOKEN,
        github_api_url="https://ghe.example.com/api/v3",
        github_git_url="https://ghe.example.com",
    )
    s = GitHubSettings.from_settings(host, "octo/shop", create=True)
    assert (s.token, s.api_url, s.create) == (TOKEN, "https://ghe.example.com/api/v3", True)
    assert s.clone_url == "https://ghe.example.com/octo/shop.git"


# -- the repository --------------------------------------------------------------------------


def test_a_missing_repository_is_created_only_when_asked(fake: FakeGitHub) -> None:
    with pytest.raises(NotFound, match="--create-repo"):
        repo_of(fake).ensure_repo()
    assert requests(fake, "POST", "/user/repos") == 0

    made = repo_of(fake, create=True).ensure_repo()
    assert (made.full_name, made.created, made.private) == ("octo/shop", True, True)
    assert made.clone_url == f"{fake.url}/octo/shop.git"
    create = next(r for r in fake.requests if r.path == "/user/repos")
    assert create.body == {"name": "shop", "private": True, "auto_init": False}

    again = repo_of(fake, create=True).ensure_repo()
    assert (again.created, again.default_branch) == (False, "main")
    assert requests(fake, "POST", "/user/repos") == 1


def test_a_repository_of_an_organization_is_created_in_it(fake: FakeGitHub) -> None:
    made = repo_of(fake, "acme/shop", create=True, private=False).ensure_repo()
    assert (made.full_name, made.private, made.created) == ("acme/shop", False, True)
    assert requests(fake, "GET", "/users/acme") == 1
    assert requests(fake, "POST", "/orgs/acme/repos") == 1
    assert requests(fake, "POST", "/user/repos") == 0

    with pytest.raises(Forbidden, match="mona is another user"):
        repo_of(fake, "mona/shop", create=True).ensure_repo()
    assert "mona/shop" not in fake.repos


def test_a_read_only_token_is_told_before_it_pushes(fake: FakeGitHub, local: Path) -> None:
    fake.add_repo("octo", "shop")
    fake.add_token("octo", "ghp_readonly", write=False)
    reader = repo_of(fake, token="ghp_readonly")
    with pytest.raises(Forbidden, match="may not push"):
        reader.ensure_repo()
    with pytest.raises(Forbidden, match=r"Permission to octo/shop\.git denied to octo"):
        reader.push(local, ["main"])
    with pytest.raises(Forbidden, match="Resource not accessible"):
        reader.comment(1, "hello")


# -- git ------------------------------------------------------------------------------------


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    """Every git process this process starts, as (argv, environment); they still run."""
    calls: list[tuple[list[str], dict[str, str]]] = []
    real = subprocess.run

    def recording(args: list[str], **kwargs: Any) -> Any:
        calls.append((list(args), dict(kwargs.get("env") or {})))
        return real(args, **kwargs)

    monkeypatch.setattr(subprocess, "run", recording)  # hostgit calls subprocess.run
    return calls


def test_branches_go_to_github_with_the_token_in_the_environment_only(
    fake: FakeGitHub,
    local: Path,
    git_calls: list[tuple[list[str], dict[str, str]]],
) -> None:
    github = repo_of(fake, create=True)
    github.ensure_repo()
    github.push(local, ["main", "swarm/1", "refs/heads/swarm/2:refs/heads/swarm/2"])

    for branch in ("main", "swarm/1", "swarm/2"):
        assert fake.rev("octo/shop", branch) == git(local, "rev-parse", branch)
    assert fake.rev("octo/shop", "swarm/3") is None
    pushes = [r for r in fake.requests if r.path.endswith("git-receive-pack")]
    assert [(r.git_user, r.login) for r in pushes] == [("x-access-token", "octo")]

    assert github.fetch(local, "main") == git(local, "rev-parse", "main")

    talking = [(argv, env) for argv, env in git_calls if {"push", "fetch"} & set(argv)]
    assert [next(a for a in argv if a in ("push", "fetch")) for argv, _ in talking] == [
        "push",
        "fetch",
    ]
    for argv, _env in git_calls:
        assert TOKEN not in " ".join(argv) and BASIC not in " ".join(argv)
    for _argv, env in talking:
        config = {
            env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"]
            for i in range(int(env["GIT_CONFIG_COUNT"]))
        }
        assert config[f"http.{fake.url}/.extraHeader"] == f"Authorization: Basic {BASIC}"
        assert config["protocol.http.allow"] == "always"
        assert "protocol.https.allow" not in config
    for path in local.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert TOKEN.encode() not in data and BASIC.encode() not in data, path


def test_a_rewritten_ticket_branch_needs_force(
    shop: GitHubRepo, fake: FakeGitHub, local: Path, tmp_path: Path
) -> None:
    shop.push(local, ["swarm/1"])
    work = tmp_path / "fix"
    git(tmp_path, "clone", "-q", str(local), str(work))
    commit(work, "swarm/1", "origin/main", {"b.txt": "fixed\n"})
    git(work, "push", "-q", "--force", "origin", "swarm/1")

    with pytest.raises(Conflict, match=r"\[rejected\].*swarm/1"):
        shop.push(local, ["swarm/1"])
    shop.push(local, ["swarm/1"], force=True)
    assert fake.rev("octo/shop", "swarm/1") == git(local, "rev-parse", "swarm/1")


def test_fetch_refuses_to_lose_local_commits(shop: GitHubRepo, local: Path) -> None:
    before = git(local, "rev-parse", "main")
    git(local, "update-ref", "refs/heads/main", git(local, "rev-parse", "swarm/1"))
    shop.push(local, ["main"])
    git(local, "update-ref", "refs/heads/main", git(local, "rev-parse", "swarm/2"))
    with pytest.raises(Conflict, match="rejected"):
        shop.fetch(local, "main")
    assert shop.fetch(local, "main", force=True) == git(local, "rev-parse", "swarm/1")
    assert before != git(local, "rev-parse", "main")


@pytest.mark.parametrize(
    ("refspecs", "problem"),
    [([], "nothing to push"), (["+main"], "force=True"), ([":main"], "delete"),
     (["bad..name"], "not a branch name"), (["-x"], "not a branch name")],
)  # fmt: skip
def test_a_bad_refspec_is_refused_before_git_runs(
    shop: GitHubRepo, local: Path, refspecs: list[str], problem: str
) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        shop.push(local, refspecs)


def test_a_wrong_token_is_a_clear_error_and_never_shown(
    fake: FakeGitHub, shop: GitHubRepo, local: Path
) -> None:
    wrong = "ghp_wrongWRONGwrong0000"
    github = repo_of(fake, token=wrong)
    with pytest.raises(AuthError, match=r"refused the token.*Bad credentials") as rest:
        github.ensure_repo()
    with pytest.raises(AuthError, match=r"refused the token.*git push") as push:
        github.push(local, ["swarm/1"])
    with pytest.raises(AuthError, match="refused the token") as fetch:
        github.fetch(local, "main")
    for caught in (rest, push, fetch):
        assert wrong not in str(caught.value)
        assert base64.b64encode(f"x-access-token:{wrong}".encode()).decode() not in str(
            caught.value
        )
    assert fake.rev("octo/shop", "swarm/1") is None


def test_a_missing_local_repository_is_not_found(shop: GitHubRepo, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not a bare repository"):
        shop.push(tmp_path / "nothing.git", ["main"])


# -- pull requests ---------------------------------------------------------------------------


def test_one_pull_request_per_ticket_updated_by_each_attempt(
    shop: GitHubRepo, fake: FakeGitHub, local: Path
) -> None:
    t = ticket(
        1,
        "Add the cart",
        body="The shop needs a cart.",
        acceptance=["a cart holds items", "the total\nis shown"],
        depends_on=["T-0", "T-9"],
        result=TicketResult(summary="Added b.txt."),
    )
    shop.push(local, ["swarm/1"], force=True)
    first = shop.open_or_update_pull(t, base="main", depends={"T-0": 12})

    assert (first.number, first.state, first.base, first.created) == (1, "open", "main", True)
    assert first.head_sha == git(local, "rev-parse", "swarm/1")
    assert first.html_url == f"{fake.url}/octo/shop/pull/1"
    pull = fake.repo("octo/shop").pulls[1]
    assert (pull.title, pull.head, pull.base) == ("T-1: Add the cart", "swarm/1", "main")
    assert pull.body is not None
    for part in ("The shop needs a cart.", "- [ ] a cart holds items", "- [ ] the total is shown",
                 "Added b.txt.", "- T-0: #12", "- T-9 (no pull request)",
                 "<!-- swarm:ticket=1 plan=3 -->"):  # fmt: skip
        assert part in pull.body

    fixed = t.model_copy(update={"result": TicketResult(summary="Fixed the total.")})
    second = shop.open_or_update_pull(fixed, base="main", number=first.number)
    assert (second.number, second.created) == (first.number, False)
    assert "Fixed the total." in (fake.repo("octo/shop").pulls[1].body or "")
    assert "Added b.txt." not in (fake.repo("octo/shop").pulls[1].body or "")
    assert len(fake.repo("octo/shop").pulls) == 1
    assert requests(fake, "POST", "/repos/octo/shop/pulls") == 1


def test_a_restarted_control_plane_finds_the_pull_request(
    shop: GitHubRepo, fake: FakeGitHub, local: Path
) -> None:
    shop.push(local, ["swarm/1", "swarm/2"], force=True)
    one = shop.open_or_update_pull(ticket(1), base="main")
    two = shop.open_or_update_pull(ticket(2), base="main")

    restarted = repo_of(fake)
    again = restarted.open_or_update_pull(ticket(2, "renamed"), base="main")
    assert (again.number, again.created) == (two.number, False)
    assert fake.repo("octo/shop").pulls[two.number].title == "T-2: renamed"
    assert restarted.find_pull(1, plan_id=3, base="main") == replace(one, created=False)
    assert restarted.find_pull(1, plan_id=4, base="main") is None  # another plan's ticket 1
    assert len(fake.repo("octo/shop").pulls) == 2
    assert requests(fake, "POST", "/repos/octo/shop/pulls") == 2  # looked up, not tried


def test_a_pull_request_closed_by_hand_is_reopened(
    shop: GitHubRepo, fake: FakeGitHub, local: Path
) -> None:
    shop.push(local, ["swarm/1"], force=True)
    opened = shop.open_or_update_pull(ticket(1), base="main")
    fake.repo("octo/shop").pulls[opened.number].state = "closed"
    again = repo_of(fake).open_or_update_pull(ticket(1), base="main")
    assert (again.number, again.state) == (opened.number, "open")


def test_a_pull_request_without_its_branch_is_refused(shop: GitHubRepo) -> None:
    with pytest.raises(InvalidRequest, match="Validation Failed"):
        shop.open_or_update_pull(ticket(1), base="main")


def test_comments_reach_the_pull_request(shop: GitHubRepo, fake: FakeGitHub, local: Path) -> None:
    shop.push(local, ["swarm/1"], force=True)
    pull = shop.open_or_update_pull(ticket(1), base="main")
    url = shop.comment(pull.number, f"Checks failed; fix attempt 2 (token {TOKEN}).")
    [made] = fake.repo("octo/shop").comments
    assert url == made["html_url"] and made["number"] == pull.number
    assert made["body"] == "Checks failed; fix attempt 2 (token ***)."


def test_title_and_body_keep_to_githubs_limits() -> None:
    t = ticket(5, "x" * 600, body="y" * 100_000, result=TicketResult(summary="z" * 20_000))
    assert len(pull_title(t)) == TITLE_MAX
    body = pull_body(t, summary="z" * 20_000, depends={})
    assert len(body) <= BODY_MAX
    assert body.endswith("<!-- swarm:ticket=5 plan=3 -->")
    assert "more characters not shown" in body
    assert pull_title(ticket(6, "  two\n lines ")) == "T-6: two lines"


# -- merging ---------------------------------------------------------------------------------


def test_merges_move_the_base_branch_in_the_order_asked(
    shop: GitHubRepo, fake: FakeGitHub, local: Path
) -> None:
    shop.push(local, ["swarm/1", "swarm/2", "swarm/3"], force=True)
    pulls = [shop.open_or_update_pull(ticket(i), base="main") for i in (1, 2, 3)]
    start = fake.rev("octo/shop", "main")

    first = shop.merge_pull(pulls[0].number, sha=pulls[0].head_sha, message="T-1: add b\n\nwhy")
    second = shop.merge_pull(pulls[1].number, sha=pulls[1].head_sha, message="T-2: TWO")
    assert fake.rev("octo/shop", "main") == second
    bare = fake.repo("octo/shop").path
    assert git(bare, "log", "-1", "--format=%P", first).split() == [start, pulls[0].head_sha]
    assert git(bare, "log", "-1", "--format=%P", second).split() == [first, pulls[1].head_sha]
    assert git(bare, "log", "-1", "--format=%s%n%b", first) == "T-1: add b\nwhy"
    merges = [r.path for r in fake.requests if r.method == "PUT"]
    assert merges == ["/repos/octo/shop/pulls/1/merge", "/repos/octo/shop/pulls/2/merge"]
    assert [r.body["sha"] for r in fake.requests if r.method == "PUT"] == [
        pulls[0].head_sha,
        pulls[1].head_sha,
    ]

    with pytest.raises(Conflict, match="Pull Request is not mergeable"):
        shop.merge_pull(pulls[2].number, sha=pulls[2].head_sha, message="T-3")
    assert fake.rev("octo/shop", "main") == second

    assert shop.fetch(local, "main") == second
    assert git(local, "show", "main:a.txt") == "one\nTWO\nthree"
    assert shop.find_pull(1, plan_id=3, base="main").state == "merged"  # type: ignore[union-attr]


def test_a_merge_of_a_head_that_moved_is_refused(
    shop: GitHubRepo, fake: FakeGitHub, local: Path
) -> None:
    shop.push(local, ["swarm/1"], force=True)
    pull = shop.open_or_update_pull(ticket(1), base="main")
    start = fake.rev("octo/shop", "main")
    with pytest.raises(Conflict, match="Head branch was modified"):
        shop.merge_pull(pull.number, sha=start or "", message="T-1")
    assert fake.rev("octo/shop", "main") == start


def test_a_merge_asked_again_after_it_happened_gives_the_same_commit(
    shop: GitHubRepo, local: Path
) -> None:
    shop.push(local, ["swarm/1"], force=True)
    pull = shop.open_or_update_pull(ticket(1), base="main")
    sha = shop.merge_pull(pull.number, sha=pull.head_sha, message="T-1")
    assert repo_of_restart(shop).merge_pull(pull.number, sha=pull.head_sha, message="T-1") == sha


def repo_of_restart(github: GitHubRepo) -> GitHubRepo:
    return GitHubRepo(github.settings)


# -- GitHub being unwell ---------------------------------------------------------------------


def test_server_errors_are_retried_then_unavailable(fake: FakeGitHub) -> None:
    fake.add_repo("octo", "shop")
    fake.fail(502, "Server Error", times=2)
    assert repo_of(fake).ensure_repo().full_name == "octo/shop"
    assert requests(fake, "GET", "/repos/octo/shop") == 3

    fake.fail(503, "Service Unavailable", times=10)
    with pytest.raises(Unavailable, match="HTTP 503 Service Unavailable"):
        repo_of(fake, retries=2).ensure_repo()
    assert requests(fake, "GET", "/repos/octo/shop") == 6


def test_a_rate_limit_that_lifts_later_is_unavailable_at_once(fake: FakeGitHub) -> None:
    fake.add_repo("octo", "shop")
    fake.fail(403, "API rate limit exceeded for user ID 1000.", headers=rate_limited(3600))
    with pytest.raises(Unavailable, match=r"rate limit .* lifts in about 3\d\d\d s"):
        repo_of(fake).ensure_repo()
    assert requests(fake, "GET", "/repos/octo/shop") == 1


def test_github_out_of_reach_is_unavailable(fake: FakeGitHub, local: Path) -> None:
    url = fake.url
    fake.stop()
    github = repo_of(fake, retries=0)
    with pytest.raises(Unavailable, match="could not be reached"):
        github.ensure_repo()
    with pytest.raises(Unavailable, match="git push"):
        github.push(local, ["main"])
    assert url in github.settings.clone_url


def test_the_api_version_is_the_librarys_unless_set(fake: FakeGitHub) -> None:
    fake.add_repo("octo", "shop")
    repo_of(fake).ensure_repo()
    repo_of(fake, api_version="2022-11-28").ensure_repo()
    versions = [r.api_version for r in fake.requests]
    assert versions[0] is not None and versions[0] != "2022-11-28"
    assert versions[1] == "2022-11-28"
