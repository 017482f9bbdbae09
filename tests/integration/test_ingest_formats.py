"""Every supported format through the real pipeline (unstructured, tesseract, LibreOffice, MiniLM, Milvus Lite).

Assertions are on what lands in the index: text content, page numbers, heading paths, table headers.
"""

from __future__ import annotations

import shutil

import pytest

from app.container import Container
from core.types import Chunk
from ingest.events import IngestResult
from tests.conftest import EVERYTHING, SHARED_EVAL, shared_eval
from tests.integration import docgen

pytestmark = pytest.mark.integration

FORMATS = SHARED_EVAL / "docs_formats"
# Fails under CI when the shared data is missing, skips elsewhere (tests/conftest.py::shared_eval).
needs_formats = pytest.mark.usefixtures("shared_formats")
needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed")
needs_cjk_font = pytest.mark.skipif(not docgen.CJK_FONT.is_file(), reason="fonts-wqy-microhei not installed")


@pytest.fixture(scope="module")
def shared_formats() -> None:
    shared_eval("docs_formats")


@pytest.fixture(scope="module")
def indexed(container: Container, tmp_path_factory: pytest.TempPathFactory) -> dict[str, IngestResult]:
    folder = tmp_path_factory.mktemp("generated")
    docgen.docx_with_table(folder / "equipment.docx")
    docgen.xlsx_long_table(folder / "offices.xlsx")
    docgen.pptx_slides(folder / "results.pptx")
    docgen.text_pdf(folder / "three-pages.pdf", ["Alpha page text.", "Bravo page text.", "Charlie page text."])
    if docgen.CJK_FONT.is_file():
        docgen.scanned_pdf(folder / "scan-zh.pdf", [["员工每年享有十五天带薪年假。", "报销申请须在三十天内提交。"]])
        docgen.garbled_layer_pdf(folder / "garbled.pdf", ["The archive room opens at nine.", "Badges are required."])
        docgen.render_text(["Fire drill on Thursday at 10:30.", "Meet at the north car park."]).save(
            folder / "notice.png"
        )
    paths = [folder] + ([FORMATS] if FORMATS.is_dir() else [])
    return {r.doc_id: r for r in container.ingest.ingest_paths(paths, kb="formats")}


def chunks(container: Container, doc_id: str) -> list[Chunk]:
    found = container.store.document_chunks("formats", doc_id)
    assert found, f"no chunks stored for {doc_id}"
    return found


def text_of(container: Container, doc_id: str) -> str:
    return "\n".join(c.text for c in chunks(container, doc_id))


def test_every_file_is_indexed(indexed: dict[str, IngestResult]) -> None:
    failed = {d: f"{r.error_code}: {r.error}" for d, r in indexed.items() if r.status != "indexed"}
    # SOURCE.md/MANIFEST.md/README.md are Markdown too; nothing in either folder should fail.
    assert not failed, failed


@needs_formats
@pytest.mark.parametrize(
    ("doc_id", "expected"),
    [
        ("layout-parser-paper-fast.pdf", "LayoutParser"),
        ("multi-column-2p.pdf", "Abstract"),
        ("embedded-images-tables.pdf", "Potentiodynamic polarization"),
        ("handbook-1p.docx", "United States Trustee"),
        ("example-steelJIS-datasheet.html", "SNB22-3"),
        ("README.md", "sample docs directory"),
        ("family-day.eml", "family day"),
        ("fake-email-with-cc-and-bcc.msg", "This is a test email"),
        ("eng_spa_mult.epub", "All human beings are born free"),
        ("fake-text-utf-16-be.txt", "This is a test document"),
        ("semicolon-delimited.csv", "Lorem, ipsum"),
    ],
)
def test_shared_format_text(container: Container, indexed: dict[str, IngestResult], doc_id: str, expected: str) -> None:
    assert expected.lower() in text_of(container, doc_id).lower()


@needs_formats
def test_pdf_chunks_carry_their_page(container: Container, indexed: dict[str, IngestResult]) -> None:
    pages = {c.page for c in chunks(container, "multi-column-2p.pdf")}
    assert pages == {1, 2}
    assert indexed["multi-column-2p.pdf"].pages == 2


@needs_formats
@needs_tesseract
def test_image_only_pdf_is_ocred(container: Container, indexed: dict[str, IngestResult]) -> None:
    text = text_of(container, "loremipsum-flat.pdf")
    assert "lorem ipsum dolor sit amet" in text.lower()
    assert {c.page for c in chunks(container, "loremipsum-flat.pdf")} == {1}


@needs_formats
def test_legacy_doc_goes_through_libreoffice(container: Container, indexed: dict[str, IngestResult]) -> None:
    if shutil.which("soffice") is None:
        assert indexed["simple.doc"].error_code == "converter_missing"
        assert "libreoffice" in indexed["simple.doc"].error
        return
    assert "favorite things" in text_of(container, "simple.doc")


@needs_formats
def test_spreadsheet_sheets_are_tables_with_headers(container: Container, indexed: dict[str, IngestResult]) -> None:
    found = [c for c in chunks(container, "stanley-cups.xlsx") if c.category == "Table"]
    assert found
    assert all("| Team | Location | Stanley Cups |" in c.text for c in found)
    assert {c.page for c in found} == {1, 2}  # one page per sheet


@needs_formats
def test_csv_cells_with_commas_stay_whole(container: Container, indexed: dict[str, IngestResult]) -> None:
    table = [c for c in chunks(container, "semicolon-delimited.csv") if c.category == "Table"]
    assert table and "| Lorem, ipsum | dolor sit | amet |" in table[0].text


@needs_formats
def test_pptx_slides_are_pages_and_tables_keep_rows(container: Container, indexed: dict[str, IngestResult]) -> None:
    found = chunks(container, "sample-presentation.pptx")
    assert max(c.page or 0 for c in found) >= 3
    tables = [c for c in found if c.category == "Table"]
    assert tables and "| Table | A | B | C |" in tables[0].text and "| 1 | A1 | B1 | C1 |" in tables[0].text


def test_generated_docx_heading_path_and_table(container: Container, indexed: dict[str, IngestResult]) -> None:
    found = chunks(container, "equipment.docx")
    laptops = next(c for c in found if "laptop" in c.text)
    assert laptops.section.endswith("Laptops")
    assert laptops.title == "Equipment Policy"
    table = next(c for c in found if c.category == "Table")
    assert table.section.endswith("Allowances")
    assert "| Item | Budget | Approver |" in table.text and "| Chair | 450 EUR | Facilities |" in table.text


def test_long_table_is_split_by_rows_and_every_chunk_has_the_header(
    container: Container, indexed: dict[str, IngestResult]
) -> None:
    tables = [c for c in chunks(container, "offices.xlsx") if c.category == "Table"]
    assert len(tables) >= 3, "120 rows must not fit in one chunk"
    rows_seen: list[str] = []
    for c in tables:
        assert "| Office code | City | Head count | Manager |" in c.text
        assert c.token_count <= 400
        rows_seen += [line for line in c.text.splitlines() if line.startswith("| OFF-")]
    # Every row exactly once, none cut in half.
    assert len(rows_seen) == 120 and len(set(rows_seen)) == 120
    assert all(line.count("|") == 5 for line in rows_seen)


def test_generated_pptx_and_pdf_pages(container: Container, indexed: dict[str, IngestResult]) -> None:
    slides = chunks(container, "results.pptx")
    assert any("Revenue grew" in c.text and c.page == 1 for c in slides)
    assert any("40 engineers" in c.text and c.page == 2 for c in slides)
    pdf = chunks(container, "three-pages.pdf")
    assert {(c.page, c.text.split()[0]) for c in pdf} >= {(1, "Alpha"), (2, "Bravo"), (3, "Charlie")}
    assert indexed["three-pages.pdf"].pages == 3


@needs_tesseract
@needs_cjk_font
def test_chinese_scan_is_ocred_with_chi_sim(container: Container, indexed: dict[str, IngestResult]) -> None:
    text = text_of(container, "scan-zh.pdf").replace(" ", "")
    assert "十五天带薪年假" in text
    assert "三十天内提交" in text
    r = container.query.search("报销申请多少天内提交？", flt=EVERYTHING, kb="formats", top_k=3)
    assert r.hits[0].chunk.doc_id == "scan-zh.pdf"


@needs_tesseract
@needs_cjk_font
def test_garbled_text_layer_is_replaced_by_ocr(container: Container, indexed: dict[str, IngestResult]) -> None:
    text = text_of(container, "garbled.pdf")
    assert "archive room opens at nine" in text.lower()
    assert not any("\ue000" <= ch <= "\uf8ff" for ch in text)


@needs_tesseract
@needs_cjk_font
def test_image_files_are_ocred(container: Container, indexed: dict[str, IngestResult]) -> None:
    text = text_of(container, "notice.png").lower()
    assert "fire drill on thursday" in text and "north car park" in text


# -- parsing defects found on documents we do not have: rotated pages, table slides, garbled titles ---------
ROTATED_TITLE = "Turbine Inspection Report"
ROTATED_LINES = ["The turbine blades are inspected every ninety days.", "Cracks longer than two millimetres ground it."]
# deck -> (title of its table slide, that slide's number): after an intro slide, the deck's first slide, and
# a table placed above the title (so it comes first in reading order).
TABLE_SLIDES = {
    "targets.pptx": ("Regional sales targets", 2),
    "capacity.pptx": ("Warehouse capacity plan", 1),
    "fleet.pptx": ("Fleet replacement schedule", 2),
}


@pytest.fixture(scope="module")
def parsing_docs(container: Container, tmp_path_factory: pytest.TempPathFactory) -> dict[str, IngestResult]:
    """Documents of their own kb, so these tests do not need the shared formats folder ingested."""
    folder = tmp_path_factory.mktemp("parsing")
    docgen.rotated_pdf(folder / "rotated-page.pdf", title=ROTATED_TITLE, lines=ROTATED_LINES, how="rotate")
    docgen.rotated_pdf(folder / "sideways-text.pdf", title=ROTATED_TITLE, lines=ROTATED_LINES, how="canvas")
    rows = [["Region", "Target"], ["North", "4.2 million"], ["South", "3.1 million"]]
    docgen.pptx_table_slide(folder / "targets.pptx", title=TABLE_SLIDES["targets.pptx"][0], rows=rows)
    docgen.pptx_table_slide(folder / "capacity.pptx", title=TABLE_SLIDES["capacity.pptx"][0], rows=rows, first=True)
    docgen.pptx_table_slide(folder / "fleet.pptx", title=TABLE_SLIDES["fleet.pptx"][0], rows=rows, top=0.1)
    body = "The warehouse stocktake is on the last Friday of June."
    docgen.garbled_title_pdf(folder / "stocktake_notice.pdf", first_line="n u J", body=body, metadata_title=None)
    docgen.garbled_title_pdf(
        folder / "protected.pdf", first_line="n u J", body=body, metadata_title="June Stocktake Notice"
    )
    return {r.doc_id: r for r in container.ingest.ingest_paths([folder], kb="parsing")}


def parsed_chunks(container: Container, doc_id: str) -> list[Chunk]:
    found = container.store.document_chunks("parsing", doc_id)
    assert found, f"no chunks stored for {doc_id}"
    return found


def test_parsing_fixtures_are_indexed(parsing_docs: dict[str, IngestResult]) -> None:
    failed = {d: f"{r.error_code}: {r.error}" for d, r in parsing_docs.items() if r.status != "indexed"}
    assert not failed, failed
    assert set(parsing_docs) == {
        "rotated-page.pdf", "sideways-text.pdf", "stocktake_notice.pdf", "protected.pdf", *TABLE_SLIDES
    }  # fmt: skip


@pytest.mark.parametrize("doc_id", ["rotated-page.pdf", "sideways-text.pdf"])
def test_rotated_pdf_page_reads_as_lines_not_letters(
    container: Container, parsing_docs: dict[str, IngestResult], doc_id: str
) -> None:
    found = parsed_chunks(container, doc_id)
    text = "\n".join(c.text for c in found)
    # Read one character per line, the phrase came out as "T h e t u r b n e ..." and the title as "C r a c k s".
    assert any(ROTATED_LINES[0] in c.text for c in found), text
    assert "ninety days" in text and "two millimetres" in text
    assert {c.title for c in found} == {ROTATED_TITLE}
    hits = container.query.search(
        "How often are the turbine blades inspected?", flt=EVERYTHING, kb="parsing", top_k=3
    ).hits
    assert hits and hits[0].chunk.doc_id in {"rotated-page.pdf", "sideways-text.pdf"}


@pytest.mark.parametrize("doc_id", sorted(TABLE_SLIDES))
def test_pptx_table_slide_keeps_its_title(
    container: Container, parsing_docs: dict[str, IngestResult], doc_id: str
) -> None:
    title, slide = TABLE_SLIDES[doc_id]
    table = [c for c in parsed_chunks(container, doc_id) if c.category == "Table"]
    assert len(table) == 1 and "| North | 4.2 million |" in table[0].text
    assert table[0].page == slide
    # The slide's title must be searchable with the table: in the chunk text, which is what is embedded.
    assert table[0].text.startswith(title + "\n") and table[0].section == title
    hits = container.query.search(title, flt=EVERYTHING, kb="parsing", top_k=3).hits
    assert hits and hits[0].chunk.doc_id == doc_id, hits
    # Every slide is matched with the deck's title too (contextual headers): where this slide opens the deck,
    # its title is the deck's, and another slide of it may come first.
    assert (doc_id, slide) in [(h.chunk.doc_id, h.chunk.page) for h in hits], hits


def test_garbled_first_line_is_not_the_title(container: Container, parsing_docs: dict[str, IngestResult]) -> None:
    assert {c.title for c in parsed_chunks(container, "stocktake_notice.pdf")} == {"stocktake notice"}
    assert {c.title for c in parsed_chunks(container, "protected.pdf")} == {"June Stocktake Notice"}
    found = parsed_chunks(container, "protected.pdf")
    assert "last Friday of June" in "\n".join(c.text for c in found)
    assert all(c.section == "" for c in found)  # and the garbled line labels no section
