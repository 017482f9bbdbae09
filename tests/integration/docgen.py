"""Test documents built on the fly: office files, multi-page PDFs, scans (English and Chinese)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CJK_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")


def docx_with_table(path: Path) -> Path:
    import docx

    d = docx.Document()
    d.add_heading("Equipment Policy", level=1)
    d.add_heading("Laptops", level=2)
    d.add_paragraph("Every employee receives a laptop on the first day. Laptops are replaced every four years.")
    d.add_heading("Allowances", level=2)
    table = d.add_table(rows=1, cols=3)
    for cell, text in zip(table.rows[0].cells, ["Item", "Budget", "Approver"], strict=True):
        cell.text = text
    for item, budget, approver in [("Monitor", "300 EUR", "Team lead"), ("Chair", "450 EUR", "Facilities")]:
        row = table.add_row().cells
        row[0].text, row[1].text, row[2].text = item, budget, approver
    d.save(str(path))
    return path


def xlsx_long_table(path: Path, rows: int = 120) -> Path:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "Offices"
    ws.append(["Office code", "City", "Head count", "Manager"])
    for i in range(rows):
        ws.append([f"OFF-{i:04d}", f"City number {i}", 10 + i, f"Manager {i}"])
    wb.save(str(path))
    return path


def pptx_slides(path: Path) -> Path:
    from pptx import Presentation

    prs = Presentation()
    for title, body in [("Quarterly results", "Revenue grew by 12 percent."), ("Hiring plan", "We hire 40 engineers.")]:
        slide = prs.slides.add_slide(prs.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    prs.save(str(path))
    return path


def text_pdf(path: Path, pages: list[str]) -> Path:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=A4)
    for text in pages:
        y = 780
        for line in text.split("\n"):
            c.drawString(60, y, line)
            y -= 16
            if y < 60:
                break
        c.showPage()
    c.save()
    return path


def long_pdf(path: Path, pages: int) -> Path:
    body = [
        "\n".join(
            f"Page {p} paragraph {i}: the quarterly maintenance schedule lists inspection item {p * 40 + i}."
            for i in range(40)
        )
        for p in range(1, pages + 1)
    ]
    return text_pdf(path, body)


def render_text(lines: list[str], *, size: int = 32) -> Image.Image:
    font = ImageFont.truetype(str(CJK_FONT), size)
    image = Image.new("L", (1700, 200 + 110 * len(lines)), 255)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((100, 100 + 110 * i), line, font=font, fill=0)
    return image


def scanned_pdf(path: Path, pages: list[list[str]]) -> Path:
    """An image-only PDF: no text layer at all, as a scanner makes it."""
    images = [render_text(lines).convert("RGB") for lines in pages]
    images[0].save(str(path), format="PDF", resolution=200.0, save_all=True, append_images=images[1:])
    return path


def garbled_layer_pdf(path: Path, lines: list[str]) -> Path:
    """A page that shows real text but whose text layer is private-use garbage (a broken font map)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(TTFont("WQY", str(CJK_FONT), subfontIndex=0))
    c = canvas.Canvas(str(path), pagesize=A4)
    width, height = A4
    c.drawImage(ImageReader(render_text(lines).convert("RGB")), 0, height - 400, width=width, height=380)
    text = c.beginText(60, height - 100)
    text.setTextRenderMode(3)  # invisible, like an OCR layer
    text.setFont("WQY", 12)
    text.textLine("".join(chr(0xE000 + i % 200) for i in range(300)))
    c.drawText(text)
    c.showPage()
    c.save()
    return path


def encrypted_pdf(path: Path) -> Path:
    from pypdf import PdfReader, PdfWriter

    plain = text_pdf(path.with_suffix(".plain.pdf"), ["Secret salary bands for 2026."])
    writer = PdfWriter()
    for page in PdfReader(str(plain)).pages:
        writer.add_page(page)
    writer.encrypt(user_password="hunter2", owner_password="owner")
    with path.open("wb") as out:
        writer.write(out)
    plain.unlink()
    return path


def rotated_pdf(path: Path, *, title: str, lines: list[str], how: str) -> Path:
    """A one-page PDF whose text runs up the displayed page, as on a landscape page turned sideways.

    how="rotate": the text is drawn level and the page carries `/Rotate 90` (a viewer turns it);
    how="canvas": the text itself is drawn turned by 90° on a portrait page, which has no `/Rotate`.
    Either way a layout engine that reads the displayed page sees one character per line."""
    from pypdf import PdfReader, PdfWriter
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    height = A4[1]
    plain = path.with_suffix(".level.pdf")
    c = canvas.Canvas(str(plain), pagesize=A4)
    if how == "canvas":
        c.translate(80, 60)  # lines then step rightwards across the page
        c.rotate(90)  # counter-clockwise: the text now runs from the bottom of the page to the top
        y = 0.0
    else:
        y = height - 80
    x = 0.0 if how == "canvas" else 60.0
    c.setFont("Helvetica-Bold", 20)
    c.drawString(x, y, title)
    c.setFont("Helvetica", 12)
    for line in lines:
        y -= 24
        c.drawString(x, y, line)
    c.showPage()
    c.save()
    writer = PdfWriter()
    for page in PdfReader(str(plain)).pages:
        added = writer.add_page(page)
        if how == "rotate":
            added.rotation = 90
        elif how != "canvas":
            raise ValueError(f"unknown rotation kind {how!r}")
    with path.open("wb") as out:
        writer.write(out)
    plain.unlink()
    return path


def pptx_table_slide(path: Path, *, title: str, rows: list[list[str]], first: bool = False, top: float = 1.6) -> Path:
    """A deck with a slide that holds a title (in its title placeholder) and a table, and nothing else.

    `first`: that slide opens the deck, so its title is also the deck's title; `top` (inches): where the
    table starts; above the title's 0.3 inches, the table comes first in reading order."""
    from pptx import Presentation
    from pptx.util import Inches

    prs = Presentation()
    if not first:
        intro = prs.slides.add_slide(prs.slide_layouts[1])
        intro.shapes.title.text = "Sales review"
        intro.placeholders[1].text = "This deck reviews the sales of the year."
    slide = prs.slides.add_slide(prs.slide_layouts[5])  # "Title Only": the table is the whole body
    slide.shapes.title.text = title
    frame = slide.shapes.add_table(
        len(rows), len(rows[0]), Inches(0.5), Inches(top), Inches(9), Inches(0.4) * len(rows)
    )
    for r, cells in enumerate(rows):
        for col, text in enumerate(cells):
            frame.table.cell(r, col).text = text
    if first:
        outro = prs.slides.add_slide(prs.slide_layouts[1])
        outro.shapes.title.text = "Next steps"
        outro.placeholders[1].text = "Regions report monthly."
    prs.save(str(path))
    return path


def garbled_title_pdf(path: Path, *, first_line: str, body: str, metadata_title: str | None) -> Path:
    """A PDF whose first line is what a copy-protected file gives: letters split by spaces ("n u J")."""
    from pypdf import PdfReader, PdfWriter
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    plain = path.with_suffix(".plain.pdf")
    c = canvas.Canvas(str(plain), pagesize=A4)
    c.setFont("Helvetica-Bold", 24)
    c.drawString(60, 770, first_line)
    c.setFont("Helvetica", 12)
    c.drawString(60, 720, body)
    c.showPage()
    c.save()
    writer = PdfWriter()
    for page in PdfReader(str(plain)).pages:
        writer.add_page(page)
    if metadata_title is not None:
        writer.add_metadata({"/Title": metadata_title})
    with path.open("wb") as out:
        writer.write(out)
    plain.unlink()
    return path
