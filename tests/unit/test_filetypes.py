"""File-type checks before parsing: magic bytes against the extension, sizes, and text-layer quality."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.errors import EmptyFile, FileTooLarge, TypeMismatch, UnsupportedType
from ingest.filetypes import check_file
from ingest.pdf import text_layer_quality
from tests.conftest import DATA


def test_real_files_pass(tmp_path: Path) -> None:
    assert check_file(DATA / "expense-policy.pdf", max_bytes=10**8).family == "pdf"
    assert check_file(DATA / "it-security-policy.docx", max_bytes=10**8).family == "ooxml"
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("Plain text in UTF-16 without a byte-order mark.".encode("utf-16-be"))
    assert check_file(utf16, max_bytes=10**8).family == "text"


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("report.pdf", b"", EmptyFile),
        ("report.docx", (DATA / "expense-policy.pdf").read_bytes(), TypeMismatch),
        ("notes.txt", (DATA / "expense-policy.pdf").read_bytes(), TypeMismatch),
        ("scan.png", b"%PDF-1.4 not an image", TypeMismatch),
        ("tool.exe", b"MZ" + b"\0" * 64, UnsupportedType),
        ("noext", b"hello", UnsupportedType),
        ("big.md", b"# a\n" * 300_000, FileTooLarge),
    ],
)
def test_bad_files_are_named_precisely(tmp_path: Path, name: str, content: bytes, error: type[Exception]) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(error):
        check_file(path, max_bytes=1_000_000)


def test_text_layer_quality() -> None:
    assert text_layer_quality("An ordinary sentence of English.") == 1.0
    assert text_layer_quality("普通的中文句子，没有问题。") == 1.0
    assert text_layer_quality("") == 0.0
    assert text_layer_quality("\ue001\ue002\ue003 ab") < 0.5
    assert text_layer_quality("TÃ©lÃ©phone Ã  cÃ´tÃ©") < 0.9
    assert text_layer_quality("\ufffd\ufffd\ufffd text") < 0.8
