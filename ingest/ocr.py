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
import threading
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

from PIL import Image

from core.text import join_wide
from ingest.errors import CorruptFile, LoadError, TooManyPixels

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
        if script is None:
            # Too little text for script detection: read it both ways and keep the more confident one.
            text = max((self._read(png, lang) for lang in ("eng", "chi_sim")), key=lambda r: r[1])[0]
        else:
            text = self._read(png, "chi_sim" if script in _CJK_SCRIPTS else "eng")[0]
        return text.strip()

    def _read(self, png: bytes, lang: str) -> tuple[str, float]:
        """Text with paragraph breaks, and the mean word confidence (0-100)."""
        tsv = self._run(png, ["-l", lang, "--psm", "3", "tsv"])
        paragraphs: dict[tuple[str, str, str], dict[str, list[str]]] = {}
        confidences = []
        for row in tsv.splitlines()[1:]:
            cols = row.split("\t")
            if len(cols) < 12 or cols[0] != "5" or not cols[11].strip():
                continue
            paragraphs.setdefault((cols[1], cols[2], cols[3]), {}).setdefault(cols[4], []).append(cols[11])
            confidences.append(float(cols[10]))
        text = "\n\n".join("\n".join(_join_words(words) for words in lines.values()) for lines in paragraphs.values())
        return text, (sum(confidences) / len(confidences) if confidences else 0.0)

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


def _join_words(words: list[str]) -> str:
    # chi_sim reports Chinese characters as separate words: no space between them, one between Latin words.
    return join_wide(words)


def _png(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG", dpi=(300, 300))
    return buffer.getvalue()


# Pillow's decompression-bomb limit is one module attribute: it is set to this load's budget, and put
# back, under a lock (two loads at once each want their own).
_PILLOW_LIMIT = threading.Lock()
DEFAULT_MAX_PIXELS = 40_000_000


def image_frames(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Image.Image]:
    """The frames of an image file (multi-page TIFFs have several), one at a time: only the frame being
    read is in memory. A frame over `max_pixels` fails the file (TooManyPixels, `too_large`)."""
    try:
        with _PILLOW_LIMIT, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(f"{path.name} is over the image budget of {max_pixels:,} pixels: {exc}") from exc
    except (OSError, SyntaxError) as exc:
        raise CorruptFile(f"{path.name} is not a readable image: {exc}") from exc
    with image:
        try:
            count = getattr(image, "n_frames", 1)
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptFile(f"{path.name} is not a readable image: {exc}") from exc
        for index in range(count):
            try:
                image.seek(index)
                width, height = image.size
            except (OSError, SyntaxError, ValueError) as exc:
                raise CorruptFile(f"{path.name} is not a readable image: {exc}") from exc
            if width * height > max_pixels:
                raise TooManyPixels(
                    f"{path.name}: frame {index + 1} is {width}x{height} pixels, over the budget of "
                    f"{max_pixels:,} pixels per frame"
                )
            try:
                frame = image.convert("RGB")
            except (OSError, SyntaxError, ValueError) as exc:
                raise CorruptFile(f"{path.name} is not a readable image: {exc}") from exc
            yield frame


def open_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Image.Image]:
    """Every frame of a small image file at once (tests, tools); ingestion reads `image_frames`."""
    return list(image_frames(path, max_pixels=max_pixels))
