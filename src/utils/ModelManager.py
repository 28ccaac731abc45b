"""ModelManager: the catalog of local models, their status on disk, and resumable downloads from the Hub.

    from src.utils.ModelManager import ModelManager
    manager = ModelManager()
    for info in manager.list_models(): print(info.entry.id, info.status_label)
    manager.download("qwen2.5-0.5b", progress=print)     # blocks; resumes a partial download
    handle = manager.start_download("tinyllama-1.1b")    # in a thread, for the GUI: handle.pause(), handle.wait()

Downloads are done by ``downloader`` (bytes, resume, checksums) with metadata from ``hub_api``; endpoints come
from the settings (HF_ENDPOINT first if set, then huggingface.co, then hf-mirror.com), editable and stored in the
app settings, or given per call.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from src.db.database import get_app_setting, set_app_setting
from src.db.user_models import UserModelStore
from src.errors import (
    DownloadError,
    DownloadInProgressError,
    ModelNotDownloadedError,
    NotDownloadableError,
    UnknownModelError,
)
from src.settings import get_settings
from src.utils.catalog import (
    BUILTIN_MODELS,
    CatalogEntry,
    all_entries,
    find_entry,
    is_loadable_model_dir,
    known_model_ids,
    model_dir,
    user_entry,
)
from src.utils.downloader import (
    CORRUPT,
    FILE_DONE,
    FILE_PENDING,
    CancelToken,
    DownloadProgress,
    DownloadState,
    ModelDownload,
    ProgressCallback,
    file_checksum_ok,
    is_locked,
    model_lock,
)
from src.utils.hub_api import EndpointHealth, HubClient, validate_repo_id

logger = logging.getLogger(__name__)

ENDPOINTS_SETTING = "hub_endpoints"
_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")



class ModelStatus(StrEnum):
    """A catalog model's state, as ``models list`` prints it (the values are what users and scripts read)."""

    EMBEDDED = "embedded"
    NOT_DOWNLOADED = "not downloaded"
    PARTIAL = "partial"
    DOWNLOADING = "downloading"
    READY = "ready"
    CORRUPT = "corrupt"

    @property
    def message_key(self) -> str:
        """Its name in the GUI's strings (src/ui/i18n.py): ``status_not_downloaded``."""
        return f"status_{self.name.lower()}"


STATUS_EMBEDDED = ModelStatus.EMBEDDED
STATUS_NOT_DOWNLOADED = ModelStatus.NOT_DOWNLOADED
STATUS_PARTIAL = ModelStatus.PARTIAL
STATUS_DOWNLOADING = ModelStatus.DOWNLOADING
STATUS_READY = ModelStatus.READY
STATUS_CORRUPT = ModelStatus.CORRUPT


@dataclass(frozen=True)
class ModelInfo:
    entry: CatalogEntry
    folder: Path
    status: str
    fraction: float | None = None  # for partial / downloading
    total_bytes: int | None = None  # from the download state once the file list is known

    @property
    def status_label(self) -> str:
        if self.status in (STATUS_PARTIAL, STATUS_DOWNLOADING) and self.fraction is not None:
            return f"{self.status} {self.fraction * 100:.0f}%"
        return self.status

    @property
    def size_bytes(self) -> int:
        return self.total_bytes or self.entry.size_bytes


class DownloadHandle:
    """A download running in a background thread: ``pause()`` stops it within a second, resumable later."""

    def __init__(
        self,
        model_id: str,
        run: Callable[[CancelToken, ProgressCallback], DownloadState],
        progress: ProgressCallback | None = None,
    ) -> None:
        self.model_id = model_id
        self.cancel = CancelToken()
        self.latest: DownloadProgress | None = None
        self.result: DownloadState | None = None
        self.error: BaseException | None = None
        self._progress = progress
        self._thread = threading.Thread(target=self._run, args=(run,), name=f"download-{model_id}", daemon=True)
        self._thread.start()

    def _on_progress(self, update: DownloadProgress) -> None:
        self.latest = update
        if self._progress is not None:
            self._progress(update)

    def _run(self, run: Callable[[CancelToken, ProgressCallback], DownloadState]) -> None:
        try:
            self.result = run(self.cancel, self._on_progress)
        except BaseException as exc:  # handed to whoever waits; the GUI shows it
            self.error = exc

    def pause(self) -> None:
        self.cancel.cancel()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> DownloadState | None:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


class ModelManager:
    # --- catalog ------------------------------------------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        return [self._info(entry) for entry in all_entries()]

    def info(self, model_id: str) -> ModelInfo:
        return self._info(self._entry(model_id))

    def add_model(self, repo: str, model_id: str | None = None, revision: str = "main") -> CatalogEntry:
        """Add a Hub repository to the catalog; the id defaults to the repo's name in lower case."""
        repo = validate_repo_id(repo)
        for entry in all_entries():
            if entry.repo == repo and (model_id is None or entry.id == model_id):
                return entry
        model_id = (model_id or repo.split("/", 1)[1]).strip().lower()
        if not _MODEL_ID.match(model_id):
            raise DownloadError(
                f"Model id {model_id!r} is not valid: use lower-case letters, digits, '.', '_' and '-' (max 64)."
            )
        existing = find_entry(model_id)
        if existing is not None:
            raise DownloadError(f"The id {model_id!r} is already used by {existing.repo}; choose another with --id.")
        record = UserModelStore().add(model_id, repo, revision)
        logger.info("Added %s as %s", repo, model_id)
        return user_entry(record.id, record.repo, record.revision)

    def _entry(self, model_id: str) -> CatalogEntry:
        entry = find_entry(model_id)
        if entry is None:
            raise UnknownModelError(model_id, known_model_ids())
        return entry

    def _info(self, entry: CatalogEntry) -> ModelInfo:
        folder = model_dir(entry.id)
        if entry.embedded:
            return ModelInfo(entry, folder, STATUS_EMBEDDED)
        state = DownloadState.load(folder)
        if state is None:
            status = STATUS_READY if is_loadable_model_dir(folder) else STATUS_NOT_DOWNLOADED
            return ModelInfo(entry, folder, status)
        total = state.total_bytes
        if state.status == CORRUPT:
            return ModelInfo(entry, folder, STATUS_CORRUPT, total_bytes=total)
        if state.complete:
            intact = all(
                (folder / r.path).is_file() and (folder / r.path).stat().st_size == r.size
                for r in state.files.values()
                if r.status == FILE_DONE
            )
            return ModelInfo(entry, folder, STATUS_READY if intact else STATUS_CORRUPT, total_bytes=total)
        fraction = state.done_bytes(folder) / total if total else 0.0
        status = STATUS_DOWNLOADING if is_locked(folder) else STATUS_PARTIAL
        return ModelInfo(entry, folder, status, fraction=fraction, total_bytes=total)

    # --- endpoints ----------------------------------------------------------------------------------------------

    def endpoints(self) -> list[str]:
        stored = get_app_setting(ENDPOINTS_SETTING)
        if stored:
            try:
                endpoints = [str(e) for e in json.loads(stored) if str(e).strip()]
                if endpoints:
                    return endpoints
            except ValueError:
                logger.warning("Ignoring the unreadable endpoint list in the settings")
        return get_settings().default_hub_endpoints()

    def set_endpoints(self, endpoints: list[str] | None) -> None:
        """Store the ordered endpoint list (None or [] restores the defaults)."""
        if endpoints:
            HubClient(endpoints)  # validates the URLs
            set_app_setting(ENDPOINTS_SETTING, json.dumps([e.strip().rstrip("/") for e in endpoints]))
        else:
            set_app_setting(ENDPOINTS_SETTING, None)

    def check_endpoints(self, endpoints: list[str] | None = None) -> list[EndpointHealth]:
        hub = HubClient(endpoints or self.endpoints())
        try:
            return hub.check_endpoints()
        finally:
            hub.close()

    # --- downloads ----------------------------------------------------------------------------------------------

    def download(
        self,
        model: str,
        *,
        endpoints: list[str] | None = None,
        revision: str | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> DownloadState:
        """Download (or resume, or finish verifying) ``model``: a catalog id or a Hub ``owner/name`` (added to the
        catalog on the way). Blocks. Returns the final state: ``DONE``, or ``PAUSED`` when cancelled."""
        entry = self._resolve_for_download(model)
        hub = HubClient(endpoints or self.endpoints())
        try:
            job = ModelDownload(
                entry.id,
                entry.repo,
                revision or entry.revision,
                model_dir(entry.id),
                hub,
                progress=progress,
                cancel=cancel,
                gguf_file=entry.gguf_file,
            )
            return job.run()
        finally:
            hub.close()

    def start_download(
        self,
        model: str,
        *,
        endpoints: list[str] | None = None,
        revision: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> DownloadHandle:
        entry = self._resolve_for_download(model)

        def run(cancel: CancelToken, on_progress: ProgressCallback) -> DownloadState:
            return self.download(entry.id, endpoints=endpoints, revision=revision, progress=on_progress, cancel=cancel)

        return DownloadHandle(entry.id, run, progress)

    def _resolve_for_download(self, model: str) -> CatalogEntry:
        entry = find_entry(model)
        if entry is None and "/" in model:
            entry = self.add_model(model)
        if entry is None:
            raise UnknownModelError(model, known_model_ids())
        if entry.embedded:
            raise NotDownloadableError(entry.id)
        return entry

    # --- maintenance --------------------------------------------------------------------------------------------

    def verify(self, model_id: str, progress: ProgressCallback | None = None) -> list[str]:
        """Re-hash every downloaded file. Returns the files that failed (they are removed, and the state marked
        corrupt, so that downloading again fetches just those); [] means all good."""
        entry = self._entry(model_id)
        folder = model_dir(entry.id)
        if entry.embedded:
            raise NotDownloadableError(entry.id)
        with model_lock(folder, entry.id):
            state = DownloadState.load(folder)
            if state is None:
                raise ModelNotDownloadedError(entry.id, str(folder))
            bad: list[str] = []
            done_bytes, total = 0, state.total_bytes
            for record in state.files.values():
                if record.status != FILE_DONE:
                    continue
                if progress is not None:
                    progress(DownloadProgress(entry.id, "verifying", record.path, 0, record.size, done_bytes, total))
                if not file_checksum_ok(folder / record.path, record):
                    bad.append(record.path)
                    (folder / record.path).unlink(missing_ok=True)
                    record.status, record.durable_bytes = FILE_PENDING, 0
                done_bytes += record.size
            if bad:
                state.status = CORRUPT
                state.error = "checksum mismatch: " + ", ".join(bad)
            state.save(folder)
            return bad

    def delete(self, model_id: str) -> bool:
        """Remove the model's folder and download state (not possible for the embedded model)."""
        entry = self._entry(model_id)
        if entry.embedded:
            raise NotDownloadableError(entry.id)
        folder = model_dir(entry.id)
        if not folder.exists():
            return False
        if is_locked(folder):
            raise DownloadInProgressError(entry.id)
        shutil.rmtree(folder)
        logger.info("Deleted %s", folder)
        return True


__all__ = ["BUILTIN_MODELS", "DownloadHandle", "ModelInfo", "ModelManager"]
