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
