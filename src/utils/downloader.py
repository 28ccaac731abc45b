"""Hearth's own byte transfer for model files: resumable after anything, checksummed, endpoint fallback.

Why not huggingface_hub's downloader: it does not resume a partial file after the process dies, never retries a
connection reset, and waits ~23 s on a dead endpoint. Here, each file is fetched into ``<file>.part`` with
``Range: bytes=N-`` resumes, hashed as it arrives (sha256 for LFS files, the git blob sha1 for small ones), verified,
and only then renamed into place. ``download_state.json`` in the model folder records the revision, every file's
size and checksum and how far it got, so a paused, crashed, killed (SIGKILL) or rebooted download resumes where it
stopped, and the UI can offer "resume NN%" on the next start.

Reboot safety: after a process kill the OS still has every byte the process wrote, so the ``.part`` file's size is
trusted. After a reboot, bytes that were never fsynced may be garbage, so the file is cut back to the last fsynced
size recorded in the state (the state remembers the boot it was written in).

A mirror controls sizes and bytes, so every loop it drives is bounded. A file starts over from byte 0 at most
``MAX_RESTARTS_PER_ENDPOINT`` times per endpoint; then the next endpoint continues it, and when none is left a
``FileRestartLimitError`` stops the download with the ``.part`` and the state kept, so that running it again resumes.
A size lie (more bytes than the listing announced) is refused, never truncated to fit: whether announced up front
(``Content-Length``, ``Content-Range``) or found while reading, the answer is not the file the listing describes,
so it counts as a start-over; the checksum still judges every file that does complete.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import queue
import shutil
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from urllib.parse import urljoin

from src import settings as _settings
from src.errors import (
    ChecksumMismatchError,
    DownloadError,
    DownloadInProgressError,
    FileDownloadFailedError,
    FileRestartLimitError,
    GatedRepoError,
    InsufficientDiskSpaceError,
    RemoteFileNotFoundError,
    UnsafeRemoteFileNameError,
)
from src.utils import raw_http
from src.utils.files import fsync_dir, resolves_inside, write_atomically
from src.utils.http_client import SocketInterrupter
from src.utils.hub_api import HubClient, RemoteFile, RepoSnapshot

logger = logging.getLogger(__name__)

STATE_FILE = "download_state.json"
PART_SUFFIX = ".part"
LOCK_FILE = ".download.lock"
STATE_VERSION = 1
CHUNK_BYTES = 1 << 20
# fsync + state save this often: after a reboot at most this much download time is fetched again. By time, not
# bytes: fsync on every N MB would cap a fast line at the disk's flush speed.
DURABLE_EVERY_S = 5.0
PROGRESS_EVERY_S = 0.1
# An attempt that moved a file forward by this much resets its retry count: a flaky line that drops every few
# minutes must still finish a 2 GB file, while a server that fails at once gives up after DOWNLOAD_RETRIES.
PROGRESS_RESETS_RETRIES_BYTES = 1 << 20
# Starting a file over is the answer to a reply that does not continue it (a wrong Content-Range, a 416, more bytes
# than the file has, a Range ignored). Twice covers a proxy's or a CDN's one-off confusion; a server doing it every
# time (a size lie) would otherwise be asked again forever, so after that the file moves on to the next endpoint.
MAX_RESTARTS_PER_ENDPOINT = 2



class DownloadStatus(StrEnum):
    """A download's state, as shown to the user and stored in download_state.json (the values never change)."""

    QUEUED = "queued"
    DOWNLOADING = "downloading"
    PAUSED = "paused"
    VERIFYING = "verifying"
    DONE = "done"
    FAILED = "failed"
    CORRUPT = "corrupt"  # a verify found a bad file; downloading again fetches just that file


class FileStatus(StrEnum):
    """One file's state inside download_state.json."""

    PENDING = "pending"
    PARTIAL = "partial"
    DONE = "done"
    SKIPPED = "skipped"  # an optional file the server does not have


QUEUED, DOWNLOADING, PAUSED, VERIFYING = (DownloadStatus.QUEUED, DownloadStatus.DOWNLOADING, DownloadStatus.PAUSED,
                                          DownloadStatus.VERIFYING)  # fmt: skip
DONE, FAILED, CORRUPT = DownloadStatus.DONE, DownloadStatus.FAILED, DownloadStatus.CORRUPT
FILE_PENDING, FILE_PARTIAL, FILE_DONE, FILE_SKIPPED = FileStatus.PENDING, FileStatus.PARTIAL, FileStatus.DONE, FileStatus.SKIPPED


class CancelToken:
    """Pause/cancel for a download, from any thread; ``on_cancel`` callbacks interrupt blocked reads at once."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if cancelled meanwhile."""
        return self._event.wait(seconds)

    @contextmanager
    def callback(self, callback: Callable[[], None]) -> Iterator[None]:
        with self._lock:
            self._callbacks.append(callback)
            fire_now = self._event.is_set()
        if fire_now:
            callback()
        try:
            yield
        finally:
            with self._lock:
                self._callbacks.remove(callback)


@dataclass(frozen=True)
class DownloadProgress:
    model_id: str
    state: str
    file: str | None = None
    file_done: int = 0
    file_total: int = 0
    done: int = 0
    total: int = 0
    speed_bps: float | None = None
    eta_s: float | None = None
    endpoint: str | None = None
    message: str | None = None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


ProgressCallback = Callable[[DownloadProgress], None]


# --- state --------------------------------------------------------------------------------------------------------


@dataclass
class FileRecord:
    path: str
    size: int
    sha256: str | None
    git_oid: str | None
    required: bool
    status: str = FILE_PENDING
    durable_bytes: int = 0  # bytes of the .part known to be on disk (fsynced)

    def same_content(self, remote: RemoteFile) -> bool:
        return (self.size, self.sha256, self.git_oid) == (remote.size, remote.sha256, remote.git_oid)


@dataclass
class DownloadState:
    model_id: str
    repo: str
    revision: str
    commit: str
    status: str
    files: dict[str, FileRecord] = field(default_factory=dict)
    endpoint: str | None = None
    boot_id: str | None = None
    error: str | None = None
    updated_at: float = 0.0
    version: int = STATE_VERSION

    @classmethod
    def load(cls, folder: Path) -> DownloadState | None:
        path = folder / STATE_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            files = {name: FileRecord(**record) for name, record in raw.pop("files", {}).items()}
            return cls(**raw, files=files)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("Ignoring unreadable %s (%s); partial files will be checked by their checksums", path, exc)
            return None

    def save(self, folder: Path) -> None:
        self.updated_at = time.time()
        write_atomically(folder / STATE_FILE, json.dumps(asdict(self), indent=1).encode("utf-8"))

    @property
    def total_bytes(self) -> int:
        return sum(r.size for r in self.files.values() if r.status != FILE_SKIPPED)

    def done_bytes(self, folder: Path) -> int:
        total = 0
        for record in self.files.values():
            if record.status == FILE_DONE:
                total += record.size
            elif record.status != FILE_SKIPPED:
                total += min(_size(part_path(folder, record.path)), record.size)
        return total

    @property
    def complete(self) -> bool:
        return self.status == DONE and all(r.status in (FILE_DONE, FILE_SKIPPED) for r in self.files.values())


def part_path(folder: Path, name: str) -> Path:
    return folder / (name + PART_SUFFIX)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def current_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        # Elsewhere: the boot time, from wall clock minus monotonic uptime, to the minute.
        return str(round((time.time() - time.monotonic()) / 60))


def _describe_transport(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the connection closed early ({len(exc.partial)} bytes of the last piece)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def free_disk_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


@contextmanager
def model_lock(folder: Path, model_id: str) -> Iterator[None]:
    """One download per model at a time, across processes (the CLI and the GUI may both try)."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+b")
    try:
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise DownloadInProgressError(model_id) from exc
        yield
    finally:
        handle.close()  # closing releases the lock


def is_locked(folder: Path) -> bool:
    if not (folder / LOCK_FILE).exists():
        return False
    try:
        with model_lock(folder, ""):
            return False
    except DownloadInProgressError:
        return True


class _Checksum:
    """sha256 for LFS files; for small files the git blob id: sha1(b"blob <size>\\0" + content)."""

    def __init__(self, record: FileRecord) -> None:
        self.record = record
        self.reset()

    def reset(self) -> None:
        if self.record.sha256:
            self._hash = hashlib.sha256()
        else:
            self._hash = hashlib.sha1(usedforsecurity=False)
            self._hash.update(b"blob %d\0" % self.record.size)

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    @property
    def expected(self) -> str | None:
        return self.record.sha256 or self.record.git_oid

    def matches(self) -> tuple[bool, str]:
        actual = self._hash.hexdigest()
        return (self.expected is None or actual == self.expected), actual


def file_checksum_ok(path: Path, record: FileRecord) -> bool:
    """Re-hash a finished file (for ``verify``)."""
    if _size(path) != record.size:
        return False
    checksum = _Checksum(record)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES * 8):
            checksum.update(block)
    return checksum.matches()[0]


# --- transfer -----------------------------------------------------------------------------------------------------


class _Cancelled(Exception):
    pass


class _Transient(Exception):
    """Worth retrying, possibly on another endpoint: connection errors, resets, short bodies, 5xx."""


class _RestartFile(Exception):
    """The server's answer does not continue our partial file: start this file over."""


class _EndpointExhausted(Exception):
    """This endpoint has made the file start over ``MAX_RESTARTS_PER_ENDPOINT`` times: use another one."""


class _NotFound(Exception):
    pass


class _FileTransfer:
    """The bytes of one file so far: the ``.part``, how much of it is written, and the running checksum.

    Writing and hashing run in helper threads (both release the GIL), so they overlap with receiving; the queues
    are short, so a killed process loses at most a few hundred KiB that were received but not yet written.
    ``offset`` counts bytes written; call ``flush()`` before relying on it.
    """

    _QUEUE_CHUNKS = 8
    _FLUSH_EVERY_BYTES = 32 << 20

    def __init__(self, folder: Path, record: FileRecord, resume_from: int) -> None:
        self.record = record
        self.path = part_path(folder, record.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.checksum = _Checksum(record)
        self.handle = open(self.path, "a+b", buffering=0)
        self.handle.truncate(resume_from)
        self.offset = resume_from
        self.received = resume_from
        # Resuming means hashing what is already there (a 1 GB file takes under a second).
        self.handle.seek(0)
        remaining = resume_from
        while remaining:
            block = self.handle.read(min(remaining, CHUNK_BYTES * 8))
            if not block:
                break
            self.checksum.update(block)
            remaining -= len(block)
        self.durable_at = resume_from
        self._flushed_at = resume_from
        self._error: BaseException | None = None
        # Two helpers, each in order: one writes, one hashes (sha256 alone runs at about the loopback's speed).
        self._queues: list[queue.Queue[bytes | None]] = [queue.Queue(maxsize=self._QUEUE_CHUNKS) for _ in range(2)]
        self._helpers = [
            threading.Thread(target=self._drain, args=(q, step), name=f"download-{step.__name__}", daemon=True)
            for q, step in zip(self._queues, (self._write_chunk, self.checksum.update))
        ]
        for helper in self._helpers:
            helper.start()

    def _write_chunk(self, data: bytes) -> None:
        os.lseek(self.handle.fileno(), self.offset, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[self.handle.write(view) :]
        self.offset += len(data)
        # Flush to disk as we go, in this helper thread, so the fsync that must precede the final rename has
        # little left to do (a whole-file fsync at the end would add its full duration to every download).
        if self.offset - self._flushed_at >= self._FLUSH_EVERY_BYTES:
            os.fsync(self.handle.fileno())
            self._flushed_at = self.offset

    def _drain(self, chunks: queue.Queue[bytes | None], step: Callable[[bytes], None]) -> None:
        while True:
            data = chunks.get()
            try:
                if data is None:
                    return
                if self._error is None:
                    step(data)
            except BaseException as exc:  # a full disk, a removed folder: raised in the receiving thread
                self._error = exc
            finally:
                chunks.task_done()

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        for chunks in self._queues:
            chunks.put(data)
        self.received += len(data)

    def flush(self) -> None:
        for chunks in self._queues:
            chunks.join()
        if self._error is not None:
            raise self._error
        self.received = self.offset

    def restart(self) -> None:
        self.flush()
        self.handle.truncate(0)
        self.offset = self.received = self.durable_at = 0
        self.checksum.reset()

    def make_durable(self) -> None:
        self.flush()
        os.fsync(self.handle.fileno())
        self.durable_at = self.offset

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for chunks in self._queues:
                chunks.put(None)
            for helper in self._helpers:
                helper.join()
            self.handle.close()


class ModelDownload:
    """Downloads one repository snapshot into ``folder``. ``run()`` blocks; call it from a worker thread."""

    def __init__(
        self,
        model_id: str,
        repo: str,
        revision: str,
        folder: Path,
        hub: HubClient,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        gguf_file: str | None = None,
    ) -> None:
        self.model_id, self.repo, self.revision, self.folder = model_id, repo, revision, folder
        self.gguf_file = gguf_file  # for a GGUF repository: the one file to fetch (None = the preferred quant)
        self.hub = hub
        self.cancel = cancel or CancelToken()
        self._progress_callback = progress
        self._endpoint: str | None = None
        self._speed_window: deque[tuple[float, int]] = deque()
        self._last_progress = 0.0
        self._restarts: Counter[str] = Counter()  # of the file being fetched, per endpoint
        self.state: DownloadState | None = None

    # --- orchestration ------------------------------------------------------------------------------------------

    def run(self) -> DownloadState:
        with model_lock(self.folder, self.model_id):
            self._emit(QUEUED, force=True)
            try:
                endpoint, commit, order = self.hub.resolve_revision(self.repo, self.revision)
                self._endpoint = endpoint
                snapshot = self.hub.snapshot(endpoint, self.repo, self.revision, commit, gguf_file=self.gguf_file)
                state = self.state = self._merge_state(snapshot)
                state.status, state.error, state.endpoint = DOWNLOADING, None, endpoint
                state.boot_id = current_boot_id()
                state.save(self.folder)
                self._check_disk_space(state)
                start = order.index(endpoint)
                for record in list(state.files.values()):
                    if record.status in (FILE_DONE, FILE_SKIPPED):
                        continue
                    self._download_file(state, record, order, start)
                    start = order.index(self._endpoint) if self._endpoint in order else start
                state.status = DONE
                state.save(self.folder)
                self._emit(DONE, force=True)
                logger.info("Downloaded %s (%s @ %s) into %s", self.model_id, self.repo, commit[:10], self.folder)
                return state
            except _Cancelled:
                return self._stop(PAUSED, None)
            except KeyboardInterrupt:
                self._stop(PAUSED, None)
                raise
            except DownloadError as exc:
                self._stop(FAILED, str(exc))
                raise

    def _stop(self, status: str, error: str | None) -> DownloadState:
        state = self.state
        if state is None:
            # Stopped before the file list was known (e.g. a listing refused): an unfinished earlier download keeps
            # its files and records why this run stopped; a finished one is left as it is, still usable.
            state = DownloadState.load(self.folder)
            if state is None or state.complete:
                self._emit(status, force=True, message=error)
                return DownloadState(self.model_id, self.repo, self.revision, "", status, error=error)
        state.status, state.error = status, error
        state.save(self.folder)
        self._emit(status, force=True, message=error)
        return state

    def _merge_state(self, snapshot: RepoSnapshot) -> DownloadState:
        """Keep what an earlier run got right; drop what the (possibly moved) revision no longer has."""
        old = DownloadState.load(self.folder)
        state = DownloadState(self.model_id, self.repo, self.revision, snapshot.commit, DOWNLOADING)
        wanted = {f.path for f in snapshot.files}
        if old is not None:
            for name, record in old.files.items():
                if name not in wanted:
                    for stale in (self.folder / name, part_path(self.folder, name)):
                        # A state written before names were checked may hold one that leads out of the folder.
                        if resolves_inside(self.folder, stale):
                            stale.unlink(missing_ok=True)
        for remote in snapshot.files:
            record = FileRecord(remote.path, remote.size, remote.sha256, remote.git_oid, remote.required)
            previous = old.files.get(remote.path) if old else None
            final = self.folder / remote.path
            if not all(resolves_inside(self.folder, p) for p in (final, part_path(self.folder, remote.path))):
                # The name was checked (hub_api); a symlink already in the folder could still lead it elsewhere.
                raise UnsafeRemoteFileNameError(
                    remote.path, self._endpoint or "", "it leads outside the model folder through a symbolic link"
                )
            if previous is not None and previous.same_content(remote):
                record.status, record.durable_bytes = previous.status, previous.durable_bytes
                if record.status == FILE_DONE and _size(final) != record.size:
                    record.status = FILE_PENDING  # deleted or truncated by hand since
                elif record.status != FILE_DONE and final.exists() and file_checksum_ok(final, record):
                    record.status = FILE_DONE  # finished after the last state save
                if record.status == FILE_SKIPPED:
                    record.status = FILE_PENDING  # the new revision lists it: try again
                # A reboot since the last run: bytes past the last fsync may be garbage.
                if old is not None and old.boot_id != current_boot_id():
                    part = part_path(self.folder, remote.path)
                    if _size(part) > record.durable_bytes:
                        with open(part, "r+b") as handle:
                            handle.truncate(record.durable_bytes)
            else:
                if previous is not None:  # a .part of other content (the revision moved): useless
                    part_path(self.folder, remote.path).unlink(missing_ok=True)
                # Without a record (state lost) a .part is resumed anyway: the checksum at the end judges it.
                # A finished file with the right checksum (e.g. the state was lost) is kept.
                if final.exists() and not file_checksum_ok(final, record):
                    final.unlink()
                if final.exists():
                    record.status = FILE_DONE
            state.files[remote.path] = record
        return state

    def _check_disk_space(self, state: DownloadState) -> None:
        remaining = state.total_bytes - state.done_bytes(self.folder)
        needed = int(remaining * _settings.DOWNLOAD_DISK_MARGIN)
        free = free_disk_bytes(self.folder)
        if needed > free:
            raise InsufficientDiskSpaceError(str(self.folder), needed, free)

    # --- one file -----------------------------------------------------------------------------------------------

    def _download_file(self, state: DownloadState, record: FileRecord, order: list[str], start: int) -> None:
        part = part_path(self.folder, record.path)
        part_size = _size(part)
        resume_from = part_size if part_size <= record.size else 0  # longer than the file: garbage
        transfer = _FileTransfer(self.folder, record, resume_from)
        try:
            self._fetch_until_verified(state, record, transfer, order, start)
        finally:
            transfer.close()
        if record.status == FILE_DONE:
            os.replace(part, self.folder / record.path)
            fsync_dir((self.folder / record.path).parent)
        else:
            part.unlink(missing_ok=True)
        # The state is saved periodically and at the end, not after every file: a file finished just before a crash
        # is recognised by its checksum on the next run (see _merge_state).

    def _fetch_until_verified(
        self, state: DownloadState, record: FileRecord, transfer: _FileTransfer, order: list[str], start: int
    ) -> None:
        index = start
        failures = 0
        attempts = 0
        refetched_corrupt = False
        tried_since_progress: set[str] = set()
        record.status = FILE_PARTIAL
        self._restarts.clear()
        while True:
            if self.cancel.cancelled:
                raise _Cancelled
            endpoint = order[index]
            self._endpoint = endpoint
            before = transfer.offset
            attempts += 1
            try:
                try:
                    self._transfer(state, record, transfer, endpoint)
                except _RestartFile as exc:
                    self._start_over(transfer, endpoint, str(exc))
                    continue
            except _EndpointExhausted as exc:
                following = self._next_endpoint(order, index)
                if following is None:
                    # The .part stays as it is: a later run resumes it, and the checksum judges it then.
                    raise FileRestartLimitError(record.path, endpoint, str(exc), MAX_RESTARTS_PER_ENDPOINT) from None
                index = following
                logger.warning(
                    "%s: %s on %s, again; continuing from byte %d on %s",
                    record.path, exc, endpoint, transfer.offset, order[index],
                )
                continue
            except _NotFound:
                if record.required:
                    raise RemoteFileNotFoundError(self.repo, record.path, endpoint) from None
                logger.info("Optional file %s is not on %s; skipping it", record.path, endpoint)
                record.status = FILE_SKIPPED
                return
            except _Transient as exc:
                transfer.flush()
                if self.cancel.cancelled:
                    raise _Cancelled from None
                if transfer.offset - before >= PROGRESS_RESETS_RETRIES_BYTES:
                    failures, tried_since_progress = 0, set()
                else:
                    failures += 1
                tried_since_progress.add(endpoint)
                if failures > _settings.DOWNLOAD_RETRIES:
                    raise FileDownloadFailedError(record.path, endpoint, str(exc), attempts) from None
                following = self._next_endpoint(order, index)
                index = index if following is None else following
                logger.warning(
                    "%s: %s on %s; continuing from byte %d on %s",
                    record.path, exc, endpoint, transfer.offset, order[index],
                )
                usable = sum(1 for e in order if self._restarts[e] <= MAX_RESTARTS_PER_ENDPOINT)
                if failures and len(tried_since_progress) >= usable:
                    # Every endpoint failed in a row: wait before the next round (2 s, then longer).
                    backoff = _settings.DOWNLOAD_BACKOFF_S
                    if self.cancel.wait(backoff[min(failures - 1, len(backoff) - 1)]):
                        raise _Cancelled from None
                    tried_since_progress = set()
                continue
            self._emit(VERIFYING, record=record, offset=transfer.offset, force=True)
            ok, actual = transfer.checksum.matches()
            if ok:
                transfer.make_durable()
                record.status, record.durable_bytes = FILE_DONE, record.size
                return
            if refetched_corrupt:
                raise ChecksumMismatchError(record.path, transfer.checksum.expected or "", actual)
            logger.warning("%s failed its checksum; fetching it again once", record.path)
            refetched_corrupt = True
            transfer.restart()

    def _start_over(self, transfer: _FileTransfer, endpoint: str, reason: str) -> None:
        """Throw the ``.part`` away and fetch the file from byte 0, or :class:`_EndpointExhausted` once ``endpoint``
        has used up its ``MAX_RESTARTS_PER_ENDPOINT`` for this file (the ``.part`` is then kept)."""
        self._restarts[endpoint] += 1
        if self._restarts[endpoint] > MAX_RESTARTS_PER_ENDPOINT:
            raise _EndpointExhausted(reason)
        logger.warning(
            "%s: %s; fetching the file again from the start (%d of %d on %s)",
            transfer.record.path, reason, self._restarts[endpoint], MAX_RESTARTS_PER_ENDPOINT, endpoint,
        )
        transfer.restart()

    def _next_endpoint(self, order: list[str], index: int) -> int | None:
        """The index of the next endpoint after ``index`` (round the list) that has restarts left for this file."""
        for step in range(1, len(order) + 1):
            candidate = (index + step) % len(order)
            if self._restarts[order[candidate]] <= MAX_RESTARTS_PER_ENDPOINT:
                return candidate
        return None

    def _transfer(self, state: DownloadState, record: FileRecord, transfer: _FileTransfer, endpoint: str) -> None:
        """One HTTP request's worth of bytes, from ``transfer.offset`` on. Returns when the file is complete."""
        transfer.flush()
        if transfer.offset == record.size and record.size > 0:
            return
        url = started_at = self.hub.file_url(endpoint, self.repo, state.commit, record.path)
        interrupter = SocketInterrupter()
        try:
            with self.cancel.callback(interrupter.fire):
                for _hop in range(6):
                    # Redirects are followed here, so the token policy applies to every hop (a CDN gets none).
                    headers = {
                        "Accept-Encoding": "identity",
                        "User-Agent": "Hearth",
                        **self.hub.auth_headers(url, started_at=started_at),
                    }
                    if transfer.offset:
                        headers["Range"] = f"bytes={transfer.offset}-"
                    with raw_http.get(
                        url, headers, timeout=_settings.HUB_READ_TIMEOUT_S, on_socket=interrupter.attach_socket
                    ) as response:
                        location = response.headers.get("location")
                        if response.status in (301, 302, 303, 307, 308) and location:
                            url = urljoin(url, location)
                            continue
                        self._check_status(response.status, response.headers, transfer, endpoint)
                        self._receive(state, record, transfer, response)
                        return
                raise _Transient("too many redirects")
        except (OSError, http.client.HTTPException) as exc:
            if self.cancel.cancelled:
                raise _Cancelled from None
            raise _Transient(_describe_transport(exc)) from None
        finally:
            interrupter.detach()

    def _check_status(self, status: int, headers: Mapping[str, str], transfer: _FileTransfer, endpoint: str) -> None:
        if status == 404:
            raise _NotFound
        if status in (401, 403):
            raise GatedRepoError(self.repo, self._endpoint or "", status)
        if status == 416:
            raise _RestartFile("the server cannot continue from byte %d" % transfer.offset)
        if status >= 500 or status == 429:
            raise _Transient(f"HTTP {status}")
        size = transfer.record.size
        if status == 200:
            start = 0
        elif status == 206:
            content_range = headers.get("content-range", "")
            try:
                start = int(content_range.split()[1].split("-")[0])
                total = content_range.rsplit("/", 1)[1].strip()
            except (IndexError, ValueError):
                raise _RestartFile(f"unreadable Content-Range {content_range!r}") from None
            if start != transfer.offset:
                raise _RestartFile(f"asked for byte {transfer.offset}, got {start}")
            if total != "*" and total != str(size):
                raise _RestartFile(f"the server says the file has {total} bytes, the listing {size}")
        else:
            raise _Transient(f"unexpected HTTP {status}")
        # A longer body is refused before a byte of it is written (see the module docstring); a shorter one is just
        # a connection that will close early, continued from where it stops.
        announced = headers.get("content-length", "").strip()
        if announced.isdigit() and start + int(announced) > size:
            raise _RestartFile(f"the server announces {start + int(announced)} bytes, the listing {size}")
        if status == 200 and transfer.offset:
            self._start_over(transfer, endpoint, "the server ignored the Range request")

    def _receive(
        self, state: DownloadState, record: FileRecord, transfer: _FileTransfer, response: raw_http.RawResponse
    ) -> None:
        last_durable = time.monotonic()
        for view in response.read_chunks():
            if transfer.received + len(view) > record.size:
                raise _RestartFile(f"the server sent more than the {record.size} bytes the listing announced")
            transfer.write(bytes(view))  # a copy: the view's buffer is reused for the next read
            if self.cancel.cancelled:
                raise _Cancelled
            now = time.monotonic()
            if now - last_durable >= DURABLE_EVERY_S:
                transfer.make_durable()
                record.durable_bytes = transfer.offset
                state.save(self.folder)
                last_durable = now
            self._emit(DOWNLOADING, record=record, offset=transfer.received)
        transfer.flush()
        if transfer.offset < record.size:
            raise _Transient(f"the connection closed at byte {transfer.offset} of {record.size}")

    # --- progress -----------------------------------------------------------------------------------------------

    def _emit(
        self,
        status: str,
        *,
        record: FileRecord | None = None,
        offset: int = 0,
        force: bool = False,
        message: str | None = None,
    ) -> None:
        if self._progress_callback is None:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        state = self.state
        done = total = 0
        if state is not None:
            total = state.total_bytes
            if record is None:
                done = state.done_bytes(self.folder)
            else:
                others = (r for r in state.files.values() if r is not record and r.status == FILE_DONE)
                done = sum(r.size for r in others) + offset
        self._speed_window.append((now, done))
        while len(self._speed_window) > 2 and now - self._speed_window[0][0] > 3.0:
            self._speed_window.popleft()
        speed = eta = None
        first_time, first_done = self._speed_window[0]
        if now - first_time > 0.2 and done > first_done:
            speed = (done - first_done) / (now - first_time)
            eta = (total - done) / speed if speed else None
        self._progress_callback(
            DownloadProgress(
                model_id=self.model_id,
                state=status,
                file=record.path if record else None,
                file_done=offset,
                file_total=record.size if record else 0,
                done=done,
                total=total,
                speed_bps=speed,
                eta_s=eta,
                endpoint=self._endpoint,
                message=message,
            )
        )


__all__ = [
    "CancelToken",
    "DownloadProgress",
    "DownloadState",
    "ModelDownload",
    "file_checksum_ok",
    "is_locked",
    "part_path",
]


