"""The GitHub side of the forge: the control plane's client of one GitHub repository.

The control plane keeps each plan's work in its local bare repository (:mod:`.local`); this
module mirrors it to GitHub and lets GitHub merge it. A merge queue calls it like this::

    github = GitHubRepo(GitHubSettings(token=..., repository="acme/shop", create=True))
    repo = github.ensure_repo()                      # once: the repository, made if asked
    github.push(local, [base])                       # once: the integration branch
    # a ticket's branch arrived in the local forge (a first attempt or a fix):
    github.push(local, [ticket_branch(t.id)], force=True)
    pull = github.open_or_update_pull(t, base=base, number=known, depends={"T-3": 12})
    # the queue lands it, in DAG order:
    github.merge_pull(pull.number, sha=pull.head_sha, message="T-7: add the cart")
    github.fetch(local, base)                        # the merge comes back to the local forge

REST calls go through githubkit, against ``https://api.github.com`` or any other base URL
(GitHub Enterprise Server answers at ``https://HOST/api/v3``). githubkit retries a 5xx and a
rate limit by itself; here it is told how often and for how long, so a control plane never
sleeps an hour on a primary rate limit: what cannot be retried soon is :class:`Unavailable`.

git runs on the host (:mod:`.hostgit`, hardened) between the local bare repository and
GitHub. The token reaches git only through the environment of that one process, as an
``http.<git base>/.extraHeader`` (``Authorization: Basic x-access-token:<token>``) given by
``GIT_CONFIG_COUNT``: never on a command line, in a remote URL or in a file, and only sent to
the git base URL. Only that URL's protocol is allowed for those two commands.

GitHub's auto-merge can be switched on only through GraphQL (``enablePullRequestAutoMerge``);
this module does not: the merge queue merges each pull request itself, in DAG order, through
``PUT /repos/{owner}/{repo}/pulls/{number}/merge`` with the head sha it checked.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from swarmstack.errors import (
    AuthError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    SwarmError,
    Unavailable,
)
from swarmstack.forge import hostgit
from swarmstack.forge.local import ticket_branch
from swarmstack.forge.pullbody import marked, pull_body, pull_title

if TYPE_CHECKING:
    from githubkit import GitHub
    from githubkit.exception import GitHubException
    from githubkit.typing import RetryOption

    from swarmstack.config import Settings
    from swarmstack.tickets.models import Ticket

# GitHub's own rules: an owner is 1-39 letters, digits and inner hyphens; a repository name
# is letters, digits, '.', '-' and '_', at most 100, and never '.' or '..'.
_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
PullState = Literal["open", "closed", "merged"]


@dataclass(frozen=True)
class GitHubSettings:
    """One GitHub repository and how to reach it. ``token`` is a personal access token or an
    App installation token: both are bearer tokens to the REST API and the password of
    ``x-access-token`` to git."""

    token: str = field(repr=False)
    repository: str  # "owner/name"
    api_url: str = "https://api.github.com"
    git_url: str = "https://github.com"
    create: bool = False  # create the repository when it is missing
    private: bool = True  # a repository it creates
    api_version: str | None = None  # X-GitHub-Api-Version; None: the client library's own
    timeout_s: float = 30.0
    retries: int = 3  # of a 5xx answer
    retry_base_s: float = 1.0  # waits 1, 2, 4 ... times this between them
    max_rate_wait_s: float = 60.0  # a rate limit that lifts later is Unavailable at once

    def __post_init__(self) -> None:
        if not self.token.strip():
            raise InvalidRequest("a GitHub token is needed (SWARM_GITHUB_TOKEN or GITHUB_TOKEN)")
        owner, slash, name = self.repository.partition("/")
        if not slash or not _OWNER.match(owner) or not _NAME.match(name) or name in (".", ".."):
            raise InvalidRequest(
                f"{self.repository!r} is not a GitHub repository: write it owner/name, "
                "e.g. octocat/hello-world (no URL, no .git)"
            )
        if name.endswith(".git"):
            raise InvalidRequest(f"write the repository as {owner}/{name[:-4]}, without .git")
        for label, url in (("API", self.api_url), ("git", self.git_url)):
            parts = urlsplit(url)
            if parts.scheme not in ("https", "http") or not parts.netloc:
                raise InvalidRequest(f"the GitHub {label} URL {url!r} is not an http(s) URL")
            if parts.username or parts.password:
                raise InvalidRequest(f"the GitHub {label} URL holds credentials: pass a token")

    @classmethod
    def from_settings(
        cls, settings: Settings, repository: str, *, create: bool = False
    ) -> GitHubSettings:
        """The repository of a plan, with the host's token and URLs."""
        if settings.github_token is None:
            raise InvalidRequest("no GitHub token: set SWARM_GITHUB_TOKEN (or GITHUB_TOKEN)")
        return cls(
            token=settings.github_token.get_secret_value(),
            repository=repository,
            api_url=settings.github_api_url,
            git_url=settings.github_git_url,
            create=create,
        )

    @property
    def owner(self) -> str:
        return self.repository.partition("/")[0]

    @property
    def name(self) -> str:
        return self.repository.partition("/")[2]

    @property
    def clone_url(self) -> str:
        return f"{self.git_url.rstrip('/')}/{self.repository}.git"


@dataclass(frozen=True)
class RepoInfo:
    full_name: str
    default_branch: str  # GitHub's; an empty repository takes the first branch pushed
    clone_url: str
    html_url: str
    private: bool
    created: bool  # by this call


@dataclass(frozen=True)
class PullInfo:
    number: int
    url: str  # the API's
    html_url: str
    state: PullState
    head_sha: str
    base: str
    created: bool = False  # opened by this call


class GitHubRepo:
    """One GitHub repository, as the control plane uses it."""

    def __init__(self, settings: GitHubSettings) -> None:
        from githubkit import GitHub

        self.settings = settings
        self._gh: GitHub[Any] = GitHub(
            settings.token,
            base_url=settings.api_url,
            user_agent="swarmstack",
            timeout=settings.timeout_s,
            http_cache=False,  # a pull request's state must be GitHub's latest, never a copy
            auto_retry=self._retry,
        )
        self._headers = (
            {"X-GitHub-Api-Version": settings.api_version} if settings.api_version else {}
        )

    # -- the repository ------------------------------------------------------------------

    def ensure_repo(self) -> RepoInfo:
        """The repository, created (private unless told otherwise) when it is missing and
        ``create`` is set; an archived one, or one the token may not push to, is refused."""
        s = self.settings
        created = False
        try:
            with self._api(f"reading {s.repository}"):
                repo = self._gh.rest.repos.get(s.owner, s.name, headers=self._headers).parsed_data
        except NotFound:
            if not s.create:
                raise NotFound(
                    f"GitHub has no repository {s.repository} that this token can see; "
                    "pass --create-repo to create it"
                ) from None
            repo = self._create()
            created = True
        if repo.archived:
            raise Conflict(f"{s.repository} is archived on GitHub: nothing can be pushed to it")
        if repo.permissions and not repo.permissions.push:  # absent for some tokens
            raise Forbidden(f"the token can read {s.repository} but may not push to it")
        return RepoInfo(
            full_name=repo.full_name,
            default_branch=repo.default_branch,
            clone_url=s.clone_url,
            html_url=repo.html_url,
            private=repo.private,
            created=created,
        )

    def _create(self) -> Any:
        """``POST /user/repos`` when the owner is the token's own user, ``POST
        /orgs/{owner}/repos`` when it is an organization."""
        s = self.settings
        rest = self._gh.rest
        with self._api("finding who the token belongs to"):
            me = rest.users.get_authenticated(headers=self._headers).parsed_data.login
        if me.lower() == s.owner.lower():
            with self._api(f"creating {s.repository}"):
                return rest.repos.create_for_authenticated_user(
                    headers=self._headers, name=s.name, private=s.private, auto_init=False
                ).parsed_data
        with self._api(f"looking up {s.owner}"):
            kind = rest.users.get_by_username(s.owner, headers=self._headers).parsed_data.type
        if kind != "Organization":
            raise Forbidden(
                f"{s.owner} is another user than the token's ({me}): "
                f"a repository can be created only for {me} or an organization"
            )
        with self._api(f"creating {s.repository}"):
            return rest.repos.create_in_org(
                s.owner, headers=self._headers, name=s.name, private=s.private, auto_init=False
            ).parsed_data

    # -- git -----------------------------------------------------------------------------

    def push(self, local: Path, refspecs: Sequence[str], *, force: bool = False) -> None:
        """Push branches of the local bare repository to GitHub. A refspec is a branch name
        (pushed to the same name) or ``src:dst``; ``force`` for a ticket branch that a fix
        attempt rewrote. A rejected push is :class:`Conflict` in git's own words."""
        if not refspecs:
            raise InvalidRequest("nothing to push: name at least one branch")
        specs = [self._refspec(spec) for spec in refspecs]
        flags = ["--force"] if force else []
        self._git("push", local, *flags, "--", self.settings.clone_url, *specs)

    def fetch(self, local: Path, branch: str, *, force: bool = False) -> str:
        """Bring GitHub's ``branch`` into the local bare repository (after GitHub merged into
        it); its new sha. A local branch that GitHub's does not contain is left alone
        (:class:`Conflict`) unless ``force``."""
        ref = self._ref(branch)
        spec = f"{'+' if force else ''}{ref}:{ref}"
        flags = ["--no-tags", "--no-write-fetch-head"]
        self._git("fetch", local, *flags, "--", self.settings.clone_url, spec)
        return hostgit.run("rev-parse", "--verify", f"{ref}^{{commit}}", cwd=local).decode().strip()

    def git_env(self) -> dict[str, str]:
        """What a git process that talks to GitHub gets in its environment, besides hostgit's:
        the token as an HTTP header for the git base URL only, that URL's protocol allowed,
        fetched objects checked, and the host's proxy settings."""
        s = self.settings
        basic = base64.b64encode(f"x-access-token:{s.token}".encode()).decode()
        scheme = urlsplit(s.git_url).scheme
        config = {
            f"http.{s.git_url.rstrip('/')}/.extraHeader": f"Authorization: Basic {basic}",
            f"protocol.{scheme}.allow": "always",
            "fetch.fsckObjects": "true",
        }
        env = {name: value for name, value in os.environ.items() if name.lower() in _PROXY_VARS}
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for i, (key, value) in enumerate(config.items()):
            env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
        return env

    def _git(self, command: str, local: Path, *args: str) -> None:
        if not (local / "HEAD").is_file():
            raise NotFound(f"{local} is not a bare repository of the forge")
        code, _out, err = hostgit.run_status(command, *args, cwd=local, env=self.git_env())
        if code != 0:
            raise _git_error(
                command, self.settings.repository, self.scrub(err.decode(errors="replace"))
            )

    @staticmethod
    def _ref(branch: str) -> str:
        """``refs/heads/<branch>``, if git takes it for a branch; the forge moves no tags."""
        ref = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
        code, _, _ = hostgit.run_status("check-ref-format", ref)
        if code != 0 or branch.startswith("-") or not ref.startswith("refs/heads/"):
            raise InvalidRequest(f"{branch!r} is not a branch name git accepts")
        return ref

    def _refspec(self, spec: str) -> str:
        if spec.startswith("+"):
            raise InvalidRequest(f"{spec!r}: ask for force=True rather than a '+' refspec")
        src, colon, dst = spec.partition(":")
        if colon and not src:
            raise InvalidRequest(f"{spec!r} would delete {dst} on GitHub; the forge never does")
        return f"{self._ref(src)}:{self._ref(dst if colon else src)}"

    # -- pull requests -------------------------------------------------------------------

    def open_or_update_pull(
        self,
        ticket: Ticket,
        *,
        base: str,
        number: int | None = None,
        summary: str | None = None,
        depends: Mapping[str, int] | None = None,
    ) -> PullInfo:
        """The ticket's one pull request, head ``swarm/<ticket id>`` into ``base``, with its
        title and body written afresh: the one ``number`` names, else one found by its head
        (so a control plane that restarted opens no second), else a new one. ``depends``
        maps the keys of the ticket's dependencies to their pull requests' numbers;
        ``summary`` is the agent's (by default the one in the ticket's result)."""
        if summary is None:
            summary = ticket.result.summary if ticket.result else ""
        title = pull_title(ticket)
        body = pull_body(ticket, summary=summary, depends=depends or {})
        if number is None:
            found = self.find_pull(ticket.id, plan_id=ticket.plan_id, base=base)
            number = found.number if found else None
        if number is not None:
            return self._update(number, title=title, body=body)
        return self._open(ticket, base=base, title=title, body=body)

    def find_pull(self, ticket_id: int, *, plan_id: int, base: str) -> PullInfo | None:
        """The pull request of a ticket by its head branch: the one whose hidden marker names
        this ticket and plan (an open one first), else an open one into ``base`` that
        carries no marker of another ticket."""
        s = self.settings
        head = ticket_branch(ticket_id)
        with self._api(f"looking for the pull request of {head}"):
            pulls = self._gh.rest.pulls.list(
                s.owner, s.name, head=f"{s.owner}:{head}", state="all", per_page=100,
                headers=self._headers,
            ).parsed_data  # fmt: skip
        pulls = [p for p in pulls if p.head.ref == head]
        mine = [p for p in pulls if marked(p.body) == (ticket_id, plan_id)]
        unmarked = [
            p for p in pulls if p.state == "open" and p.base.ref == base and not marked(p.body)
        ]
        ranked = sorted(mine, key=lambda p: p.state != "open") + unmarked
        return _pull_info(ranked[0]) if ranked else None

    def _update(self, number: int, *, title: str, body: str) -> PullInfo:
        s = self.settings
        with self._api(f"reading pull request #{number}"):
            pull = self._gh.rest.pulls.get(s.owner, s.name, number, headers=self._headers)
        reopen = pull.parsed_data.state == "closed" and pull.parsed_data.merged_at is None
        changes: dict[str, Any] = {"title": title, "body": body}
        if reopen:
            changes["state"] = "open"  # closed by hand, and the ticket came back
        with self._api(f"updating pull request #{number}"):
            updated = self._gh.rest.pulls.update(
                s.owner, s.name, number, headers=self._headers, **changes
            ).parsed_data
        return _pull_info(updated)

    def _open(self, ticket: Ticket, *, base: str, title: str, body: str) -> PullInfo:
        s = self.settings
        head = ticket_branch(ticket.id)
        try:
            with self._api(f"opening the pull request of {head}"):
                pull = self._gh.rest.pulls.create(
                    s.owner, s.name, headers=self._headers, title=title, head=head, base=base,
                    body=body, maintainer_can_modify=False,
                ).parsed_data  # fmt: skip
        except InvalidRequest as exc:
            # Opened a moment ago by a call whose answer was lost: take that one.
            found = self.find_pull(ticket.id, plan_id=ticket.plan_id, base=base)
            if found is None or "already exists" not in exc.message:
                raise
            return self._update(found.number, title=title, body=body)
        return replace(_pull_info(pull), created=True)

    def merge_pull(self, number: int, *, sha: str, message: str) -> str:
        """Merge the pull request with a merge commit, only if its head is still ``sha``; the
        merge commit's sha. GitHub's refusal (a conflict, a head that moved, a check that
        is required) is :class:`Conflict` with GitHub's words. A pull request that this
        very head already merged (a restart after the merge) gives its merge commit."""
        from githubkit.utils import UNSET

        s = self.settings
        title, _, rest = message.strip().partition("\n")
        try:
            with self._api(f"merging pull request #{number}"):
                result = self._gh.rest.pulls.merge(
                    s.owner,
                    s.name,
                    number,
                    headers=self._headers,
                    sha=sha,
                    merge_method="merge",
                    commit_title=title or f"Merge pull request #{number}",
                    commit_message=rest.strip() or UNSET,
                ).parsed_data
        except Conflict:
            with self._api(f"reading pull request #{number}"):
                pull = self._gh.rest.pulls.get(s.owner, s.name, number, headers=self._headers)
            done = pull.parsed_data
            merge_sha = pull.json().get("merge_commit_sha")  # not in every version's model
            if done.merged and done.head.sha == sha and isinstance(merge_sha, str):
                return merge_sha
            raise
        return result.sha

    def comment(self, number: int, text: str) -> str:
        """Tell a pull request something (a fix attempt, a failed check); the comment's
        address."""
        s = self.settings
        with self._api(f"commenting on pull request #{number}"):
            made = self._gh.rest.issues.create_comment(
                s.owner, s.name, number, headers=self._headers, body=self.scrub(text)[:65_000]
            ).parsed_data
        return made.html_url

    # -- errors and retries --------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """``text`` without the token, plain or inside a basic-auth header."""
        token = self.settings.token
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        return text.replace(basic, "***").replace(token, "***")

    @contextmanager
    def _api(self, doing: str) -> Iterator[None]:
        """GitHub's answers as Swarm's errors, each naming what was being done."""
        from githubkit.exception import RateLimitExceeded, RequestError, RequestFailed
        from pydantic import ValidationError

        url = self.settings.api_url
        try:
            yield
        except RateLimitExceeded as exc:
            wait = int(exc.retry_after.total_seconds())
            raise Unavailable(
                f"GitHub's rate limit stopped {doing}; it lifts in about {wait} s"
            ) from None
        except RequestFailed as exc:
            status, text = exc.response.status_code, exc.response.raw_response.text
            raise self._failed(doing, status, text) from None
        except ValidationError as exc:
            raise SwarmError(
                f"GitHub's answer while {doing} does not fit its schema: {exc}"
            ) from None
        except RequestError as exc:
            raise Unavailable(
                self.scrub(f"GitHub ({url}) could not be reached while {doing}: {exc.exc}")
            ) from None

    def _failed(self, doing: str, status: int, text: str) -> SwarmError:
        detail = self.scrub(_github_message(text))
        where = f"{doing} ({self.settings.api_url})"
        if status == 401:
            return AuthError(f"GitHub refused the token while {where}: {detail}; is it valid?")
        if status == 403:
            return Forbidden(f"the token may not do this: {doing}: {detail}")
        if status == 404:
            return NotFound(f"GitHub found nothing while {doing}: {detail}")
        if status in (405, 409):
            return Conflict(f"GitHub refused {doing}: {detail}")
        if status == 422:
            return InvalidRequest(f"GitHub refused {doing}: {detail}")
        if status >= 500:
            return Unavailable(f"GitHub failed while {where}: HTTP {status} {detail}")
        return SwarmError(f"GitHub answered HTTP {status} while {where}: {detail}")

    def _retry(self, exc: GitHubException, count: int) -> RetryOption:
        """Retry a 5xx a few times with a growing wait, and a rate limit once when it lifts
        soon enough; anything else is the caller's to know at once."""
        from githubkit.exception import RateLimitExceeded, RequestFailed
        from githubkit.typing import RetryOption

        s = self.settings
        if isinstance(exc, RateLimitExceeded):
            soon = exc.retry_after.total_seconds() <= s.max_rate_wait_s
            return RetryOption(count == 0 and soon, exc.retry_after)
        if isinstance(exc, RequestFailed) and exc.response.status_code >= 500:
            return RetryOption(count < s.retries, timedelta(seconds=s.retry_base_s * 2**count))
        return RetryOption(False)


_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


def _pull_info(pull: Any) -> PullInfo:
    """A ``pull-request`` or ``pull-request-simple`` object (``merged_at`` is in both)."""
    state: PullState = "merged" if pull.merged_at is not None else pull.state
    return PullInfo(
        number=pull.number,
        url=pull.url,
        html_url=pull.html_url,
        state=state,
        head_sha=pull.head.sha,
        base=pull.base.ref,
    )


def _github_message(text: str) -> str:
    """GitHub's error body: its ``message`` and the messages of its ``errors``."""
    import json

    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:300] or "(no message)"
    if not isinstance(body, dict):
        return str(body)[:300]
    parts = [str(body.get("message") or "(no message)")]
    for error in body.get("errors") or []:
        if isinstance(error, dict):
            parts.append(str(error.get("message") or error.get("code") or error))
        else:
            parts.append(str(error))
    return "; ".join(parts)


def _git_error(command: str, repository: str, stderr: str) -> SwarmError:
    """A failed ``git push`` or ``git fetch`` as the error it is, in git's own words."""
    words = stderr.strip()[-800:] or "(git said nothing)"
    said = (
        f"git {command} {'to' if command == 'push' else 'from'} GitHub {repository} failed: {words}"
    )
    low = stderr.lower()
    if any(s in low for s in ("error: 401", "authentication failed", "could not read username",
                              "invalid username or token")):  # fmt: skip
        return AuthError(f"GitHub refused the token: {said}")
    if "error: 403" in low or "permission to" in low:
        return Forbidden(f"the token may not {command} here: {said}")
    if "error: 404" in low or "repository not found" in low or "couldn't find remote ref" in low:
        return NotFound(said)
    if "[rejected]" in low or "[remote rejected]" in low or "non-fast-forward" in low:
        return Conflict(said)
    if any(s in low for s in ("could not resolve host", "failed to connect", "timed out",
                              "error: 50", "connection refused")):  # fmt: skip
        return Unavailable(said)
    return SwarmError(said)
