"""The original bytes of every version that came through the uploads folder, kept by content hash.

Uploaded files (and the members of uploaded or ingested zip archives) live in the uploads folder only
until their job has run; a worker then removes the job's folder. So that a version's original can still
be downloaded, or ingested again to restore it, its bytes are kept here first, under
<root>/<kb>/<sha256[:2]>/<sha256>: the same bytes uploaded twice are kept once. A hard link when the
uploads folder is on the same file system (no copy), else a copy.

Files ingested from a folder on the server are not copied: their version's `source` path names them.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from core.names import KB_NAME
from ingest.versions import sha256_file


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, kb: str, sha256: str) -> Path:
        if not KB_NAME.match(kb) or len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a knowledge base and SHA-256: {kb!r}, {sha256!r}")
        return self.root / kb / sha256[:2] / sha256

    def keep(self, kb: str, path: Path, *, sha256: str | None = None) -> str:
        """Keep the bytes of `path` (hashed here unless given); returns their SHA-256."""
        sha = sha256 or sha256_file(path)
        target = self.path_for(kb, sha)
        if target.exists():
            return sha
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written under a temporary name and renamed: a reader never sees a part of the file.
        partial = target.with_name(f".{sha}.{uuid.uuid4().hex}")
        try:
            try:
                os.link(path, partial)
            except OSError:
                shutil.copyfile(path, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return sha

    def find(self, kb: str, sha256: str) -> Path | None:
        try:
            target = self.path_for(kb, sha256)
        except ValueError:
            return None
        return target if target.is_file() else None

    def drop(self, kb: str) -> None:
        """Forget every file of a knowledge base (it is being deleted)."""
        if KB_NAME.match(kb):
            shutil.rmtree(self.root / kb, ignore_errors=True)
