"""Why a file could not be ingested, in words an admin can act on, with a stable code for machines."""

from __future__ import annotations


class LoadError(ValueError):
    """A file that cannot be ingested. `code` is stable (API/CLI/JSON); the message is for people."""

    code = "unreadable"


class EmptyFile(LoadError):
    code = "empty_file"


class FileTooLarge(LoadError):
    code = "too_large"


class UnsupportedType(LoadError):
    code = "unsupported_type"


class TypeMismatch(LoadError):
    """The extension says one format, the bytes say another."""

    code = "type_mismatch"


class EncryptedFile(LoadError):
    code = "encrypted"


class CorruptFile(LoadError):
    code = "corrupt"


class NoText(LoadError):
    code = "no_text"


class ConverterMissing(LoadError):
    """A legacy office format needs LibreOffice, which is not installed."""

    code = "converter_missing"


class UnsafeName(LoadError):
    """A document id or archive member that would escape its folder (`..`, absolute paths)."""

    code = "unsafe_name"


class UnsafeArchive(LoadError):
    """A zip bomb, too many members, or nested archives."""

    code = "unsafe_archive"


class UnsafeLink(LoadError):
    """A symbolic link inside an ingested folder that points outside it: not followed."""

    code = "unsafe_link"


class DocIdConflict(LoadError):
    """Another file (another path, archive member or upload name) already holds this document id."""

    code = "doc_id_conflict"


class TooManyPixels(FileTooLarge):
    """An image frame or a page to render is over the pixel budget (`ingest.max_image_pixels`)."""


class WorkerCrashed(LoadError):
    """The file took its worker down (killed, out of memory) on every attempt."""

    code = "worker_crashed"
