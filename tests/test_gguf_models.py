"""GGUF repositories on the Hub (one file per quantization) as catalog models: only the chosen file is downloaded,
the folder counts as ready, and the model loads on the llama.cpp backend. Against the mock Hub on 127.0.0.1."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from src.settings import BACKEND_LLAMACPP
from src.utils.catalog import find_entry, gguf_file_in, is_loadable_model_dir, locate_model
from src.utils.downloader import DONE
from src.utils.embedded_model import embedded_gguf_path
from src.utils.llamacpp_backend import llamacpp_available
from src.utils.LocalLLMEngine import LocalLLMEngine
from src.utils.ModelManager import STATUS_READY, ModelManager
from tests.mock_hub import MockHub

needs_llamacpp = pytest.mark.skipif(not llamacpp_available(), reason="xllamacpp is not installed")


def _gguf_repo(prefix: str) -> dict[str, bytes | Path]:
    """Several quantizations; the q4_k_m one is the real embedded model (so it loads), the others are junk."""
    return {
        f"{prefix}-q2_k.gguf": b"GGUF" + b"\0" * 4096,
        f"{prefix}-q4_k_m.gguf": embedded_gguf_path(),
        f"{prefix}-q8_0.gguf": b"GGUF" + b"\1" * 8192,
        f"{prefix}-f16.gguf": b"GGUF" + b"\2" * 8192,
        "mmproj-" + prefix + "-f16.gguf": b"GGUF",
        "README.md": b"# a GGUF repo",
        "LICENSE": b"Apache-2.0",
    }


@needs_llamacpp
def test_a_gguf_repo_downloads_one_file_and_chats_on_llamacpp(models_dir: Path) -> None:
    with MockHub() as hub:
        hub.add_repo("acme/Tiny-Chat-GGUF", _gguf_repo("tiny-chat"), redirect_lfs=True)
        state = ModelManager().download("acme/Tiny-Chat-GGUF", endpoints=[hub.endpoint])
        fetched = {r.path.rsplit("/", 1)[-1] for r in hub.requests_for("*/resolve/*", method="GET")}
    assert state.status == DONE
    assert fetched == {"tiny-chat-q4_k_m.gguf"}, "only the chosen quantization is fetched"
    folder = models_dir / "tiny-chat-gguf"
    assert sorted(p.name for p in folder.glob("*.gguf*")) == ["tiny-chat-q4_k_m.gguf"]
    digest = hashlib.sha256((folder / "tiny-chat-q4_k_m.gguf").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(embedded_gguf_path().read_bytes()).hexdigest()
    assert is_loadable_model_dir(folder) and gguf_file_in(folder) == folder / "tiny-chat-q4_k_m.gguf"
    assert ModelManager().info("tiny-chat-gguf").status == STATUS_READY
    files = locate_model("tiny-chat-gguf")
    assert files.gguf == folder / "tiny-chat-q4_k_m.gguf" and not files.transformers

    engine = LocalLLMEngine()
    try:
        loaded = engine.load_model("tiny-chat-gguf")
        assert loaded.backend == BACKEND_LLAMACPP and loaded.model_id == "tiny-chat-gguf"
        result = engine.complete([{"role": "user", "content": "What is the capital of France?"}], temperature=0, max_new_tokens=4)
        assert result.stats.completion_tokens >= 1 and result.text
    finally:
        engine.unload_model()


def test_the_builtin_gguf_entry_fetches_its_named_file(models_dir: Path) -> None:
    entry = find_entry("qwen2.5-0.5b-gguf")
    assert entry is not None and entry.gguf_file == "qwen2.5-0.5b-instruct-q4_k_m.gguf"
    repo = {name.replace("tiny", "qwen2.5-0.5b-instruct"): content for name, content in _gguf_repo("tiny").items()}
    repo["qwen2.5-0.5b-instruct-q4_0.gguf"] = b"GGUF" + b"\3" * 1024
    with MockHub() as hub:
        hub.add_repo(entry.repo, repo)
        assert ModelManager().download(entry.id, endpoints=[hub.endpoint]).status == DONE
        fetched = {r.path.rsplit("/", 1)[-1] for r in hub.requests_for("*/resolve/*", method="GET")}
    assert fetched == {"qwen2.5-0.5b-instruct-q4_k_m.gguf"}
    assert ModelManager().info(entry.id).status == STATUS_READY


def test_a_half_downloaded_gguf_is_not_ready(models_dir: Path) -> None:
    from src.errors import ChecksumMismatchError, ModelNotDownloadedError
    from tests.mock_hub import Faults

    with MockHub() as hub:
        hub.add_repo("acme/Broken-GGUF", _gguf_repo("broken"))
        hub.faults = Faults(corrupt_offset=10, path_glob="*.gguf", times=None)
        with pytest.raises(ChecksumMismatchError):
            ModelManager().download("acme/Broken-GGUF", endpoints=[hub.endpoint])
    assert ModelManager().info("broken-gguf").status != STATUS_READY
    with pytest.raises(ModelNotDownloadedError):
        locate_model("broken-gguf")
