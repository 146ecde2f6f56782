"""A stand-in for GitHub, for the GitHub forge's tests: a real HTTP server that answers the
REST endpoints the forge uses the way GitHub's documentation shows them (whole objects,
which githubkit's typed models validate, and GitHub's error bodies), and git's smart HTTP
for ``/<owner>/<name>.git`` over a local bare repository per repository.

REST lives under ``/api/v3`` like GitHub Enterprise Server's, git at the root: so the
client is tested against a base URL with a path. REST takes ``Authorization: token <t>``
or ``Bearer <t>``; git takes HTTP basic authentication with the token as the password.
Merging a pull request really merges, with a merge commit made by ``merge-tree`` and
``commit-tree``, and moves the base branch. Every request is recorded, in order.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from swarmstack.forge import hostgit
from swarmstack.forge.pktline import ref_updates
from swarmstack.threaded import ThreadedServer

DOCS = "https://docs.github.com/rest"
GITHUB_IDENTITY = {
    "GIT_AUTHOR_NAME": "Fake GitHub",
    "GIT_AUTHOR_EMAIL": "noreply@github.invalid",
    "GIT_COMMITTER_NAME": "GitHub",
    "GIT_COMMITTER_EMAIL": "noreply@github.invalid",
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node(kind: str, number: int) -> str:
    return base64.b64encode(f"0:{kind}{number}".encode()).decode().rstrip("=")


class GitHubError(Exception):
    """An error answer, in GitHub's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        doc: str = DOCS,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.doc = status, message, doc
        self.errors, self.headers = errors, headers or {}

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"message": self.message, "documentation_url": self.doc}
        if self.errors is not None:
            body["errors"] = self.errors
        body["status"] = str(self.status)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


@dataclass
class Account:
    login: str
    id: int
    type: str  # "User" or "Organization"
    members: set[str] = field(default_factory=set)
    created_at: str = field(default_factory=_now)


@dataclass
class Pull:
    number: int
    id: int
    user: str
    title: str
    body: str | None
    head: str
    base: str
    state: str = "open"
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    closed_at: str | None = None
    merged_at: str | None = None
    merged_by: str | None = None
    merge_commit_sha: str | None = None
    merged_head_sha: str | None = None


@dataclass
class Repo:
    owner: str
    name: str
    id: int
    path: Path
    private: bool
    pulls: dict[int, Pull] = field(default_factory=dict)
    comments: list[dict[str, Any]] = field(default_factory=list)
    next_number: int = 1
    created_at: str = field(default_factory=_now)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # without the API prefix; git's as it came
    query: dict[str, str]
    body: Any
    login: str | None  # whom the token belongs to; for git, the basic-auth user name too
    git_user: str | None = None
    api_version: str | None = None  # X-GitHub-Api-Version


class FakeGitHub:
    def __init__(self, root: Path, *, prefix: str = "/api/v3") -> None:
        self.root = root
        self.prefix = prefix
        self.accounts: dict[str, Account] = {}
        self.tokens: dict[str, tuple[str, bool]] = {}  # token -> (login, may write)
        self.repos: dict[str, Repo] = {}  # "owner/name", lower case
        self.requests: list[Recorded] = []
        self._failures: list[GitHubError] = []
        self._ids = itertools.count(1000)
        self._server: ThreadedServer | None = None
        self.url = ""
        self.app = Starlette(
            routes=[
                Mount(prefix, routes=self._rest_routes()),
                Route("/{owner}/{name}.git/info/refs", self._info_refs, methods=["GET"]),
                Route("/{owner}/{name}.git/{service}", self._git_rpc, methods=["POST"]),
            ]
        )

    # -- setting the scene ----------------------------------------------------------------

    def add_user(self, login: str, token: str, *, write: bool = True) -> Account:
        account = self.accounts[login.lower()] = Account(login, next(self._ids), "User")
        self.tokens[token] = (login, write)
        return account

    def add_token(self, login: str, token: str, *, write: bool = True) -> None:
        self.tokens[token] = (login, write)

    def add_org(self, login: str, members: set[str]) -> Account:
        account = Account(login, next(self._ids), "Organization", members)
        self.accounts[login.lower()] = account
        return account

    def add_repo(
        self, owner: str, name: str, *, source: Path | None = None, private: bool = True
    ) -> Repo:
        """A repository: a bare clone of ``source``, or empty with HEAD at main."""
        path = self.root / owner / f"{name}.git"
        path.parent.mkdir(parents=True, exist_ok=True)
        if source is None:
            hostgit.run("init", "--quiet", "--bare", "--initial-branch=main", str(path))
        else:
            hostgit.run("clone", "--quiet", "--bare", "--", str(source), str(path))
        repo = Repo(self.accounts[owner.lower()].login, name, next(self._ids), path, private)
        self.repos[repo.full_name.lower()] = repo
        return repo

    def repo(self, full_name: str) -> Repo:
        return self.repos[full_name.lower()]

    def fail(
        self, status: int, message: str, *, times: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next ``times`` REST requests with this error instead."""
        self._failures += [GitHubError(status, message, headers=headers) for _ in range(times)]

    def rev(self, full_name: str, branch: str) -> str | None:
        code, out, _ = hostgit.run_status(
            "rev-parse",
            "--verify",
            "--quiet",
            f"refs/heads/{branch}^{{commit}}",
            cwd=self.repo(full_name).path,
        )
        return out.decode().strip() if code == 0 else None

    def start(self) -> FakeGitHub:
        self._server = ThreadedServer(self.app)
        self.url = self._server.url
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    close = stop  # for contextlib.closing

    @property
    def api_url(self) -> str:
        return self.url + self.prefix

    # -- REST ----------------------------------------------------------------------------

    def _rest_routes(self) -> list[Route]:
        r = self._rest
        return [
            Route("/user", r(self._me), methods=["GET"]),
            Route("/users/{username}", r(self._user), methods=["GET"]),
            Route("/user/repos", r(self._create_user_repo), methods=["POST"]),
            Route("/orgs/{org}/repos", r(self._create_org_repo), methods=["POST"]),
            Route("/repos/{owner}/{name}", r(self._get_repo), methods=["GET"]),
            Route("/repos/{owner}/{name}/pulls", r(self._list_pulls), methods=["GET"]),
            Route("/repos/{owner}/{name}/pulls", r(self._create_pull), methods=["POST"]),
            Route("/repos/{owner}/{name}/pulls/{number:int}", r(self._get_pull), methods=["GET"]),
            Route(
                "/repos/{owner}/{name}/pulls/{number:int}", r(self._update_pull), methods=["PATCH"]
            ),
            Route(
                "/repos/{owner}/{name}/pulls/{number:int}/merge", r(self._merge), methods=["PUT"]
            ),
            Route(
                "/repos/{owner}/{name}/issues/{number:int}/comments",
                r(self._comment),
                methods=["POST"],
            ),
        ]

    def _rest(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            body = json.loads(raw) if raw else None
            path = request.url.path.removeprefix(self.prefix)
            login = self._token_login(request)
            self.requests.append(
                Recorded(
                    request.method,
                    path,
                    dict(request.query_params),
                    body,
                    login[0] if login else None,
                    api_version=request.headers.get("x-github-api-version"),
                )
            )
            try:
                if self._failures:
                    raise self._failures.pop(0)
                if login is None:
                    raise GitHubError(401, "Bad credentials")
                status, answer = handler(request, login, body or {})
            except GitHubError as exc:
                return exc.response()
            return JSONResponse(answer, status_code=status)

        return endpoint

    def _token_login(self, request: Request) -> tuple[str, bool] | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("token", "bearer"):
            return None
        return self.tokens.get(token.strip())

    def _find(self, request: Request) -> Repo:
        key = f"{request.path_params['owner']}/{request.path_params['name']}".lower()
        if key not in self.repos:
            raise GitHubError(404, "Not Found", doc=f"{DOCS}/repos/repos#get-a-repository")
        return self.repos[key]

    @staticmethod
    def _writer(login: tuple[str, bool]) -> None:
        if not login[1]:
            raise GitHubError(403, "Resource not accessible by personal access token")

    def _me(self, _r: Request, login: tuple[str, bool], _b: Any) -> tuple[int, Any]:
        return 200, self._private_user(self.accounts[login[0].lower()])

    def _user(self, request: Request, _l: Any, _b: Any) -> tuple[int, Any]:
        account = self.accounts.get(request.path_params["username"].lower())
        if account is None:
            raise GitHubError(404, "Not Found", doc=f"{DOCS}/users/users#get-a-user")
        return 200, self._public_user(account)

    def _create_user_repo(self, _r: Request, login: tuple[str, bool], body: Any) -> tuple[int, Any]:
        self._writer(login)
        return 201, self._create(login[0], body, login)

    def _create_org_repo(
        self, request: Request, login: tuple[str, bool], body: Any
    ) -> tuple[int, Any]:
        self._writer(login)
        org = self.accounts.get(request.path_params["org"].lower())
        if org is None or org.type != "Organization":
            raise GitHubError(
                404, "Not Found", doc=f"{DOCS}/repos/repos#create-an-organization-repository"
            )
        if login[0] not in org.members:
            raise GitHubError(
                403, "You need admin access to the organization before adding a repository to it."
            )
        return 201, self._create(org.login, body, login)

    def _create(self, owner: str, body: Any, login: tuple[str, bool]) -> Any:
        name = body.get("name", "")
        if f"{owner}/{name}".lower() in self.repos:
            raise GitHubError(
                422,
                "Repository creation failed.",
                doc=f"{DOCS}/repos/repos#create-a-repository-for-the-authenticated-user",
                errors=[
                    {
                        "resource": "Repository",
                        "code": "custom",
                        "field": "name",
                        "message": "name already exists on this account",
                    }
                ],
            )
        repo = self.add_repo(owner, name, private=bool(body.get("private", False)))
        return self._repository(repo, login)

    def _get_repo(self, request: Request, login: tuple[str, bool], _b: Any) -> tuple[int, Any]:
        return 200, self._repository(self._find(request), login)

    def _list_pulls(self, request: Request, _l: Any, _b: Any) -> tuple[int, Any]:
        repo = self._find(request)
        q = request.query_params
        state, head, base = q.get("state", "open"), q.get("head"), q.get("base")
        pulls = sorted(repo.pulls.values(), key=lambda p: -p.number)
        if state != "all":
            pulls = [p for p in pulls if p.state == state]
        if head:
            pulls = [p for p in pulls if f"{repo.owner}:{p.head}".lower() == head.lower()]
        if base:
            pulls = [p for p in pulls if p.base == base]
        per_page = int(q.get("per_page", "30"))
        return 200, [self._pull(repo, p, full=False) for p in pulls[:per_page]]

    def _create_pull(self, request: Request, login: tuple[str, bool], body: Any) -> tuple[int, Any]:
        self._writer(login)
        repo = self._find(request)
        head, base = body.get("head", ""), body.get("base", "")
        head = head.split(":", 1)[1] if ":" in head else head
        doc = f"{DOCS}/pulls/pulls#create-a-pull-request"
        for side, branch in (("head", head), ("base", base)):
            if self.rev(repo.full_name, branch) is None:
                raise GitHubError(
                    422,
                    "Validation Failed",
                    doc=doc,
                    errors=[{"resource": "PullRequest", "field": side, "code": "invalid"}],
                )
        if any(p.state == "open" and (p.head, p.base) == (head, base) for p in repo.pulls.values()):
            raise GitHubError(
                422,
                "Validation Failed",
                doc=doc,
                errors=[
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"A pull request already exists for {repo.owner}:{head}.",
                    }
                ],
            )
        if self._count(repo, f"refs/heads/{base}..refs/heads/{head}") == 0:
            raise GitHubError(
                422,
                "Validation Failed",
                doc=doc,
                errors=[
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"No commits between {base} and {head}",
                    }
                ],
            )
        pull = Pull(
            repo.next_number,
            next(self._ids),
            login[0],
            body.get("title", ""),
            body.get("body"),
            head,
            base,
        )
        repo.pulls[pull.number] = pull
        repo.next_number += 1
        return 201, self._pull(repo, pull)

    def _pull_of(self, request: Request) -> tuple[Repo, Pull]:
        repo = self._find(request)
        pull = repo.pulls.get(request.path_params["number"])
        if pull is None:
            raise GitHubError(404, "Not Found", doc=f"{DOCS}/pulls/pulls#get-a-pull-request")
        return repo, pull

    def _get_pull(self, request: Request, _l: Any, _b: Any) -> tuple[int, Any]:
        repo, pull = self._pull_of(request)
        return 200, self._pull(repo, pull)

    def _update_pull(self, request: Request, login: tuple[str, bool], body: Any) -> tuple[int, Any]:
        self._writer(login)
        repo, pull = self._pull_of(request)
        pull.title = body.get("title", pull.title)
        pull.body = body.get("body", pull.body)
        if body.get("state") == "closed" and pull.state == "open":
            pull.state, pull.closed_at = "closed", _now()
        if body.get("state") == "open" and pull.state == "closed" and pull.merged_at is None:
            pull.state, pull.closed_at = "open", None
        pull.updated_at = _now()
        return 200, self._pull(repo, pull)

    def _merge(self, request: Request, login: tuple[str, bool], body: Any) -> tuple[int, Any]:
        """``PUT .../merge``: 409 when ``sha`` is not the head, 405 when it cannot merge."""
        self._writer(login)
        repo, pull = self._pull_of(request)
        doc = f"{DOCS}/pulls/pulls#merge-a-pull-request"
        head_sha, base_sha = (
            self.rev(repo.full_name, pull.head),
            self.rev(repo.full_name, pull.base),
        )
        if pull.state != "open" or head_sha is None or base_sha is None:
            raise GitHubError(405, "Pull Request is not mergeable", doc=doc)
        if body.get("sha") and body["sha"] != head_sha:
            raise GitHubError(
                409, "Head branch was modified. Review and try the merge again.", doc=doc
            )
        if body.get("merge_method", "merge") != "merge":
            raise GitHubError(405, "This fake merges with merge commits only", doc=doc)
        code, out, _ = hostgit.run_status(
            "merge-tree", "--write-tree", base_sha, head_sha, cwd=repo.path
        )
        if code != 0:
            raise GitHubError(405, "Pull Request is not mergeable", doc=doc)
        title = (
            body.get("commit_title")
            or f"Merge pull request #{pull.number} from {repo.owner}/{pull.head}"
        )
        message = body.get("commit_message") or pull.title
        tree = out.decode().split("\n", 1)[0].strip()
        commit = (
            hostgit.run(
                "commit-tree",
                tree,
                "-p",
                base_sha,
                "-p",
                head_sha,
                "-m",
                title,
                "-m",
                message,
                cwd=repo.path,
                env=GITHUB_IDENTITY,
            )
            .decode()
            .strip()
        )
        code, _, _ = hostgit.run_status(
            "update-ref", f"refs/heads/{pull.base}", commit, base_sha, cwd=repo.path
        )
        if code != 0:
            raise GitHubError(
                405, "Base branch was modified. Review and try the merge again.", doc=doc
            )
        pull.state, pull.merged_at = "closed", _now()
        pull.closed_at, pull.merged_by = pull.merged_at, login[0]
        pull.merge_commit_sha, pull.merged_head_sha = commit, head_sha
        return 200, {"sha": commit, "merged": True, "message": "Pull Request successfully merged"}

    def _comment(self, request: Request, login: tuple[str, bool], body: Any) -> tuple[int, Any]:
        self._writer(login)
        repo, pull = self._pull_of(request)
        cid = next(self._ids)
        api, html = f"{self.api_url}/repos/{repo.full_name}", f"{self.url}/{repo.full_name}"
        comment = {
            "id": cid,
            "node_id": _node("IC_", cid),
            "url": f"{api}/issues/comments/{cid}",
            "html_url": f"{html}/pull/{pull.number}#issuecomment-{cid}",
            "body": body.get("body", ""),
            "user": self._simple_user(self.accounts[login[0].lower()]),
            "created_at": _now(),
            "updated_at": _now(),
            "issue_url": f"{api}/issues/{pull.number}",
            "author_association": "OWNER",
        }
        repo.comments.append({"number": pull.number, **comment})
        return 201, comment

    # -- objects, in the shapes of GitHub's documentation ---------------------------------

    def _simple_user(self, account: Account) -> dict[str, Any]:
        api, login = f"{self.api_url}/users/{account.login}", account.login
        return {
            "login": login,
            "id": account.id,
            "node_id": _node("U_", account.id),
            "avatar_url": f"{self.url}/avatars/u/{account.id}?v=4",
            "gravatar_id": "",
            "url": api,
            "html_url": f"{self.url}/{login}",
            "followers_url": f"{api}/followers",
            "following_url": f"{api}/following{{/other_user}}",
            "gists_url": f"{api}/gists{{/gist_id}}",
            "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/subscriptions",
            "organizations_url": f"{api}/orgs",
            "repos_url": f"{api}/repos",
            "events_url": f"{api}/events{{/privacy}}",
            "received_events_url": f"{api}/received_events",
            "type": account.type,
            "site_admin": False,
            "user_view_type": "public",
        }

    def _public_user(self, account: Account) -> dict[str, Any]:
        owned = sum(1 for r in self.repos.values() if r.owner == account.login)
        return {
            **self._simple_user(account),
            "name": account.login,
            "company": None,
            "blog": "",
            "location": None,
            "email": None,
            "hireable": None,
            "bio": None,
            "twitter_username": None,
            "public_repos": owned,
            "public_gists": 0,
            "followers": 0,
            "following": 0,
            "created_at": account.created_at,
            "updated_at": account.created_at,
        }

    def _private_user(self, account: Account) -> dict[str, Any]:
        return {
            **self._public_user(account),
            "private_gists": 0,
            "total_private_repos": 0,
            "owned_private_repos": 0,
            "disk_usage": 0,
            "collaborators": 0,
            "two_factor_authentication": True,
            "plan": {"name": "pro", "space": 976562499, "private_repos": 9999, "collaborators": 0},
        }

    def _repository(self, repo: Repo, login: tuple[str, bool] | None) -> dict[str, Any]:
        api, html = f"{self.api_url}/repos/{repo.full_name}", f"{self.url}/{repo.full_name}"
        code, out, _ = hostgit.run_status("symbolic-ref", "--short", "HEAD", cwd=repo.path)
        branch = out.decode().strip() if code == 0 else "main"
        owner = self.accounts[repo.owner.lower()]
        writes = bool(login and login[1])
        open_pulls = sum(1 for p in repo.pulls.values() if p.state == "open")
        host = self.url.split("://", 1)[1]
        return {
            "id": repo.id,
            "node_id": _node("R_", repo.id),
            "name": repo.name,
            "full_name": repo.full_name,
            "owner": self._simple_user(owner),
            "private": repo.private,
            "html_url": html,
            "description": None,
            "fork": False,
            "url": api,
            "archive_url": f"{api}/{{archive_format}}{{/ref}}",
            "assignees_url": f"{api}/assignees{{/user}}",
            "blobs_url": f"{api}/git/blobs{{/sha}}",
            "branches_url": f"{api}/branches{{/branch}}",
            "collaborators_url": f"{api}/collaborators{{/collaborator}}",
            "comments_url": f"{api}/comments{{/number}}",
            "commits_url": f"{api}/commits{{/sha}}",
            "compare_url": f"{api}/compare/{{base}}...{{head}}",
            "contents_url": f"{api}/contents/{{+path}}",
            "contributors_url": f"{api}/contributors",
            "deployments_url": f"{api}/deployments",
            "downloads_url": f"{api}/downloads",
            "events_url": f"{api}/events",
            "forks_url": f"{api}/forks",
            "git_commits_url": f"{api}/git/commits{{/sha}}",
            "git_refs_url": f"{api}/git/refs{{/sha}}",
            "git_tags_url": f"{api}/git/tags{{/sha}}",
            "git_url": f"git://{host}/{repo.full_name}.git",
            "issue_comment_url": f"{api}/issues/comments{{/number}}",
            "issue_events_url": f"{api}/issues/events{{/number}}",
            "issues_url": f"{api}/issues{{/number}}",
            "keys_url": f"{api}/keys{{/key_id}}",
            "labels_url": f"{api}/labels{{/name}}",
            "languages_url": f"{api}/languages",
            "merges_url": f"{api}/merges",
            "milestones_url": f"{api}/milestones{{/number}}",
            "notifications_url": f"{api}/notifications{{?since,all,participating}}",
            "pulls_url": f"{api}/pulls{{/number}}",
            "releases_url": f"{api}/releases{{/id}}",
            "ssh_url": f"git@{host}:{repo.full_name}.git",
            "stargazers_url": f"{api}/stargazers",
            "statuses_url": f"{api}/statuses/{{sha}}",
            "subscribers_url": f"{api}/subscribers",
            "subscription_url": f"{api}/subscription",
            "tags_url": f"{api}/tags",
            "teams_url": f"{api}/teams",
            "trees_url": f"{api}/git/trees{{/sha}}",
            "clone_url": f"{html}.git",
            "mirror_url": None,
            "hooks_url": f"{api}/hooks",
            "svn_url": html,
            "homepage": None,
            "language": None,
            "forks_count": 0,
            "forks": 0,
            "stargazers_count": 0,
            "watchers_count": 0,
            "watchers": 0,
            "size": 0,
            "default_branch": branch,
            "open_issues_count": open_pulls,
            "open_issues": open_pulls,
            "is_template": False,
            "topics": [],
            "has_issues": True,
            "has_projects": True,
            "has_wiki": True,
            "has_pages": False,
            "has_downloads": True,
            "has_discussions": False,
            "archived": False,
            "disabled": False,
            "visibility": "private" if repo.private else "public",
            "pushed_at": repo.created_at,
            "created_at": repo.created_at,
            "updated_at": repo.created_at,
            "permissions": {
                "admin": writes,
                "maintain": writes,
                "push": writes,
                "triage": True,
                "pull": True,
            },
            "allow_rebase_merge": True,
            "allow_squash_merge": True,
            "allow_merge_commit": True,
            "allow_auto_merge": False,
            "delete_branch_on_merge": False,
            "allow_forking": True,
            "web_commit_signoff_required": False,
            "subscribers_count": 0,
            "network_count": 0,
            "license": None,
            "temp_clone_token": None,
        }

    def _count(self, repo: Repo, revs: str) -> int:
        return int(hostgit.run("rev-list", "--count", revs, cwd=repo.path).decode())

    def _pull(self, repo: Repo, pull: Pull, *, full: bool = True) -> dict[str, Any]:
        api, html = f"{self.api_url}/repos/{repo.full_name}", f"{self.url}/{repo.full_name}"
        base_sha = self.rev(repo.full_name, pull.base) or "0" * 40
        head_sha = pull.merged_head_sha or self.rev(repo.full_name, pull.head) or "0" * 40
        owner = self.accounts[repo.owner.lower()]
        side = {"user": self._simple_user(owner), "repo": self._repository(repo, None)}
        url = f"{api}/pulls/{pull.number}"
        body: dict[str, Any] = {
            "url": url,
            "id": pull.id,
            "node_id": _node("PR_", pull.id),
            "html_url": f"{html}/pull/{pull.number}",
            "diff_url": f"{html}/pull/{pull.number}.diff",
            "patch_url": f"{html}/pull/{pull.number}.patch",
            "issue_url": f"{api}/issues/{pull.number}",
            "commits_url": f"{url}/commits",
            "review_comments_url": f"{url}/comments",
            "review_comment_url": f"{api}/pulls/comments{{/number}}",
            "comments_url": f"{api}/issues/{pull.number}/comments",
            "statuses_url": f"{api}/statuses/{head_sha}",
            "number": pull.number,
            "state": pull.state,
            "locked": False,
            "title": pull.title,
            "user": self._simple_user(self.accounts[pull.user.lower()]),
            "body": pull.body,
            "labels": [],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": pull.created_at,
            "updated_at": pull.updated_at,
            "closed_at": pull.closed_at,
            "merged_at": pull.merged_at,
            "merge_commit_sha": pull.merge_commit_sha,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": {
                "label": f"{repo.owner}:{pull.head}",
                "ref": pull.head,
                "sha": head_sha,
                **side,
            },
            "base": {
                "label": f"{repo.owner}:{pull.base}",
                "ref": pull.base,
                "sha": base_sha,
                **side,
            },
            "_links": {
                "self": {"href": url},
                "html": {"href": f"{html}/pull/{pull.number}"},
                "issue": {"href": f"{api}/issues/{pull.number}"},
                "comments": {"href": f"{api}/issues/{pull.number}/comments"},
                "review_comments": {"href": f"{url}/comments"},
                "review_comment": {"href": f"{api}/pulls/comments{{/number}}"},
                "commits": {"href": f"{url}/commits"},
                "statuses": {"href": f"{api}/statuses/{head_sha}"},
            },
            "author_association": "OWNER",
            "auto_merge": None,
            "draft": False,
        }
        if not full:
            return body
        mergeable = None
        if pull.state == "open":
            code, _, _ = hostgit.run_status(
                "merge-tree", "--write-tree", base_sha, head_sha, cwd=repo.path
            )
            mergeable = code == 0
        files = insertions = deletions = 0
        if pull.state == "open" or pull.merged_head_sha:
            numstat = hostgit.run("diff", "--numstat", f"{base_sha}...{head_sha}", cwd=repo.path)
            for line in numstat.decode().splitlines():
                added, removed, _ = line.split("\t", 2)
                files += 1
                insertions += int(added) if added.isdigit() else 0
                deletions += int(removed) if removed.isdigit() else 0
        merged_by = self.accounts[pull.merged_by.lower()] if pull.merged_by else None
        return {
            **body,
            "merged": pull.merged_at is not None,
            "mergeable": mergeable,
            "rebaseable": mergeable,
            "mergeable_state": {True: "clean", False: "dirty", None: "unknown"}[mergeable],
            "merged_by": self._simple_user(merged_by) if merged_by else None,
            "comments": sum(1 for c in repo.comments if c["number"] == pull.number),
            "review_comments": 0,
            "maintainer_can_modify": False,
            "commits": self._count(repo, f"{base_sha}..{head_sha}") if mergeable is not None else 0,
            "additions": insertions,
            "deletions": deletions,
            "changed_files": files,
        }

    # -- git's smart HTTP ----------------------------------------------------------------

    def _git_caller(self, request: Request, repo: Repo | None, *, push: bool) -> Response | None:
        """None when the caller may go on; else GitHub's refusal."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        user = password = ""
        if scheme.lower() == "basic":
            user, _, password = base64.b64decode(value).decode(errors="replace").partition(":")
        login = self.tokens.get(password)
        self.requests.append(
            Recorded(
                request.method,
                request.url.path,
                dict(request.query_params),
                None,
                login[0] if login else None,
                user or None,
            )
        )
        if login is None:
            return PlainTextResponse(
                "Invalid username or token. Password authentication is not supported for Git "
                "operations.\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="GitHub"'},
            )
        if repo is None:
            return PlainTextResponse("Repository not found.\n", status_code=404)
        if push and not login[1]:
            return PlainTextResponse(
                f"Permission to {repo.full_name}.git denied to {login[0]}.\n", status_code=403
            )
        return None

    def _git_repo(self, request: Request) -> Repo | None:
        key = f"{request.path_params['owner']}/{request.path_params['name']}".lower()
        return self.repos.get(key)

    async def _info_refs(self, request: Request) -> Response:
        service = request.query_params.get("service", "")
        if service not in ("git-upload-pack", "git-receive-pack"):
            return PlainTextResponse("smart HTTP only\n", status_code=403)
        repo = self._git_repo(request)
        refused = self._git_caller(request, repo, push=service == "git-receive-pack")
        if refused is not None:
            return refused
        assert repo is not None
        out = await hostgit.serve(service, repo.path, None, advertise=True)
        banner = f"# service={service}\n".encode()
        out = f"{len(banner) + 4:04x}".encode() + banner + b"0000" + out
        return Response(out, media_type=f"application/x-{service}-advertisement")

    async def _git_rpc(self, request: Request) -> Response:
        service = request.path_params["service"]
        if service not in ("git-upload-pack", "git-receive-pack"):
            return PlainTextResponse("Not Found\n", status_code=404)
        repo = self._git_repo(request)
        refused = self._git_caller(request, repo, push=service == "git-receive-pack")
        if refused is not None:
            return refused
        assert repo is not None
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = zlib.decompress(body, wbits=31)
        empty = not hostgit.run("for-each-ref", cwd=repo.path).strip()
        out = await hostgit.serve(service, repo.path, body, advertise=False)
        if service == "git-receive-pack" and empty:
            self._first_push(repo, body)
        return Response(out, media_type=f"application/x-{service}-result")

    @staticmethod
    def _first_push(repo: Repo, body: bytes) -> None:
        """An empty repository's default branch becomes the first branch pushed to it."""
        code, _, _ = hostgit.run_status("rev-parse", "--verify", "--quiet", "HEAD", cwd=repo.path)
        branches = [u.ref for u in ref_updates(body) if u.ref.startswith("refs/heads/")]
        if code != 0 and branches:
            hostgit.run("symbolic-ref", "HEAD", branches[0], cwd=repo.path)


def rate_limited(reset_in_s: int = 3600) -> dict[str, str]:
    """The headers of GitHub's primary rate limit answer."""
    return {
        "x-ratelimit-limit": "5000",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-used": "5000",
        "x-ratelimit-reset": str(int(time.time()) + reset_in_s),
        "x-ratelimit-resource": "core",
    }
