"""Bad input through the job path: each bad file fails with a specific code, everything else is indexed."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.container import Container
from app.settings import Settings
from ingest.errors import UnsafeName
from ingest.jobs import JobView
from ingest.sources import safe_doc_id
from tests.conftest import DATA, EVERYTHING
from tests.integration import docgen
from tests.integration.conftest import write

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A knowledge base whose size limit is 1 MB, so the oversize case needs no huge file."""
    home = tmp_path_factory.mktemp("kbbad")
    settings = Settings(home=home, models_dir=home / "models", ingest={"max_file_mb": 1, "purge_grace_s": 0.2})
    c = Container(settings)
    yield c
    c.store.close()


def run_job(c: Container, paths: list[Path], kb: str = "bad", **kwargs: object) -> JobView:
    job_id = c.documents.submit(paths, kb=kb, uploads_dir=c.settings.home / "uploads", **kwargs)  # type: ignore[arg-type]
    c.worker().run(until_idle=True)
    view = c.jobs.get(job_id)
    assert view is not None
    return view


def codes(view: JobView) -> dict[str, str]:
    return {i.doc_id: i.error_code or i.status for i in view.items}


def test_each_bad_file_fails_with_its_own_reason(small: Container, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write(folder / "good.md", "# Parking\n\nThe car park opens at seven and closes at midnight.\n")
    write(folder / "empty.txt", "")
    (folder / "lying.docx").write_bytes((DATA / "expense-policy.pdf").read_bytes())
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 64)
    docgen.encrypted_pdf(folder / "locked.pdf")
    (folder / "truncated.pdf").write_bytes((DATA / "expense-policy.pdf").read_bytes()[:700])
    (folder / "broken.docx").write_bytes(b"PK\x03\x04" + b"\x00garbage" * 200)
    (folder / "huge.txt").write_text("big file line\n" * 90_000)  # ~1.3 MB, over the 1 MB limit
    (folder / "program.exe").write_bytes(b"MZ\x90\x00" + b"\x00" * 100)
    view = run_job(small, [folder])
    assert codes(view) == {
        "good.md": "indexed",
        "empty.txt": "empty_file",
        "lying.docx": "type_mismatch",
        "binary.txt": "type_mismatch",
        "locked.pdf": "encrypted",
        "truncated.pdf": "corrupt",
        "broken.docx": "corrupt",
        "huge.txt": "too_large",
        "program.exe": "unsupported_type",
    }
    errors = {i.doc_id: i.error for i in view.items}
    assert "password" in errors["locked.pdf"] and "1 MB" in errors["huge.txt"]
    assert view.job.state == "done" and view.job.files_failed == 8
    # Nothing of the bad files reached the index or stays half-registered as current.
    assert {c.doc_id for c in small.store.document_chunks("bad", "good.md")} == {"good.md"}
    for doc_id in ("lying.docx", "locked.pdf", "truncated.pdf", "broken.docx"):
        assert small.store.document_chunks("bad", doc_id) == []
        assert small.registry.current_version("bad", doc_id) is None


def test_a_folder_of_100_with_5_bad_ingests_95_and_reports_5(small: Container, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    for i in range(95):
        write(folder / f"note-{i:03d}.txt", f"Note {i}: meeting room {i} has {i % 12 + 2} seats and a screen.\n")
    for i in range(5):
        write(folder / f"zz-bad-{i}.md", "")
    view = run_job(small, [folder], kb="many")
    statuses = [i.status for i in view.items]
    assert statuses.count("indexed") == 95 and statuses.count("failed") == 5
    assert {i.doc_id for i in view.items if i.status == "failed"} == {f"zz-bad-{i}.md" for i in range(5)}
    assert small.store.count("many") == 95
    # Every indexed note is searchable: one named by its number comes first, with its own text.
    r = small.query.search("How many seats does meeting room 42 have?", flt=EVERYTHING, kb="many", top_k=5)
    assert r.hits[0].chunk.doc_id == "note-042.txt", [h.chunk.doc_id for h in r.hits]
    assert "meeting room 42 has 8 seats" in r.hits[0].chunk.text


def test_path_traversal_ids_are_refused() -> None:
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../b", "C:\\windows\\x", "ok\x00name", ""):
        with pytest.raises(UnsafeName):
            safe_doc_id(bad)
    assert safe_doc_id("./team/handbook.md") == "team/handbook.md"
    assert safe_doc_id("team\\policies\\leave.md") == "team/policies/leave.md"


def test_unsafe_doc_id_fails_its_file_only(small: Container, tmp_path: Path) -> None:
    f = write(tmp_path / "x.md", "# X\n\nSomething about badges.\n")
    view = run_job(small, [f], doc_id="../../outside.md")
    assert codes(view) == {"../../outside.md": "unsafe_name"}


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_zip_archives_unpack_safely(small: Container, tmp_path: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("deep.md", "# Deep\n\nnested\n")
    archive = _zip(
        tmp_path / "bundle.zip",
        {
            "policies/wifi.md": b"# Wi-Fi\n\nThe guest Wi-Fi password changes every Monday.\n",
            "../escape.md": b"# Escape\n\nshould never be written\n",
            "nested.zip": inner.getvalue(),
        },
    )
    view = run_job(small, [archive], kb="zips")
    assert codes(view) == {
        "bundle.zip/policies/wifi.md": "indexed",
        "bundle.zip/../escape.md": "unsafe_name",
        "bundle.zip/nested.zip": "unsafe_archive",
    }
    assert not (small.settings.home / "escape.md").exists()
    assert not any(p.name == "escape.md" for p in small.settings.home.rglob("*"))


def test_zip_bomb_is_refused(small: Container, tmp_path: Path) -> None:
    bomb = _zip(tmp_path / "bomb.zip", {"zeros.txt": b"0" * 30_000_000})
    view = run_job(small, [bomb], kb="zips")
    assert codes(view) == {"bomb.zip": "unsafe_archive"}
    assert "expands" in view.items[0].error
