"""Which formats kb reads, and a check that a file's bytes agree with its extension.

The extension decides the parser, so an extension that lies (a PDF renamed .docx, an executable named
.txt) must be caught before parsing: the bytes are sniffed with libmagic and compared with what the
extension promises.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import magic

from ingest.errors import EmptyFile, FileTooLarge, TypeMismatch, UnsupportedType

Family = Literal["pdf", "image", "ooxml", "ole", "odf", "epub", "text", "rtf", "zip"]


@dataclass(frozen=True)
class FileKind:
    suffix: str
    family: Family
    # Legacy formats unstructured reads only after LibreOffice converts them.
    needs_libreoffice: bool = False
    paged: bool = False


_KINDS = [
    FileKind(".pdf", "pdf", paged=True),
    FileKind(".png", "image"),
    FileKind(".jpg", "image"),
    FileKind(".jpeg", "image"),
    FileKind(".tif", "image"),
    FileKind(".tiff", "image"),
    FileKind(".bmp", "image"),
    FileKind(".docx", "ooxml"),
    FileKind(".pptx", "ooxml", paged=True),
    FileKind(".xlsx", "ooxml", paged=True),
    FileKind(".doc", "ole", needs_libreoffice=True),
    FileKind(".ppt", "ole", needs_libreoffice=True, paged=True),
    FileKind(".msg", "ole"),
    FileKind(".odt", "odf", needs_libreoffice=True),
    FileKind(".rtf", "rtf", needs_libreoffice=True),
    FileKind(".epub", "epub"),
    FileKind(".txt", "text"),
    FileKind(".text", "text"),
    FileKind(".md", "text"),
    FileKind(".markdown", "text"),
    FileKind(".csv", "text"),
    FileKind(".tsv", "text"),
    FileKind(".html", "text"),
    FileKind(".htm", "text"),
    FileKind(".eml", "text"),
    FileKind(".zip", "zip"),
]
KINDS = {k.suffix: k for k in _KINDS}
SUPPORTED_SUFFIXES = frozenset(KINDS)

# libmagic MIME types that each family may legitimately come out as.
_FAMILY_MIMES: dict[Family, tuple[str, ...]] = {
    "pdf": ("application/pdf",),
    "image": ("image/",),
    "ooxml": ("application/vnd.openxmlformats-officedocument.", "application/zip", "application/octet-stream"),
    "ole": ("application/msword", "application/vnd.ms-", "application/x-ole-storage", "application/CDFV2"),
    "odf": ("application/vnd.oasis.opendocument.", "application/zip"),
    "epub": ("application/epub+zip", "application/zip"),
    "rtf": ("text/rtf", "application/rtf"),
    "zip": ("application/zip",),
    "text": ("text/", "message/", "application/json", "application/csv"),
}
# Bytes that are certainly not text, whatever the extension claims.
_BINARY_MIMES = ("application/pdf", "application/zip", "image/", "application/msword", "application/vnd.", "audio/",
                 "video/", "application/x-executable", "application/x-sharedlib", "application/x-dosexec",
                 "application/gzip", "application/x-")  # fmt: skip


def sniff(path: Path) -> str:
    return str(magic.from_file(str(path), mime=True))


def check_file(path: Path, *, max_bytes: int) -> FileKind:
    """The file's kind, or a LoadError saying exactly what is wrong with it."""
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        supported = " ".join(sorted(SUPPORTED_SUFFIXES))
        raise UnsupportedType(
            f"unsupported file type {path.suffix or '(no extension)'} ({path.name}); kb reads {supported}"
        )
    size = path.stat().st_size
    if size == 0:
        raise EmptyFile(f"{path.name} is empty")
    if size > max_bytes:
        raise FileTooLarge(f"{path.name} is {size / 1e6:.1f} MB, over the limit of {max_bytes / 1e6:.0f} MB")
    mime = sniff(path)
    if kind.family == "text":
        if mime.startswith(_BINARY_MIMES) and not mime.startswith(_FAMILY_MIMES["text"]):
            raise TypeMismatch(f"{path.name} is named {kind.suffix} but its content is {mime}")
        if not mime.startswith(_FAMILY_MIMES["text"]):
            _require_decodable(path)
    elif not mime.startswith(_FAMILY_MIMES[kind.family]):
        raise TypeMismatch(f"{path.name} is named {kind.suffix} but its content is {mime}")
    return kind


def _require_decodable(path: Path) -> None:
    # libmagic calls BOM-less UTF-16 "data"; accept text in any encoding a BOM or a decoder vouches for.
    head = path.read_bytes()[:65536]
    if head.startswith((codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF8)):
        return
    from charset_normalizer import from_bytes

    best = from_bytes(head).best()
    if best is None or str(best).count("\x00") > len(str(best)) // 100:
        raise TypeMismatch(f"{path.name} does not contain text in any encoding kb recognises")
