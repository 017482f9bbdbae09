"""Checks that catch text extraction gone wrong: garbled titles, text read one letter per line, turned pages."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image

from ingest.elements import Element
from ingest.loaders import headed_by_slide_titles, readable_title, slide_titles, title_of
from ingest.ocr import TesseractOCR
from ingest.pdf import PdfPages, fragmented_share, upright_rotation
from tests.integration import docgen

PDF = Path("reports/2026_stocktake-notice.pdf")


def test_garbled_first_heading_falls_back_to_the_file_name() -> None:
    elements = [Element("n u J", "Title"), Element("The stocktake is on Friday.", "NarrativeText")]
    assert title_of(PDF, elements) == "2026 stocktake notice"
    assert title_of(PDF, [Element("R o", "Title")]) == "2026 stocktake notice"


def test_garbled_first_heading_falls_back_to_a_clean_metadata_title() -> None:
    assert title_of(PDF, [Element("n u J", "Title")], "June Stocktake Notice") == "June Stocktake Notice"
    # A metadata title that is garbled too is no better than the file name.
    assert title_of(PDF, [Element("n u J", "Title")], "J u n e") == "2026 stocktake notice"
    assert title_of(PDF, [Element("n u J", "Title")], "   ") == "2026 stocktake notice"
    assert title_of(PDF, [], "June Stocktake Notice") == "June Stocktake Notice"


def test_a_clean_heading_wins_over_the_metadata_title() -> None:
    assert title_of(PDF, [Element("# Stocktake Procedure", "Title")], "Microsoft Word - doc1") == "Stocktake Procedure"
    assert title_of(PDF, [Element("员工手册", "Title")], "handbook") == "员工手册"
    assert title_of(PDF, [Element("2026 年 员工 手册", "Title")]) == "2026 年 员工 手册"


def test_readable_title() -> None:
    for good in ["Quarterly results", "Plan A", "Q & A", "A B testing", "员工手册", "VPN 密码重置", "Section 3 of 4"]:
        assert readable_title(good), good
    for bad in ["n u J", "R o", "T u r b i n e", "", "\ue001\ue002\ue003", "TÃ©lÃ©phone Ã  cÃ´tÃ©"]:
        assert not readable_title(bad), bad


def test_fragmented_share() -> None:
    assert fragmented_share("The turbine blades are inspected every ninety days.") < 0.2
    assert fragmented_share("T\nh\ne\nt\nu\nr\nb\ni\nn\ne") == 1.0
    assert fragmented_share("T h e t u r b i n e b l a d e s") > 0.9
    # Chinese written with spaces between characters is still readable text.
    assert fragmented_share("员 工 每 年 享 有 十 五 天 带 薪 年 假") == 0.0
    assert fragmented_share("a b c") == 0.0  # too few words to judge
    assert fragmented_share("1 2 3 4 5 6 7 8 9 0 1 2") == 0.0  # a table of small numbers
    assert fragmented_share("f ( x ) = a x + b") < 0.7  # a formula


def test_upright_rotation() -> None:
    # pdfium's angles are clockwise: text drawn running up the page (turned 90° counter-clockwise) is at 270°.
    level, up, upside_down, down = 0.0, 3 * math.pi / 2, math.pi, math.pi / 2
    assert upright_rotation([level] * 10, 90) == 0  # level text on a page a viewer turns: read it unturned
    assert upright_rotation([up] * 10 + [level] * 2, 0) == 90  # text drawn running up the page
    assert upright_rotation([down] * 10, 0) == 270
    assert upright_rotation([upside_down] * 10, 0) == 180
    assert upright_rotation([up - 0.01] * 5 + [2 * math.pi - 0.01] * 2, 0) == 90  # float noise near 270° and 360°
    assert upright_rotation([], 90) == 90  # nothing to go by: leave the page as it is
    assert upright_rotation([-1.0] * 3, 180) == 180  # pdfium's "no angle"


class _FakeOCR(TesseractOCR):
    def __init__(self) -> None:
        super().__init__()
        self.read_pages = 0

    @property
    def available(self) -> bool:
        return True

    def read(self, image: Image.Image) -> str:
        self.read_pages += 1
        return "The turbine blades are inspected every ninety days."


def test_page_read_one_letter_at_a_time_goes_to_ocr(tmp_path: Path) -> None:
    # The layout engine stands in for one that still reads the page letter by letter after it was turned.
    level = ["A level page of ordinary text.", "Another level page, with enough text to have a text layer."]
    pdf = docgen.text_pdf(tmp_path / "letters.pdf", level)

    def partition(**kwargs: Any) -> list[Any]:
        return [
            SimpleNamespace(text=level[0], category="NarrativeText", metadata=SimpleNamespace(page_number=1)),
            SimpleNamespace(text="\n".join("The turbine"), category="Title", metadata=SimpleNamespace(page_number=2)),
        ]

    ocr = _FakeOCR()
    pages = PdfPages(pdf, partition_pdf=partition, ocr=ocr)
    elements = [e for _, batch in pages.batches() for e in batch]
    assert [(e.page, e.text) for e in elements] == [
        (1, level[0]),
        (2, "The turbine blades are inspected every ninety days."),
    ]
    assert ocr.read_pages == 1 and pages.ocr_pages == 1


def test_turned_page_is_handed_on_upright(tmp_path: Path) -> None:
    from pypdf import PdfReader

    pdf = docgen.rotated_pdf(
        tmp_path / "turned.pdf", title="Turbine Inspection Report", lines=["Ninety days."], how="rotate"
    )
    seen: list[int] = []

    def partition(*, file: Any, **kwargs: Any) -> list[Any]:
        seen.extend(p.rotation for p in PdfReader(file).pages)
        return []

    pages = PdfPages(pdf, partition_pdf=partition, ocr=_FakeOCR())
    list(pages.batches())
    assert PdfReader(str(pdf)).pages[0].rotation == 90
    assert seen == [0] and pages.turned_pages == 1


def test_every_slide_is_headed_by_its_title() -> None:
    table = Element("Region Target North 4.2 million", "Table", page=2, html="<table></table>")
    elements = [
        Element("Sales review", "Title", page=1, depth=0),
        Element("This deck reviews the sales of the year.", "NarrativeText", page=1),
        table,  # the table came before the title, or the title was not given at all
        Element("Regional", "Title", page=2, depth=0),
        Element("sales targets", "Title", page=2, depth=1),
        Element("Targets are set per quarter.", "NarrativeText", page=3),
    ]
    titles = {1: ["Sales review"], 2: ["Regional", "sales targets"]}
    assert headed_by_slide_titles(elements, titles) == [
        Element("Sales review", "Title", page=1, depth=0),
        Element("This deck reviews the sales of the year.", "NarrativeText", page=1),
        Element("Regional sales targets", "Title", page=2, depth=0),
        table,
        Element("Targets are set per quarter.", "NarrativeText", page=3),  # no title: left as it was
    ]
    # A Title inside the slide that only shares words with the slide title is kept.
    kept = Element("Targets", "Title", page=2, depth=1)
    assert headed_by_slide_titles([table, kept], {2: ["Regional sales targets"]})[1:] == [table, kept]


def test_slide_titles_are_read_from_the_title_placeholders(tmp_path: Path) -> None:
    deck = docgen.pptx_table_slide(
        tmp_path / "deck.pptx", title="Regional sales targets", rows=[["A", "B"], ["1", "2"]]
    )
    assert slide_titles(deck) == {1: ["Sales review"], 2: ["Regional sales targets"]}
