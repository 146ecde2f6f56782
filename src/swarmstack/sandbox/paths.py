"""Workspace paths as the control plane accepts them from callers, before any sandbox sees one.

The guest agent has the last word — it resolves symlinks inside the sandbox and refuses any
path that leads out (:func:`swarmstack.sandbox.guest.resolve`) — but a path that cannot be
meant honestly is refused here already, with a reason:

* absolute paths, ``..`` components, NUL and other control characters;
* backslashes and percent escapes (``%2e``): a path arrives decoded once, so these are a
  second encoding or another system's separator, and one reading of them could climb out.
"""

from __future__ import annotations

import re

from swarmstack.sandbox.base import PathRefused

MAX_PATH = 4096
MAX_NAME = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")


def check_path(path: str, *, allow_root: bool = False) -> str:
    """``path`` if it is a plain relative path in the workspace, else :class:`PathRefused`.
    ``allow_root``: the empty path and ``.`` (the workspace itself) are accepted."""
    if _CONTROL.search(path):
        raise PathRefused(f"{path!r} holds a NUL or another control character")
    if len(path) > MAX_PATH:
        raise PathRefused(f"a path is at most {MAX_PATH} characters")
    if path.startswith("/"):
        raise PathRefused(f"{path!r} is absolute: paths are relative to the workspace")
    if "\\" in path:
        raise PathRefused(f"{path!r} holds a backslash: separate directories with '/'")
    if _PERCENT.search(path):
        raise PathRefused(f"{path!r} holds a percent escape: send the path decoded")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathRefused(f"{path!r} climbs out with '..'")
    if any(len(p) > MAX_NAME for p in parts):
        raise PathRefused(f"a path component is at most {MAX_NAME} characters")
    if not parts and not allow_root:
        raise PathRefused("the path names the workspace itself; name a file in it")
    return path


def check_pathspec(path: str) -> str:
    """A path handed to git (which runs with literal pathspecs): a workspace path that is not
    pathspec magic (``:``) and does not look like an option (``-``; ``./-x`` is fine)."""
    if path.startswith(":"):
        raise PathRefused(f"{path!r} starts with ':' (pathspec magic): name plain paths")
    if path.startswith("-"):
        raise PathRefused(f"{path!r} starts with '-', as an option would: name it './{path}'")
    return check_path(path)
