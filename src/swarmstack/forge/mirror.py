"""A plan's work on GitHub: the merge queue's pull requests and merges, with the control plane's
own credentials.

The local forge stays the source the agents work from (the git broker serves it, and no
token ever reaches a sandbox); a plan linked to a GitHub repository is mirrored there:

- **link** (``POST /v1/plans/{id}/github``): the repository is made if asked, and the
  integration branch is pushed to it — or fetched from it, when GitHub has it already, so
  work that landed there outside Swarm is what the agents build on;
- **publish**, when the queue takes a ticket up: its branch is pushed (forced: a fix attempt
  rewrites it) and its one pull request opened or brought up to date — title, body with the
  acceptance criteria, the agent's summary and the pull requests of its dependencies;
- **land**, once the checks passed on the merged tree: GitHub merges the pull request (only
  if its head is the one checked), and its integration branch comes back into the local forge;
- **sent back**: the pull request is told why (a conflict, failing checks) before the fix.

All of it is blocking I/O, called from the queue in a worker thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

from swarmstack.config import Settings
from swarmstack.errors import NotFound
from swarmstack.forge.github import GitHubRepo, GitHubSettings, RepoInfo
from swarmstack.forge.local import ticket_branch
from swarmstack.tickets.models import FixRequest, Plan, Ticket
from swarmstack.tickets.store import TicketStore, fix_reason


class GitHubMirror:
    def __init__(self, settings: Settings, store: TicketStore) -> None:
        self.settings = settings
        self.store = store
        self._repos: dict[str, GitHubRepo] = {}
        self._lock = threading.Lock()

    def repo(self, repository: str, *, create: bool = False) -> GitHubRepo:
        with self._lock:
            repo = self._repos.get(repository)
            if repo is None or (create and not repo.settings.create):
                settings = GitHubSettings.from_settings(self.settings, repository, create=create)
                repo = self._repos[repository] = GitHubRepo(settings)
            return repo

    def link(self, local: Path, branch: str, repository: str, *, create: bool) -> RepoInfo:
        """Make the GitHub repository ready for a plan whose integration branch is
        ``branch`` of the bare repository ``local``."""
        github = self.repo(repository, create=create)
        info = github.ensure_repo()
        try:
            github.fetch(local, branch)
        except NotFound:  # GitHub has no such branch (a new repository): it gets ours
            github.push(local, [branch])
        return info

    def publish(self, plan: Plan, ticket: Ticket, base: str, local: Path) -> int:
        """Push the ticket's branch and open or update its pull request; its number."""
        assert plan.github is not None
        github = self.repo(plan.github)
        github.push(local, [ticket_branch(ticket.id)], force=True)
        known = self._pull_numbers(plan.id)
        pull = github.open_or_update_pull(
            ticket,
            base=base,
            number=known.get(ticket.key),
            depends={key: known[key] for key in ticket.depends_on if key in known},
        )
        if known.get(ticket.key) != pull.number:
            self.store.link_pull_request(ticket.id, number=pull.number, url=pull.html_url)
        return pull.number

    def land(
        self, plan: Plan, number: int, head_sha: str, message: str, base: str, local: Path
    ) -> str:
        """GitHub merges the pull request (if its head is still ``head_sha``); its
        integration branch comes back into the local forge. The merge commit's sha."""
        assert plan.github is not None
        github = self.repo(plan.github)
        sha = github.merge_pull(number, sha=head_sha, message=message)
        github.fetch(local, base)
        return sha

    def sync(self, plan: Plan, base: str, local: Path) -> None:
        """The integration branch as GitHub has it, before a merge is made on it."""
        assert plan.github is not None
        self.repo(plan.github).fetch(local, base)

    def sent_back(self, plan: Plan, ticket: Ticket, fix: FixRequest) -> None:
        """Tell the pull request why its ticket goes back to an agent."""
        assert plan.github is not None
        number = self._pull_numbers(plan.id).get(ticket.key)
        if number is None:
            return
        text = f"Swarm sends {ticket.key} back for a fix: {fix_reason(fix)}."
        if fix.details.strip():
            text += "\n\n```\n" + fix.details.strip()[-3_000:] + "\n```"
        self.repo(plan.github).comment(number, text)

    def _pull_numbers(self, plan_id: int) -> dict[str, int]:
        """The GitHub numbers of the plan's pull requests, by ticket key."""
        keys = {t.id: t.key for t in self.store.list_tickets(plan_id=plan_id)}
        return {
            keys[p.ticket_id]: p.number
            for p in self.store.pull_requests(plan_id)
            if p.number is not None and p.ticket_id in keys
        }
