"""What an ingest request expands to: files with safe document ids, folders walked, zip archives unpacked.

Document ids come from the admin or from the path relative to the folder given (so `teamA/policy.md`
and `teamB/policy.md` of one folder are two documents). Each source also says where it comes from (its
origin: the file's absolute path, or the archive's and the member's name): a file of another origin
mapping to an id that a document already has is a conflict (`doc_id_conflict`), not a replace. An id that could escape
(`..`, absolute, drive letters, control characters) is refused, and so is an archive member with such a
name. Archives are unpacked with limits on member count, total size and compression ratio (zip bombs),
and archives inside archives are refused rather than unpacked. A symbolic link in a folder that points
outside the folder is not followed but reported as failed (`unsafe_link`): a folder must not pull in
files its owner never put there.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ingest.errors import CorruptFile, EncryptedFile, LoadError, UnsafeArchive, UnsafeLink, UnsafeName

_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_ARCHIVES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar")


@dataclass(frozen=True)
class Source:
    path: Path
    doc_id: str
    error: LoadError | None = None
    origin: str = ""
    archive: Path | None = None  # the zip archive a member came out of


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 10_000
    max_total_bytes: int = 1024 * 1024 * 1024
    max_ratio: float = 100.0  # uncompressed / compressed, per member


def safe_doc_id(raw: str) -> str:
    """A normalised document id, or UnsafeName when it could point outside its folder."""
    text = raw.replace("\\", "/").strip()
    if not text or _BAD_CHARS.search(text):
        raise UnsafeName(f"unusable document id {raw!r}: empty or contains control characters")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise UnsafeName(f"unusable document id {raw!r}: absolute paths are not allowed")
    parts = [p for p in PurePosixPath(text).parts if p not in ("", ".")]
    if any(p == ".." for p in parts) or not parts:
        raise UnsafeName(f"unusable document id {raw!r}: '..' segments are not allowed")
    doc_id = "/".join(parts)
    if len(doc_id) > 512:
        raise UnsafeName(f"document id too long ({len(doc_id)} characters, at most 512)")
    return doc_id


def expand_sources(
    paths: Iterable[Path],
    *,
    doc_id: str | None = None,
    extract_dir: Path | None = None,
    limits: ArchiveLimits = ArchiveLimits(),
) -> Iterator[Source]:
    """Every file to ingest. `doc_id` names a single file explicitly; zips unpack under `extract_dir`."""
    for path in paths:
        if path.is_dir():
            for file, error in _folder_files(path):
                raw_id = file.relative_to(path).as_posix()
                if error is not None:
                    yield Source(path=file, doc_id=raw_id[:512], error=error, origin=_origin(file))
                else:
                    yield from _one(file, raw_id, extract_dir, limits)
        else:
            yield from _one(path, doc_id or path.name, extract_dir, limits)


def _origin(path: Path) -> str:
    return str(path.absolute())


def _folder_files(folder: Path) -> list[tuple[Path, UnsafeLink | None]]:
    """The files under `folder` in path order, hidden ones left out. Links are not followed out of it: one
    that points outside comes with an UnsafeLink error, one to a folder inside is skipped (its files come
    under their own path), one to a file inside is a file."""
    root = folder.resolve()
    found: list[tuple[Path, UnsafeLink | None]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in [*dirnames, *filenames]:
            entry = here / name
            if name.startswith("."):
                continue
            if entry.is_symlink():
                target = entry.resolve()
                if not target.is_relative_to(root):
                    where = entry.relative_to(folder).as_posix()
                    found.append((entry, UnsafeLink(f"{where} is a link to {target}, outside {folder}: not followed")))
                elif name in filenames and target.is_file():
                    found.append((entry, None))
            elif name in filenames and entry.is_file():
                found.append((entry, None))
    return sorted(found, key=lambda pair: pair[0])


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _one(path: Path, raw_id: str, extract_dir: Path | None, limits: ArchiveLimits) -> Iterator[Source]:
    try:
        doc_id = safe_doc_id(raw_id)
    except UnsafeName as exc:
        yield Source(path=path, doc_id=raw_id[:512], error=exc, origin=_origin(path))
        return
    if path.suffix.lower() != ".zip":
        yield Source(path=path, doc_id=doc_id, origin=_origin(path))
        return
    target = extract_dir or Path(tempfile.mkdtemp(prefix="kb-unzip-"))
    try:
        for source in unpack_zip(path, target / doc_id.replace("/", "__"), doc_id, limits):
            member = source.doc_id.removeprefix(doc_id + "/")
            yield Source(source.path, source.doc_id, source.error, origin=f"{_origin(path)}#{member}", archive=path)
    except LoadError as exc:
        yield Source(path=path, doc_id=doc_id, error=exc, origin=_origin(path))


def unpack_zip(archive: Path, into: Path, prefix: str, limits: ArchiveLimits) -> Iterator[Source]:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) > limits.max_members:
                raise UnsafeArchive(f"{archive.name} has {len(members)} files, more than {limits.max_members}")
            total = sum(m.file_size for m in members)
            if total > limits.max_total_bytes:
                raise UnsafeArchive(
                    f"{archive.name} unpacks to {total / 1e6:.0f} MB, over {limits.max_total_bytes / 1e6:.0f} MB"
                )
            for m in members:
                if m.compress_size and m.file_size / m.compress_size > limits.max_ratio:
                    raise UnsafeArchive(
                        f"{archive.name}: {m.filename} expands {m.file_size / m.compress_size:.0f}x (a zip bomb?)"
                    )
            sources = []
            for m in members:
                try:
                    name = safe_doc_id(m.filename)
                except UnsafeName as exc:
                    sources.append(Source(path=archive, doc_id=f"{prefix}/{m.filename}"[:512], error=exc))
                    continue
                if _hidden(Path(name)) or name.startswith("__MACOSX/"):
                    continue
                if name.lower().endswith(_ARCHIVES):
                    sources.append(
                        Source(path=archive, doc_id=f"{prefix}/{name}",
                               error=UnsafeArchive(f"{name}: archives inside archives are not unpacked"))
                    )  # fmt: skip
                    continue
                out = into / name
                out.parent.mkdir(parents=True, exist_ok=True)
                # Copy with a hard cap: the sizes in the zip directory are claims, not facts.
                with zf.open(m) as src, out.open("wb") as dst:
                    remaining = m.file_size + 1
                    while chunk := src.read(min(1 << 20, remaining)):
                        remaining -= len(chunk)
                        if remaining <= 0:
                            raise UnsafeArchive(f"{archive.name}: {m.filename} is larger than its header says")
                        dst.write(chunk)
                sources.append(Source(path=out, doc_id=f"{prefix}/{name}"))
    except RuntimeError as exc:  # zipfile's way of saying a member is password-protected
        raise EncryptedFile(f"{archive.name}: {exc}") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise CorruptFile(f"{archive.name} is not a readable zip archive: {exc}") from exc
    yield from sources
