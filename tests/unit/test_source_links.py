"""Symbolic links in an ingested folder are not followed out of it (ingest/sources.py)."""

from __future__ import annotations

from pathlib import Path

from ingest.sources import expand_sources


def test_links_out_of_the_folder_fail_and_links_within_it_do_not_duplicate(tmp_path: Path) -> None:
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "salaries.md").write_text("secret")
    (outside / "more").mkdir()
    (outside / "more" / "keys.md").write_text("secret too")
    folder = tmp_path / "share"
    (folder / "sub").mkdir(parents=True)
    (folder / "guide.md").write_text("public")
    (folder / "sub" / "faq.md").write_text("public too")
    (folder / "salaries.md").symlink_to(outside / "salaries.md")
    (folder / "sub" / "escape").symlink_to(outside / "more", target_is_directory=True)
    (folder / "sub" / "up.md").symlink_to(Path("..") / ".." / "private" / "salaries.md")
    (folder / "alias.md").symlink_to(folder / "guide.md")  # inside: a file like any other
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # inside: not walked again
    (folder / "dangling.md").symlink_to(tmp_path / "nowhere.md")

    found = {s.doc_id: s for s in expand_sources([folder])}
    assert sorted(found) == ["alias.md", "dangling.md", "guide.md", "salaries.md", "sub/escape", "sub/faq.md",
                             "sub/up.md"]  # fmt: skip
    refused = {d for d, s in found.items() if s.error is not None}
    assert refused == {"salaries.md", "sub/escape", "sub/up.md", "dangling.md"}
    for doc_id in refused:
        error = found[doc_id].error
        assert error is not None and error.code == "unsafe_link" and "outside" in str(error)
    assert all(found[d].error is None for d in ("guide.md", "alias.md", "sub/faq.md"))
    # Nothing from behind the links is read.
    assert not any("private" in str(s.path.resolve()) for s in found.values() if s.error is None)
