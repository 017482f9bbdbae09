"""Multipart uploads streamed to disk as they arrive, file by file, within the configured limits.

Nothing is held whole in memory and nothing goes through a temporary folder elsewhere: each file part
is written straight under the job's uploads folder (`<uploads>/<job id>/files/<name>`), counted as it
comes, and refused with 413 the moment it passes the per-file limit or a file beyond the per-request
count begins. Whatever was written by a refused or broken request is removed.

A file's name becomes its document id, so it is checked like one (`ingest.sources.safe_doc_id`): a
relative path (a folder upload's `teamA/policy.md`) is kept, a name that could point outside the
folder (`..`, absolute, a drive letter, control characters) is refused with 400.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from io import BufferedWriter
from pathlib import Path
from typing import TYPE_CHECKING

from anyio import to_thread
from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import InvalidRequest, PayloadTooLarge
from ingest.errors import UnsafeName
from ingest.sources import safe_doc_id

if TYPE_CHECKING:  # a TypedDict the library declares for type checkers only
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024
# Room for the multipart framing (boundaries, part headers) and the form fields beside the files.
FRAMING_BYTES = 64 * 1024
FRAMING_PER_FILE = 2 * 1024


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int
    max_files: int

    def body_bytes(self) -> int:
        """The most a whole request within these limits can take (for the body-size middleware)."""
        return self.max_files * (self.max_file_bytes + FRAMING_PER_FILE) + FRAMING_BYTES


@dataclass(frozen=True)
class ReceivedFile:
    field: str
    # The checked relative name: the document id, unless the request names one.
    name: str
    path: Path
    size: int


@dataclass
class Received:
    folder: Path
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[ReceivedFile] = field(default_factory=list)

    def field(self, name: str) -> str | None:
        """The last value of a form field; None when the form has no such field."""
        values = self.fields.get(name)
        return values[-1] if values else None

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


async def receive_upload(request: Request, folder: Path, limits: UploadLimits) -> Received:
    """Stream the request's multipart body: files under `folder/files`, fields into memory (small)."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest("send the files as multipart/form-data (curl -F files=@report.pdf)")
    receiver = _Receiver(folder, limits)
    parser = MultipartParser(boundary, receiver.callbacks())
    try:
        async for chunk in request.stream():
            # The parser's callbacks write to disk: off the event loop.
            await to_thread.run_sync(parser.write, chunk)
        await to_thread.run_sync(parser.finalize)
        receiver.check_complete()
    except MultipartParseError as exc:
        receiver.abort()
        raise InvalidRequest(f"the multipart body is malformed: {exc}") from None
    except BaseException:
        receiver.abort()
        raise
    return receiver.received


class _Receiver:
    def __init__(self, folder: Path, limits: UploadLimits) -> None:
        self._limits = limits
        self.received = Received(folder=folder)
        self._names: set[str] = set()
        self._fields = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._field_name = ""
        self._data = bytearray()
        self._file: BufferedWriter | None = None
        self._file_name = ""
        self._file_path: Path | None = None
        self._size = 0
        self._in_part = False

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin, "on_part_data": self._part_data, "on_part_end": self._part_end,
            "on_header_field": self._header_field, "on_header_value": self._header_value_data,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_finished,
        }  # fmt: skip

    def _part_begin(self) -> None:
        self._disposition, self._data, self._file, self._file_path, self._size = b"", bytearray(), None, None, 0
        self._field_name, self._file_name, self._in_part = "", "", True

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidRequest('every multipart part needs a Content-Disposition with a "name"')
        self._field_name = _text(options[b"name"], "a field name")
        raw = options.get(b"filename")
        if raw is None:
            self._fields += 1
            if self._fields > MAX_FIELDS:
                raise InvalidRequest(f"at most {MAX_FIELDS} form fields are allowed")
            return
        if not raw:
            return  # a browser's empty file input: no file
        if len(self.received.files) >= self._limits.max_files:
            raise PayloadTooLarge(f"at most {self._limits.max_files} files may be uploaded in one request")
        name = _file_name(_text(raw, "a file name"))
        if name in self._names:
            raise InvalidRequest(f"two files are named {name!r}; each file needs its own name")
        self._names.add(name)
        path = self.received.folder / "files" / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("xb")
        except OSError as exc:
            raise InvalidRequest(f"cannot store a file named {name!r}: {exc.strerror}") from None
        self._file_name, self._file_path = name, path

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        size = end - start
        if self._file is not None:
            self._size += size
            if self._size > self._limits.max_file_bytes:
                mb = self._limits.max_file_bytes / (1024 * 1024)
                raise PayloadTooLarge(f"{self._file_name} is larger than the upload limit of {mb:g} MB per file")
            self._file.write(data[start:end])
        elif self._field_name and not self._file_name:
            if len(self._data) + size > MAX_FIELD_BYTES:
                raise PayloadTooLarge(f"the form field {self._field_name!r} is longer than {MAX_FIELD_BYTES} bytes")
            self._data += data[start:end]

    def _part_end(self) -> None:
        self._in_part = False
        if self._file is not None and self._file_path is not None:
            self._file.close()
            self._file = None
            self.received.files.append(
                ReceivedFile(field=self._field_name, name=self._file_name, path=self._file_path, size=self._size)
            )
        elif self._field_name and not self._file_name:
            self.received.fields.setdefault(self._field_name, []).append(_text(bytes(self._data), "a form field"))

    def check_complete(self) -> None:
        if self._in_part or self._file is not None:
            raise InvalidRequest("the multipart body ended in the middle of a part")

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.received.discard()


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{what} in the upload is not valid UTF-8") from None


def _file_name(raw: str) -> str:
    """A file name as a document id: a relative path with no way out of its folder, else 400."""
    try:
        name = safe_doc_id(raw)
    except UnsafeName as exc:
        raise InvalidRequest(f"refused file name: {exc}") from None
    if any(part.startswith(".") for part in name.split("/")):
        raise InvalidRequest(
            f"refused file name {raw[:80]!r}: hidden files (a name starting with '.') are not ingested"
        )
    if any(len(part.encode("utf-8")) > 255 for part in name.split("/")):
        raise InvalidRequest(f"refused file name {raw[:80]!r}: a path segment is longer than 255 bytes")
    return name
