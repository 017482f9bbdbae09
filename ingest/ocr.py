"""OCR with Debian's tesseract (eng + chi_sim), one page image at a time.

Why tesseract is called directly instead of through unstructured's `ocr_only` strategy: unstructured
groups OCR words by spaces, which turns Chinese scans into garbage, and its English OCR was 3-5x slower
here (DESIGN.md §5). tesseract's own script detection (OSD) picks the language model per page, since
`chi_sim+eng` together reads worse than either alone with Debian's data.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from io import BytesIO
from pathlib import Path

from PIL import Image

from ingest.errors import CorruptFile, LoadError

log = logging.getLogger(__name__)

_CJK_SCRIPTS = {"Han", "HanS", "HanT", "Hiragana", "Katakana", "Japanese", "Hangul", "Korean"}
_SCRIPT = re.compile(r"Script:\s*(\w+)")
_ROTATE = re.compile(r"Rotate:\s*(\d+)")


class OCRUnavailable(LoadError):
    code = "ocr_unavailable"


class TesseractOCR:
    def __init__(self, *, binary: str = "tesseract", timeout_s: float = 120.0) -> None:
        self._binary = shutil.which(binary)
        self._timeout = timeout_s

    @property
    def available(self) -> bool:
        return self._binary is not None

    def read(self, image: Image.Image) -> str:
        """The text on one page image, in reading order."""
        if self._binary is None:
            raise OCRUnavailable("this file needs OCR, but tesseract is not installed (apt-get install tesseract-ocr)")
        png = _png(image.convert("L"))
        script, rotate = self._orientation(png)
        if rotate:
            png = _png(Image.open(BytesIO(png)).rotate(-rotate, expand=True))
        lang = "chi_sim" if script in _CJK_SCRIPTS or script is None else "eng"
        text = self._run(png, ["-l", lang, "--psm", "3"])
        if lang == "chi_sim":
            # chi_sim emits a space between every pair of Chinese characters.
            text = re.sub(r"(?<=[\u3000-\u9fff\uff00-\uffef])\s+(?=[\u3000-\u9fff\uff00-\uffef])", "", text)
        return text.strip()

    def _orientation(self, png: bytes) -> tuple[str | None, int]:
        # OSD needs a page of text; on sparse pages it gives up, and chi_sim (which also reads Latin
        # letters) is the safer default.
        try:
            out = self._run(png, ["--psm", "0"])
        except LoadError:
            return None, 0
        script = _SCRIPT.search(out)
        rotate = _ROTATE.search(out)
        return (script.group(1) if script else None), (int(rotate.group(1)) if rotate else 0)

    def _run(self, png: bytes, args: list[str]) -> str:
        assert self._binary is not None
        try:
            proc = subprocess.run(
                [self._binary, "stdin", "stdout", *args],
                input=png,
                capture_output=True,
                timeout=self._timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LoadError(f"OCR took longer than {self._timeout:.0f} s on one page") from exc
        if proc.returncode != 0:
            raise LoadError(f"tesseract failed: {proc.stderr.decode(errors='replace').strip()[-300:]}")
        return proc.stdout.decode("utf-8", errors="replace")


def _png(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG", dpi=(300, 300))
    return buffer.getvalue()


def open_image(path: Path) -> list[Image.Image]:
    """Every frame of an image file (multi-page TIFFs have several)."""
    try:
        with Image.open(path) as image:
            frames = []
            for index in range(getattr(image, "n_frames", 1)):
                image.seek(index)
                frames.append(image.convert("RGB"))
            return frames
    except (OSError, SyntaxError) as exc:
        raise CorruptFile(f"{path.name} is not a readable image: {exc}") from exc
