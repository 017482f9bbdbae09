"""A job's life: document ids per knowledge base, cancellation, failures that stay with their file, the
pixel budget, and a purge that keeps up with a long job. Real SQLite, Milvus Lite and MiniLM."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pypdf import PdfWriter

from app.access.roles import Role
from app.container import Container
from app.settings import Settings
from ingest.errors import TooManyPixels
from ingest.ocr import image_frames
from ingest.worker import JobWorker
from tests.integration.conftest import write
from tests.integration.gates import assert_store_matches_registry, gate_embedder, gated, in_thread

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("minilm")
    return Container(Settings(home=root, models_dir=root / "models")).embedder


def make(root: Path, real: Any, **ingest: Any) -> Container:
    """A container on a fresh KB_HOME, with a gated embedder around the module's MiniLM."""
    embedding = {"batch_size": ingest.pop("batch_size", 64)}
    settings = Settings(
        home=root, models_dir=root / "models", ingest=ingest, embedding=embedding,  # type: ignore[arg-type]
        reranker={"enabled": False}, api={"ui_enabled": False},  # type: ignore[arg-type]
    )  # fmt: skip
    c = Container(settings)
    gate_embedder(c, real)
    return c


@pytest.fixture
def kb_home(tmp_path: Path, minilm: Any) -> Iterator[Container]:
    c = make(tmp_path / "var", minilm, purge_grace_s=0, worker_in_api=False)
    yield c
    c.store.close()


def run_job(c: Container, paths: list[Path], kb: str, **kwargs: Any) -> Any:
    job_id = c.documents.submit(paths, kb=kb, uploads_dir=c.uploads_dir, **kwargs)
    assert c.worker().run(until_idle=True) >= 1
    view = c.jobs.get(job_id)
    assert view is not None
    return view


def test_files_of_one_name_in_different_folders_are_different_documents(kb_home: Container, tmp_path: Path) -> None:
    c = kb_home
    folder = tmp_path / "shared"
    write(folder / "teamA" / "policy.md", "# Policy A\n\nTeam A works from the third floor.\n")
    write(folder / "teamB" / "policy.md", "# Policy B\n\nTeam B works from the fifth floor.\n")
    view = run_job(c, [folder], "ids")
    assert [(i.doc_id, i.status) for i in view.items] == [
        ("teamA/policy.md", "indexed"),
        ("teamB/policy.md", "indexed"),
    ]
    texts = {
        d: " ".join(ch.text for ch in c.store.document_chunks("ids", d)) for d in ("teamA/policy.md", "teamB/policy.md")
    }
    assert "third floor" in texts["teamA/policy.md"] and "fifth floor" in texts["teamB/policy.md"]


def test_a_file_of_another_origin_does_not_replace_a_document_unless_named(kb_home: Container, tmp_path: Path) -> None:
    c = kb_home
    first = write(tmp_path / "a" / "policy.md", "# Policy\n\nVisitors sign in at the front desk.\n")
    second = write(tmp_path / "b" / "policy.md", "# Policy\n\nVisitors are escorted at all times.\n")
    assert [i.status for i in run_job(c, [first], "origins").items] == ["indexed"]
    clash = run_job(c, [second], "origins")
    assert [(i.status, i.error_code) for i in clash.items] == [("failed", "doc_id_conflict")]
    assert "front desk" in c.store.document_chunks("origins", "policy.md")[0].text
    # Two paths of one job that map to one id: the first keeps it, the second is the conflict.
    both = run_job(c, [write(tmp_path / "c" / "memo.md", "# Memo\n\nOne.\n"),
                       write(tmp_path / "d" / "memo.md", "# Memo\n\nTwo.\n")], "origins")  # fmt: skip
    assert [(i.status, i.error_code) for i in both.items] == [("indexed", ""), ("failed", "doc_id_conflict")]
    # Naming the id is asking for the replace.
    named = run_job(c, [second], "origins", doc_id="policy.md")
    assert [i.status for i in named.items] == ["indexed"]
    assert "escorted" in c.store.document_chunks("origins", "policy.md")[-1].text
    assert_store_matches_registry(c, "origins")


def test_an_exception_in_one_file_fails_that_file_not_the_job(tmp_path: Path, minilm: Any) -> None:
    # One chunk per batch: a failed batch fails the files in it, and here that is b.md alone.
    c = make(tmp_path / "var", minilm, purge_grace_s=0, batch_size=1)
    c.embedder.explode.add("EXPLODES")  # type: ignore[attr-defined]
    folder = tmp_path / "mixed"
    write(folder / "a.md", "# A\n\nThe canteen opens at eight.\n" * 30)
    write(folder / "b.md", "# B\n\nEXPLODES when embedded.\n" * 30)
    write(folder / "c.md", "# C\n\nThe gym closes at ten.\n" * 30)
    view = run_job(c, [folder], "explode")
    assert view.job.state == "done"
    statuses = {i.doc_id: (i.status, i.error_code) for i in view.items}
    assert statuses == {"a.md": ("indexed", ""), "b.md": ("failed", "internal_error"), "c.md": ("indexed", "")}
    assert_store_matches_registry(c, "explode")
    c.store.close()


def test_cancel_a_queued_job(kb_home: Container, tmp_path: Path) -> None:
    c = kb_home
    job_id = c.documents.submit([write(tmp_path / "q.md", "# Q\n\nQueued.\n")], kb="cancel", uploads_dir=c.uploads_dir)
    assert c.documents.cancel_job(job_id) == "cancelled"
    assert c.worker().run(until_idle=True) == 0
    info = c.documents.job(job_id)
    assert info is not None and info.state == "cancelled" and info.finished
    assert [d.status for d in info.documents] == ["cancelled"]
    assert c.registry.documents("cancel") == []


def test_cancel_a_running_job_rolls_back_the_file_under_way(tmp_path: Path, minilm: Any) -> None:
    c = make(tmp_path / "var", minilm, purge_grace_s=0, chunk_tokens=48, batch_size=4)
    folder = tmp_path / "slow"
    for i, label in enumerate(["first", "second", "CANCEL-HERE"]):
        write(folder / f"{i}.md", "".join(f"## Part {n}\n\n{label} file, section {n}: the rota changes weekly.\n\n"
                                           for n in range(12)))  # fmt: skip
    gate = gated(c, "CANCEL-HERE")
    job_id = c.documents.submit([folder], kb="cancel", uploads_dir=c.uploads_dir)
    worker = JobWorker(
        jobs=c.jobs, pipeline=c.ingest, versions=c.versions, uploads_dir=c.uploads_dir, progress_every_s=0
    )
    thread, errors = in_thread(lambda: worker.run(until_idle=True))
    assert gate.reached.wait(120)
    assert c.documents.cancel_job(job_id) == "cancelling"
    gate.go.set()
    thread.join(120)
    assert not errors, errors
    info = c.documents.job(job_id)
    assert info is not None and info.state == "cancelled", info
    statuses = [d.status for d in info.documents]
    assert statuses[0] == "indexed" and statuses[-1] == "cancelled", statuses
    # What finished stays published; the version under way was rolled back, nothing half-indexed.
    last = c.registry.versions("cancel", "2.md")
    assert [v.status for v in last] == ["cancelled"]
    assert c.store.document_chunks("cancel", "2.md") == []
    assert_store_matches_registry(c, "cancel")
    c.store.close()


def test_the_cancel_endpoint(kb_home: Container, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    c = kb_home
    editor = c.keys.create(name="ed", role=Role.editor, groups=[], kbs=["mine"])
    job_id = c.documents.submit([write(tmp_path / "e.md", "# E\n\nE.\n")], kb="mine", uploads_dir=c.uploads_dir)
    other = c.documents.submit([write(tmp_path / "f.md", "# F\n\nF.\n")], kb="theirs", uploads_dir=c.uploads_dir)
    with TestClient(create_app(c.settings, c)) as client:
        auth = {"Authorization": f"Bearer {editor.secret}"}
        assert client.delete(f"/jobs/{'0' * 32}", headers=auth).status_code == 404
        refused = client.delete(f"/jobs/{other}", headers=auth)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        done = client.delete(f"/jobs/{job_id}", headers=auth)
        assert done.status_code == 200 and done.json() == {"job_id": job_id, "state": "cancelled"}
        assert client.delete(f"/jobs/{job_id}").status_code == 401
    assert c.jobs.get(other).job.state == "queued"  # type: ignore[union-attr]


def test_a_long_job_purges_as_it_goes(tmp_path: Path, minilm: Any) -> None:
    batch = 4
    c = make(tmp_path / "var", minilm, purge_grace_s=0.2, batch_size=batch)
    folder = tmp_path / "many"
    for i in range(30):
        write(folder / f"{i:02}.md", f"# Note {i}\n\nRoom {i} is booked on Mondays.\n")
    assert all(r.status == "indexed" for r in c.ingest.ingest_paths([folder], kb="long"))
    for i in range(30):
        write(folder / f"{i:02}.md", f"# Note {i}\n\nRoom {i} is booked on Tuesdays now.\n")
    time.sleep(0.5)
    c.versions.purge("long")
    c.embedder.delay_s = 0.15  # type: ignore[attr-defined]  # the job takes a few seconds, not one
    sizes: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            sizes.append(len(c.registry.hidden_versions("long")))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        job_id = c.documents.submit([folder], kb="long", uploads_dir=c.uploads_dir)
        c.worker().run_job(c.jobs.claim("w"))  # type: ignore[arg-type]
    finally:
        stop.set()
        sampler.join()
    view = c.jobs.get(job_id)
    assert view is not None and [i.status for i in view.items] == ["indexed"] * 30
    # At most the files of one claim (a lone worker claims half of what is left: 15 of 30, then 8, ...)
    # and those replaced within the grace period (about a batch); without purging as it goes, all 30.
    claim = 30 // 2
    assert len(sizes) > 20 and max(sizes) <= claim + batch + 2, (max(sizes), sizes)
    c.store.close()


def test_image_frames_are_read_one_at_a_time_within_the_pixel_budget(tmp_path: Path) -> None:
    tiff = tmp_path / "fax.tif"
    small = [Image.new("RGB", (1000, 1000), "white") for _ in range(3)]
    small[0].save(tiff, save_all=True, append_images=[*small[1:], Image.new("RGB", (4000, 3000), "white")])
    limit_before = Image.MAX_IMAGE_PIXELS
    frames = image_frames(tiff, max_pixels=5_000_000)
    assert [f.size for f in (next(frames), next(frames), next(frames))] == [(1000, 1000)] * 3
    with pytest.raises(TooManyPixels) as refused:
        next(frames)  # the fourth frame, 12 megapixels
    assert refused.value.code == "too_large" and "frame 4" in str(refused.value)
    assert limit_before == Image.MAX_IMAGE_PIXELS  # set per load, not for the process


def test_files_over_the_pixel_budget_fail_as_too_large_and_the_job_goes_on(tmp_path: Path, minilm: Any) -> None:
    c = make(tmp_path / "var", minilm, purge_grace_s=0, max_image_pixels=2_000_000)
    folder = tmp_path / "big"
    folder.mkdir()
    Image.new("RGB", (1000, 1000), "white").save(
        folder / "a-scan.tif", save_all=True, append_images=[Image.new("RGB", (3000, 3000), "white")]
    )
    writer = PdfWriter()
    writer.add_blank_page(width=14400, height=14400)  # 200 inches square: 3.6 gigapixels at 300 dpi
    with (folder / "b-poster.pdf").open("wb") as out:
        writer.write(out)
    write(folder / "c-note.md", "# Note\n\nThe poster is in the lobby.\n")
    view = run_job(c, [folder], "pixels")
    assert [(i.status, i.error_code) for i in view.items] == [
        ("failed", "too_large"), ("failed", "too_large"), ("indexed", ""),
    ]  # fmt: skip
    assert_store_matches_registry(c, "pixels")
    c.store.close()


def test_kb_jobs_cancel(kb_home: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from app.cli import cli

    c = kb_home
    monkeypatch.setenv("KB_HOME", str(c.settings.home))
    job_id = c.documents.submit([write(tmp_path / "q.md", "# Q\n\nQueued.\n")], kb="cli", uploads_dir=c.uploads_dir)
    result = CliRunner().invoke(cli, ["jobs", "cancel", "--json", job_id])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"job_id": job_id, "state": "cancelled"}
    again = CliRunner().invoke(cli, ["jobs", "cancel", job_id])
    assert again.exit_code == 0 and "cancelled" in again.output  # cancelling twice is no error
    assert CliRunner().invoke(cli, ["jobs", "cancel", "0" * 32]).exit_code == 1
