"""This package's own source, as a VM that runs an older runner is given it."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import swarmstack


def package_digest() -> str:
    """A digest of this package's source: which runner an image carries."""
    root = Path(swarmstack.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def package_tarball() -> bytes:
    """This package's source as a tar.gz of ``swarmstack/…``."""
    root = Path(swarmstack.__file__).resolve().parent
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for path in sorted(root.rglob("*")):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            tar.add(path, arcname=str(Path("swarmstack") / path.relative_to(root)))
    return out.getvalue()
