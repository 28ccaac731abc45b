"""A real HTTP server on 127.0.0.1 that imitates the Hugging Face Hub for download tests, with fault injection.

Stdlib only (no pytest needed), served from daemon threads like ``tests/openai_test_server.py``.

Usage::

    from tests.mock_hub import Faults, MockHub, make_random_file

    weights = make_random_file(tmp_path / "model.safetensors", 3 << 20, seed=1)   # served from disk, streamed
    with MockHub(token="hf_test") as hub:
        commit = hub.add_repo("acme/tiny", {"config.json": b"{}", "model.safetensors": weights})
        url = f"{hub.endpoint}/acme/tiny/resolve/main/model.safetensors"
        ...
        hub.faults = Faults(drop_after_bytes=1 << 20)                 # next matching GET is cut after 1 MiB
        hub.queue_fault(Faults(status=503, times=2))                  # ... then two 503s, then normal service
        [get] = hub.requests_for("*/model.safetensors", method="GET")
        assert get.range_header == "bytes=1048576-"
        assert all("authorization" not in r.headers for r in hub.log)
        hub.stop_listener()                                            # new connections are refused; log kept

Endpoints (as on huggingface.co):

* ``GET /api/models/{repo}[/revision/{rev}]`` - model info: ``id``, ``modelId``, ``sha``, ``private``, ``gated``,
  ``siblings`` (with ``?blobs=true`` each sibling also has ``blobId``, ``size`` and ``lfs``). ``rev`` is a branch
  name or a full commit sha; revisions are URL-quoted (``refs%2Fpr%2F1``).
* ``GET /api/models/{repo}/tree/{rev}[/{subpath}][?recursive=true]`` - the Hub's tree listing, paginated by
  ``tree_page_size`` entries with a ``Link: <...cursor=...>; rel="next"`` header. As on the Hub, a file's ``oid``
  is the git blob sha1 of what git stores: the content for ordinary files, the LFS *pointer* for LFS files (whose
  content sha256 is ``lfs.oid``). Directory entries are listed too, also with ``recursive=true`` (the Hub does).
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` - the bytes, with ``Content-Length``, ``Accept-Ranges: bytes``,
  ``ETag`` (sha256 for LFS files, git blob sha1 otherwise), ``X-Repo-Commit`` and, for LFS files,
  ``X-Linked-Etag``/``X-Linked-Size``. ``Range: bytes=N-``, ``bytes=N-M`` and ``bytes=-N`` give 206 with
  ``Content-Range``; an unsatisfiable range gives 416 with ``Content-Range: bytes */SIZE``; other Range forms
  (several ranges, garbage) are ignored (200), as RFC 9110 allows. With ``add_repo(..., redirect_lfs=True)`` an LFS
  file is answered with a 302 to ``/cdn/{sha256}`` (the Hub's CDN), which serves the same bytes with the same
  Range support and no auth. With ``MockHub(separate_cdn=True)`` the CDN listens on its own port (another origin,
  so a client must not forward the Authorization header there); ``cdn_endpoint`` is its address.
* Errors as on the Hub: 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``, and
  for a gated repo's files (metadata stays public, as on the Hub) 401 without ``Authorization`` or 403 with a
  token other than ``hub.token``, both with ``X-Error-Code: GatedRepo``. Bodies are JSON ``{"error": "..."}`` and
  the message is also in ``X-Error-Message``.

Connections are HTTP/1.1 keep-alive. Whole-file GETs without faults go through ``os.sendfile``.

Faults (``hub.faults``, a mutable ``Faults``; more rules with ``hub.queue_fault``). A rule fires on a request when
it still has ``times`` left (None = forever), its ``applies_to`` covers the request ("resolve": ``/resolve/`` and
``/cdn/``; "api": ``/api/``; "all"), its optional ``method`` matches, ``path_glob`` matches (``fnmatch``, ``*``
crosses ``/``; tried against the URL path, raw and unquoted, and against the repo file path, so
``"*.safetensors"`` matches direct and CDN downloads alike), and at least one of its faults can act on this
request: ``status``/``stall_s`` act on any request, ``ignore_range`` on a file request carrying a Range header,
the body faults (drop, reset, throttle, corrupt) on a GET that returns file bytes. So a drop rule is not used up
by a HEAD probe or a 302. The first rule that fires (``hub.faults`` first, then the queue in order) is the only
one applied to that request; its ``fired`` count goes up and the log record's ``fault`` describes it.

All the fields of one rule combine, in this order: ``stall_s`` (wait before answering) -> ``status`` (answer with
that status and a JSON error body; nothing else applies) -> ``ignore_range`` (200, whole file) -> the body:
``corrupt_offset`` flips one byte, paced by ``throttle_bytes_per_s``, cut after ``reset_after_bytes`` (RST) or else
``drop_after_bytes`` (clean FIN). A cut after >= the body length still closes (or resets) the connection after a
complete body. After a reset the client may see fewer bytes than were written (the kernel drops unread data).
A size lie: ``extra_bytes`` sends that many junk bytes after the asked range (counted in ``Content-Length``), and
``no_content_length`` sends no ``Content-Length`` at all (the body ends when the connection closes).

Hostile listings (attributes of the hub, read on every tree request): ``tree_entry_patches`` maps a file path to
fields merged into its listed entry (a dict value merges into a dict field, e.g. ``{"lfs": {"size": "big"}}``);
``tree_extra_entries`` are raw entries added to the first page (names no real file can have); ``tree_pagination``
is "honest", "endless" (every page links to a new cursor, pages past the end repeat the listing) or "repeat"
(every page links to itself); ``tree_link_base`` replaces ``endpoint`` in front of the Link URLs (another server).

Log: ``hub.log`` is a snapshot list of ``RequestRecord`` (one per request, appended on arrival and updated as the
answer goes out): ``method, path, query, headers (lower-cased keys), range_header, status, body_bytes_sent,
fault`` (iterable as that 8-tuple), plus ``listener``, ``client_disconnected``, ``finished``. ``status`` is set
before the headers go out and ``body_bytes_sent`` counts bytes handed to the kernel before each write, so both are
right as soon as the client has read the answer; ``finished``/``client_disconnected`` are set just after (call
``hub.wait_idle()`` before asserting on them). Helpers: ``requests_for(glob, method=None)``, ``clear_log()``,
``wait_for(predicate, timeout)``, ``wait_idle(timeout)``.

Run ``python -m tests.mock_hub --port 8080 --repo owner/name=/path/to/folder`` to serve folders by hand.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

logger = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20  # read/write unit for served bodies and for hashing
DEFAULT_LFS_THRESHOLD = 1 << 20
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")
LAST_MODIFIED = "2024-01-01T00:00:00.000Z"  # fixed, so that metadata is deterministic
_UNSATISFIABLE: Literal["unsatisfiable"] = "unsatisfiable"

AppliesTo = Literal["resolve", "api", "all"]


# --- helpers ------------------------------------------------------------------------------------------------------


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of ``data``: ``sha1(b"blob <size>\\0" + data)``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def random_bytes(size_bytes: int, seed: int | str, offset: int = 0) -> bytes:
    """The same deterministic pseudo-random bytes ``make_random_file`` writes (from ``offset``), in memory."""
    out = bytearray()
    block, skip = divmod(offset, BLOCK_SIZE)
    while len(out) < size_bytes + skip:
        out += _random_block(seed, block)
        block += 1
    return bytes(out[skip : skip + size_bytes])


def make_random_file(path: str | os.PathLike[str], size_bytes: int, seed: int | str = 0) -> Path:
    """Write ``size_bytes`` deterministic pseudo-random bytes to ``path`` (about 0.5 GB/s) and return the path.

    Block ``i`` (1 MiB) is ``shake_128(f"{seed}:{i}")``, so the content depends only on ``seed`` and ``size_bytes``
    (a shorter file is a prefix of a longer one with the same seed).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as fh:
        written, block = 0, 0
        while written < size_bytes:
            chunk = _random_block(seed, block)[: size_bytes - written]
            fh.write(chunk)
            written += len(chunk)
            block += 1
    return target


def _random_block(seed: int | str, index: int) -> bytes:
    return hashlib.shake_128(f"hearth-mock-hub:{seed}:{index}".encode()).digest(BLOCK_SIZE)


def parse_range(header: str | None, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """``(first, last)`` inclusive for a single satisfiable byte range, ``"unsatisfiable"``, or None to ignore it."""
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or (not match[1] and not match[2]):
        return None  # several ranges, another unit, or garbage: serve the whole file
    if match[1]:
        first = int(match[1])
        if match[2] and int(match[2]) < first:
            return None  # syntactically invalid: ignored
        if first >= size:
            return _UNSATISFIABLE
        return first, min(int(match[2]) if match[2] else size - 1, size - 1)
    suffix = int(match[2])
    if suffix == 0 or size == 0:
        return _UNSATISFIABLE
    return max(0, size - suffix), size - 1


# --- repository model ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubFile:
    """One file of a commit. ``data`` for in-memory files, ``source`` for files served from disk."""

    path: str
    size: int
    sha256: str  # of the content (for every file; the Hub only shows it for LFS files)
    content_oid: str  # git blob sha1 of the content
    is_lfs: bool
    data: bytes | None = field(default=None, repr=False)
    source: Path | None = None

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.sha256, self.size)

    @property
    def oid(self) -> str:
        """The git oid the Hub lists: the pointer's blob sha1 for LFS files, else the content's."""
        return git_blob_oid(self.pointer) if self.is_lfs else self.content_oid

    @property
    def etag(self) -> str:
        """What the Hub sends as ETag (unquoted): sha256 for LFS files, the git blob sha1 otherwise."""
        return self.sha256 if self.is_lfs else self.content_oid

    def lfs_info(self) -> dict[str, Any] | None:
        if not self.is_lfs:
            return None
        return {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}


@dataclass(frozen=True)
class _Commit:
    sha: str
    files: dict[str, HubFile]
    dirs: dict[str, str]  # directory path -> deterministic tree oid


@dataclass
class _Repo:
    repo_id: str
    gated: bool | str = False
    redirect_lfs: bool = False
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, _Commit] = field(default_factory=dict)

    def commit_for(self, revision: str) -> _Commit | None:
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)


def _hash_source(path: Path) -> tuple[int, str, str]:
    """``(size, sha256, git blob sha1)`` of a file, streamed in 1 MiB blocks."""
    size = path.stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    buffer = bytearray(BLOCK_SIZE)
    view = memoryview(buffer)
    read = 0
    with open(path, "rb") as fh:
        while True:
            n = fh.readinto(buffer)
            if not n:
                break
            sha256.update(view[:n])
            sha1.update(view[:n])
            read += n
    if read != size:
        raise OSError(f"{path} changed size while it was hashed")
    return size, sha256.hexdigest(), sha1.hexdigest()


def _clean_repo_path(path: str) -> str:
    cleaned = path.replace("\\", "/").strip("/")
    parts = cleaned.split("/")
    if not cleaned or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid file path in repo: {path!r}")
    return cleaned


# --- faults -------------------------------------------------------------------------------------------------------


@dataclass
class Faults:
    """One fault rule (see the module docstring for matching and how the fields combine). Mutable."""

    drop_after_bytes: int | None = None  # send this many body bytes, then close cleanly (FIN)
    reset_after_bytes: int | None = None  # send this many body bytes, then reset (RST); wins over drop
    status: int | None = None  # answer with this status and a JSON error body
    retry_after_s: int | None = None  # with status: also send ``Retry-After``
    throttle_bytes_per_s: float | None = None  # pace the body at this average rate
    ignore_range: bool = False  # answer 200 with the whole file even when a Range was asked
    corrupt_offset: int | None = None  # flip (xor 0xFF) the byte at this absolute file offset
    stall_s: float | None = None  # read the request, then wait this long before answering
    extra_bytes: int | None = None  # after the asked bytes, send this many more junk bytes (in Content-Length)
    no_content_length: bool = False  # send no Content-Length: the body ends when the connection closes
    path_glob: str = "*"
    applies_to: AppliesTo = "resolve"
    method: str | None = None  # "GET" / "HEAD"; None = any
    times: int | None = 1  # how many requests it may fire on; None = forever
    fired: int = 0  # how many it has fired on (updated by the server)

    def __post_init__(self) -> None:
        if self.applies_to not in ("resolve", "api", "all"):
            raise ValueError(f"applies_to must be 'resolve', 'api' or 'all', not {self.applies_to!r}")

    @property
    def has_body_faults(self) -> bool:
        return any(
            v is not None
            for v in (
                self.drop_after_bytes,
                self.reset_after_bytes,
                self.throttle_bytes_per_s,
                self.corrupt_offset,
                self.extra_bytes,
            )
        ) or self.no_content_length

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def describe(self) -> str:
        """e.g. ``"throttle_bytes_per_s=1000+drop_after_bytes=10"``."""
        parts = [
            f"{name}={value}"
            for name in (
                "stall_s",
                "status",
                "retry_after_s",
                "ignore_range",
                "corrupt_offset",
                "throttle_bytes_per_s",
                "reset_after_bytes",
                "drop_after_bytes",
                "extra_bytes",
                "no_content_length",
            )
            # Identity checks: an offset of 0 is a real fault, though 0 == False.
            if (value := getattr(self, name)) is not None and value is not False
        ]
        return "+".join(parts)

    def can_act_on(self, method: str, plan: "_Plan", range_header: str | None) -> bool:
        if self.exhausted or not self.describe():
            return False
        if self.applies_to != "all" and self.applies_to != plan.category:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        if not any(fnmatchcase(target, self.path_glob) for target in plan.targets):
            return False
        if self.status is not None or self.stall_s:
            return True
        if plan.file is None:
            return False
        if self.ignore_range and range_header:
            return True
        return self.has_body_faults and method == "GET" and plan.has_body


# --- request log --------------------------------------------------------------------------------------------------


@dataclass
class RequestRecord:
    """One request as the server saw it. Appended on arrival, updated while the answer goes out."""

    method: str
    path: str  # as sent (percent-encoded), without the query
    query: str  # raw query string ("" when none)
    headers: dict[str, str]  # lower-cased keys
    range_header: str | None
    status: int | None = None  # None until the status line is sent
    body_bytes_sent: int = 0
    fault: str | None = None  # ``Faults.describe()`` of the rule that fired, if any
    listener: str = "hub"  # "hub" or "cdn" (the separate CDN port)
    client_disconnected: bool = False
    finished: bool = False

    def __iter__(self) -> Iterator[Any]:
        """Unpacks as ``(method, path, query, headers, range_header, status, body_bytes_sent, fault)``."""
        yield from (
            self.method,
            self.path,
            self.query,
            self.headers,
            self.range_header,
            self.status,
            self.body_bytes_sent,
            self.fault,
        )

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


# --- request handling ---------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """What the answer to a request is, before faults: a JSON/empty body, or a file's bytes."""

    category: str  # "api", "resolve" (resolve + cdn) or "other"
    status: int = 200
    payload: Any = None  # JSON body; None = empty body
    headers: dict[str, str] = field(default_factory=dict)
    file: HubFile | None = None
    byte_range: tuple[int, int] | Literal["unsatisfiable"] | None = None
    targets: tuple[str, ...] = ()

    @property
    def has_body(self) -> bool:
        if self.file is None or self.byte_range == _UNSATISFIABLE:
            return False
        return self.file.size > 0


class _ClientGone(Exception):
    """The client disconnected mid-answer."""


class _Stopping(Exception):
    """The hub is stopping; abandon the answer."""



class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub
    server: "_Server"
    _record: RequestRecord | None = None

    def setup(self) -> None:
        super().setup()
        # Headers and a small JSON body go out in two writes: with Nagle's algorithm the second waits for the
        # client's delayed ACK, about 40 ms per metadata request (a 1,000-page listing would take 40 s).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.hub._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.hub._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        logger.debug("mock hub: " + format, *args)

    def send_response(self, code: int, message: str | None = None) -> None:
        if self._record is not None:
            self.server.hub._update(self._record, status=code)
        super().send_response(code, message)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle()

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_PUT(self) -> None:  # noqa: N802
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle()

    # --- dispatch ---

    def _handle(self) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        range_header = headers.get("range")
        self._record = record = hub._new_record(
            RequestRecord(self.command, url.path, url.query, headers, range_header, listener=self.server.name)
        )
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            plan = hub._plan(self.command, url.path, url.query, headers, self.server.name)
            fault = hub._pick_fault(self.command, plan, range_header)
            if fault is not None:
                hub._update(record, fault=fault.describe())
                logger.debug("mock hub: fault %s on %s %s", fault.describe(), self.command, url.path)
                if fault.stall_s:
                    self._pause(fault.stall_s)
                if fault.status is not None:
                    message = f"Injected fault: HTTP {fault.status}"
                    extra = {"X-Error-Message": message}
                    if fault.retry_after_s is not None:
                        extra["Retry-After"] = str(fault.retry_after_s)
                    self._send_json(fault.status, {"error": message}, extra)
                    return
            if plan.file is not None:
                self._send_file(plan, fault)
            else:
                self._send_json(plan.status, plan.payload, plan.headers)
        except _ClientGone:
            self.close_connection = True
            if not hub._stopping.is_set():
                hub._update(record, client_disconnected=True)
                logger.debug("mock hub: client disconnected during %s %s", self.command, url.path)
        except _Stopping:
            self.close_connection = True
        finally:
            hub._update(record, finished=True)
            self._record = None

    # --- answers ---

    def _send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self._end_headers()
        if body and self.command != "HEAD":
            self._sendall(body)

    def _send_file(self, plan: _Plan, fault: Faults | None) -> None:
        hub_file = plan.file
        assert hub_file is not None
        size = hub_file.size
        byte_range = None if (fault is not None and fault.ignore_range) else plan.byte_range
        if byte_range == _UNSATISFIABLE:
            self._send_json(
                416,
                {"error": "Requested Range Not Satisfiable"},
                {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
            )
            return
        if byte_range is None:
            status, first, last = 200, 0, size - 1
        else:
            status, (first, last) = 206, byte_range
        length = max(0, last - first + 1)
        self.send_response(status)
        for name, value in plan.headers.items():
            self.send_header(name, value)
        if fault is not None and fault.no_content_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(length + ((fault.extra_bytes or 0) if fault else 0)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self._end_headers()
        if self.command == "HEAD" or length == 0:
            return
        if fault is not None and fault.has_body_faults:
            self._send_body_with_faults(hub_file, first, length, fault)
        else:
            self._send_body(hub_file, first, length)

    def _send_body(self, hub_file: HubFile, first: int, length: int) -> None:
        """The fast path: ``os.sendfile`` from disk, or memoryview slices of in-memory data."""
        hub = self.server.hub
        if hub_file.data is not None:
            view = memoryview(hub_file.data)
            for offset in range(first, first + length, 4 * BLOCK_SIZE):
                self._sendall(view[offset : min(first + length, offset + 4 * BLOCK_SIZE)])
            return
        assert hub_file.source is not None
        with open(hub_file.source, "rb") as fh:
            if not hasattr(os, "sendfile"):
                self._send_from_file(fh, first, length)
                return
            offset, remaining = first, length
            out_fd, in_fd = self.connection.fileno(), fh.fileno()
            while remaining > 0:
                if hub._stopping.is_set():
                    raise _Stopping
                planned = min(remaining, 8 * BLOCK_SIZE)
                hub._add_sent(self._record, planned)  # counted first: see _sendall
                try:
                    sent = os.sendfile(out_fd, in_fd, offset, planned)
                except OSError as exc:
                    hub._add_sent(self._record, -planned)
                    if hub._stopping.is_set():
                        raise _Stopping from exc
                    raise _ClientGone from exc
                hub._add_sent(self._record, sent - planned)
                if sent == 0:
                    raise _ClientGone  # the file shrank under us; the client will see a short body
                offset += sent
                remaining -= sent

    def _send_from_file(self, fh: Any, first: int, length: int) -> None:
        buffer = bytearray(BLOCK_SIZE)
        view = memoryview(buffer)
        fh.seek(first)
        remaining = length
        while remaining > 0:
            n = fh.readinto(view[: min(BLOCK_SIZE, remaining)])
            if not n:
                raise _ClientGone
            self._sendall(view[:n])
            remaining -= n

    def _send_body_with_faults(self, hub_file: HubFile, first: int, length: int, fault: Faults) -> None:
        hub = self.server.hub
        reset = fault.reset_after_bytes is not None
        cut = fault.reset_after_bytes if reset else fault.drop_after_bytes
        to_send = length if cut is None else max(0, min(cut, length))
        rate = fault.throttle_bytes_per_s
        chunk = BLOCK_SIZE if not rate else max(1, min(64 * 1024, int(rate / 20)))
        fh = open(hub_file.source, "rb") if hub_file.data is None and hub_file.source is not None else None
        try:
            started = time.monotonic()
            position, sent = first, 0
            while sent < to_send:
                n = min(chunk, to_send - sent)
                if fh is not None:
                    fh.seek(position)
                    piece = fh.read(n)
                    if not piece:
                        raise _ClientGone  # the file shrank
                else:
                    assert hub_file.data is not None
                    piece = hub_file.data[position : position + n]
                k = fault.corrupt_offset
                if k is not None and position <= k < position + len(piece):
                    flipped = bytearray(piece)
                    flipped[k - position] ^= 0xFF
                    piece = bytes(flipped)
                self._sendall(piece)
                position += len(piece)
                sent += len(piece)
                if rate:
                    delay = started + sent / rate - time.monotonic()
                    if delay > 0 and hub._stopping.wait(delay):
                        raise _Stopping
        finally:
            if fh is not None:
                fh.close()
        if fault.extra_bytes and sent == length:
            self._sendall(b"\xa5" * fault.extra_bytes)
        if cut is not None:
            self.close_connection = True  # a drop: the server then closes the socket (FIN)
            if reset:
                self._reset_connection()

    # --- I/O ---

    def _end_headers(self) -> None:
        if self.server.hub._stopping.is_set():
            raise _Stopping
        try:
            self.end_headers()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            raise _ClientGone from exc

    def _sendall(self, data: bytes | memoryview) -> None:
        hub = self.server.hub
        if hub._stopping.is_set():
            raise _Stopping
        # Counted before the send, so that a client that has read the whole body already sees the full count in
        # the log (``finished`` may still lag: use ``hub.wait_idle()``); taken back if the send fails.
        hub._add_sent(self._record, len(data))
        try:
            self.connection.sendall(data)
        except OSError as exc:
            hub._add_sent(self._record, -len(data))
            if hub._stopping.is_set():
                raise _Stopping from exc
            raise _ClientGone from exc

    def _reset_connection(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
        linger = struct.pack("hh" if sys.platform == "win32" else "ii", 1, 0)
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            self.rfile.close()  # the makefile() reference would otherwise defer the real close
            self.connection.close()
        except OSError:
            pass

    def _pause(self, seconds: float) -> None:
        """Sleep, but stop at once if the client hangs up (its socket turns readable at EOF) or the hub stops."""
        hub = self.server.hub
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if hub._stopping.is_set():
                raise _Stopping
            try:
                readable, _, _ = select.select([self.connection], [], [], min(remaining, 0.05))
                peeked = self.connection.recv(1, socket.MSG_PEEK) if readable else b"?"
            except (OSError, ValueError) as exc:
                raise _ClientGone from exc
            if not peeked:
                raise _ClientGone
            if readable:
                time.sleep(min(remaining, 0.01))  # bytes from the client (a next request): not ours to read now


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64
    hub: "MockHub"
    name: str


# --- the hub ------------------------------------------------------------------------------------------------------


class MockHub:
    """A fake huggingface.co on 127.0.0.1 (see the module docstring). Context manager, or ``start()``/``stop()``.

    ``token``: the one token accepted for gated repos (``Authorization: Bearer <token>``); None accepts none.
    ``port``: 0 for a free port. ``separate_cdn``: serve ``/cdn/`` redirects from a second port.
    ``tree_page_size``: entries per tree page (the Hub uses 1000).
    ``tree_entry_patches``, ``tree_extra_entries``, ``tree_pagination``, ``tree_link_base``: hostile listings (see
    the module docstring); attributes, so a test can set them on a running hub.
    """

    def __init__(
        self,
        *,
        token: str | None = "hf_mock_token",
        port: int = 0,
        separate_cdn: bool = False,
        tree_page_size: int = 1000,
    ) -> None:
        self.token = token
        self.separate_cdn = separate_cdn
        self.tree_page_size = tree_page_size
        self.tree_entry_patches: dict[str, dict[str, Any]] = {}
        self.tree_extra_entries: list[Any] = []
        self.tree_pagination: Literal["honest", "endless", "repeat"] = "honest"
        self.tree_link_base: str | None = None
        self.faults = Faults()
        self.queued_faults: list[Faults] = []
        self._requested_port = port
        self._port: int | None = None
        self._cdn_port: int | None = None
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, HubFile] = {}  # sha256 -> a file with that content (for /cdn/)
        self._hash_cache: dict[tuple[str, int, int], tuple[int, str, str]] = {}
        self._lock = threading.RLock()  # repos and faults
        self._log: list[RequestRecord] = []
        self._log_cond = threading.Condition()
        self._stopping = threading.Event()
        self._servers: list[tuple[_Server, threading.Thread]] = []
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    # --- lifecycle ---

    def start(self) -> "MockHub":
        """Start listening (again): after ``stop_listener``/``stop`` the same port(s) are reused."""
        if self._servers:
            return self
        self._stopping.clear()
        main = self._listen(self._port if self._port is not None else self._requested_port, "hub")
        self._port = int(main.server_address[1])
        if self.separate_cdn:
            cdn = self._listen(self._cdn_port or 0, "cdn")
            self._cdn_port = int(cdn.server_address[1])
        logger.debug("mock hub listening on %s", self.endpoint)
        return self

    def _listen(self, port: int, name: str) -> _Server:
        server = _Server(("127.0.0.1", port), _Handler)
        server.hub, server.name = self, name
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"mock-hub-{name}", daemon=True
        )
        thread.start()
        self._servers.append((server, thread))
        return server

    def stop_listener(self, *, close_connections: bool = False) -> None:
        """Close the listening socket(s): new connections are refused. Open keep-alive connections keep being
        served unless ``close_connections``. The log, repos and faults stay; ``start()`` listens again."""
        servers, self._servers = self._servers, []
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        if close_connections:
            self._close_connections()

    def stop(self) -> None:
        """Stop listening, abandon answers in progress and close every connection. The log stays."""
        self._stopping.set()
        self.stop_listener(close_connections=True)

    def __enter__(self) -> "MockHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return bool(self._servers)

    def _track(self, sock: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(sock)
            else:
                self._connections.discard(sock)

    def _close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in recv or send
            except OSError:
                pass

    # --- addresses ---

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the mock hub has not been started")
        return self._port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn_endpoint(self) -> str:
        """Where LFS redirects point: the hub itself, or the separate CDN port."""
        if self.separate_cdn:
            if self._cdn_port is None:
                raise RuntimeError("the mock hub has not been started")
            return f"http://127.0.0.1:{self._cdn_port}"
        return self.endpoint

    def file_url(self, repo_id: str, path: str, revision: str = "main") -> str:
        return f"{self.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"

    # --- repositories ---

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        *,
        revision: str = "main",
        gated: bool | str = False,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        redirect_lfs: bool = False,
    ) -> str:
        """Create ``repo_id`` (or point its branch ``revision`` at a new commit) and return the commit sha.

        ``files`` maps repo paths to bytes or to a ``Path`` served from disk (hashed once here, streamed; it must
        not change afterwards). A file is LFS when ``size >= lfs_threshold`` or its name ends in .safetensors,
        .bin or .gguf. ``gated``: True (shown as "auto"), "auto" or "manual". ``gated`` and ``redirect_lfs`` are
        per repo (the last call wins). The commit sha is the sha1 of the sorted paths and oids.
        """
        entries: dict[str, HubFile] = {}
        for raw_path, content in files.items():
            path = _clean_repo_path(raw_path)
            if isinstance(content, (bytes, bytearray, memoryview)):
                data = bytes(content)
                size, sha256, content_oid = len(data), hashlib.sha256(data).hexdigest(), git_blob_oid(data)
                source = None
            else:
                source = Path(content).resolve()
                data = None
                size, sha256, content_oid = self._hash_path(source)
            is_lfs = size >= lfs_threshold or path.lower().endswith(LFS_SUFFIXES)
            entries[path] = HubFile(path, size, sha256, content_oid, is_lfs, data, source)
        listing = "".join(f"{p}\0{entries[p].oid}\n" for p in sorted(entries))
        sha = hashlib.sha1(listing.encode()).hexdigest()
        commit = _Commit(sha, dict(sorted(entries.items())), _dir_oids(entries))
        with self._lock:
            repo = self._repos.get(repo_id) or _Repo(repo_id)
            repo.gated = "auto" if gated is True else gated
            repo.redirect_lfs = redirect_lfs
            repo.commits[sha] = commit
            repo.branches[revision] = sha
            self._repos[repo_id] = repo
            for hub_file in entries.values():
                self._blobs.setdefault(hub_file.sha256, hub_file)
        return sha

    def remove_repo(self, repo_id: str) -> None:
        with self._lock:
            self._repos.pop(repo_id, None)

    def commit_sha(self, repo_id: str, revision: str = "main") -> str:
        commit = self._commit(repo_id, revision)
        return commit.sha

    def get_file(self, repo_id: str, path: str, revision: str = "main") -> HubFile:
        """The served file (its ``size``, ``sha256``, ``content_oid``, ``oid``, ``etag``, ``is_lfs``)."""
        return self._commit(repo_id, revision).files[path]

    def _commit(self, repo_id: str, revision: str) -> _Commit:
        with self._lock:
            repo = self._repos[repo_id]
            commit = repo.commit_for(revision)
        if commit is None:
            raise KeyError(f"{repo_id} has no revision {revision!r}")
        return commit

    def _hash_path(self, path: Path) -> tuple[int, str, str]:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        cached = self._hash_cache.get(key)
        if cached is None:
            cached = self._hash_cache[key] = _hash_source(path)
        return cached

    # --- faults ---

    def queue_fault(self, fault: Faults | None = None, **fields: Any) -> Faults:
        """Add a rule consulted after ``hub.faults`` and the rules queued before it; returns it."""
        rule = dataclasses.replace(fault or Faults(), **fields)
        with self._lock:
            self.queued_faults.append(rule)
        return rule

    def clear_faults(self) -> None:
        with self._lock:
            self.faults = Faults()
            self.queued_faults.clear()

    def _pick_fault(self, method: str, plan: _Plan, range_header: str | None) -> Faults | None:
        with self._lock:
            for rule in (self.faults, *self.queued_faults):
                if rule.can_act_on(method, plan, range_header):
                    rule.fired += 1
                    return dataclasses.replace(rule)  # a snapshot: the test may edit the rule mid-answer
        return None

    # --- log ---

    @property
    def log(self) -> list[RequestRecord]:
        with self._log_cond:
            return list(self._log)

    def requests_for(self, path_glob: str = "*", method: str | None = None) -> list[RequestRecord]:
        """Records whose path (raw or unquoted) matches ``path_glob``, optionally only one method."""
        return [
            r
            for r in self.log
            if (method is None or r.method == method.upper())
            and (fnmatchcase(r.path, path_glob) or fnmatchcase(unquote(r.path), path_glob))
        ]

    def clear_log(self) -> None:
        with self._log_cond:
            self._log.clear()

    def wait_for(self, predicate: Callable[[list[RequestRecord]], bool], timeout: float) -> bool:
        """Wait until ``predicate(log)`` holds (checked on every log change, e.g. each block sent)."""
        deadline = time.monotonic() + timeout
        with self._log_cond:
            while True:
                if predicate(list(self._log)):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._log_cond.wait(remaining)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every logged request is finished (its handler has returned), e.g. before asserting on
        ``finished`` or ``client_disconnected``: the server updates a record just after the client sees the end."""
        return self.wait_for(lambda log: all(r.finished for r in log), timeout)

    def _new_record(self, record: RequestRecord) -> RequestRecord:
        with self._log_cond:
            self._log.append(record)
            self._log_cond.notify_all()
        return record

    def _update(self, record: RequestRecord, **changes: Any) -> None:
        with self._log_cond:
            for name, value in changes.items():
                setattr(record, name, value)
            self._log_cond.notify_all()

    def _add_sent(self, record: RequestRecord | None, n: int) -> None:
        if record is None:
            return
        with self._log_cond:
            record.body_bytes_sent += n
            self._log_cond.notify_all()

    # --- routing ---

    def _plan(self, method: str, raw_path: str, query: str, headers: Mapping[str, str], listener: str) -> _Plan:
        decoded = unquote(raw_path)
        segments = raw_path.strip("/").split("/")
        if method not in ("GET", "HEAD"):
            plan = _Plan("other", 405, {"error": f"Method {method} not allowed"}, {"Allow": "GET, HEAD"})
        elif segments[0] == "cdn" and len(segments) == 2:
            plan = self._plan_cdn(segments[1], headers)
        elif listener == "cdn":
            plan = _Plan("other", 404, {"error": "Not Found"})
        elif segments[:2] == ["api", "models"] and len(segments) >= 3:
            plan = self._plan_api(raw_path, segments[2:], query)
        elif "resolve" in segments[1:3]:
            plan = self._plan_resolve(raw_path, segments, headers)
        else:
            plan = _Plan("other", 404, {"error": "Not Found"})
        plan.targets = tuple(dict.fromkeys((raw_path, decoded, *plan.targets)))
        return plan

    def _split_repo(self, segments: list[str], keywords: tuple[str, ...]) -> tuple[str, list[str]] | None:
        """``(repo_id, rest)`` where ``rest`` starts with one of ``keywords`` (or is empty). Known repos win."""
        candidates = []
        for n in (2, 1):
            if len(segments) >= n and (len(segments) == n or segments[n] in keywords):
                candidates.append(("/".join(unquote(s) for s in segments[:n]), segments[n:]))
        with self._lock:
            for repo_id, rest in candidates:
                if repo_id in self._repos:
                    return repo_id, rest
        return candidates[0] if candidates else None

    def _error(self, status: int, code: str | None, message: str) -> _Plan:
        headers = {"X-Error-Message": message.encode("ascii", "replace").decode()}
        if code:
            headers["X-Error-Code"] = code
        return _Plan("other", status, {"error": message}, headers)

    def _repo_not_found(self, raw_path: str) -> _Plan:
        return self._error(
            404,
            "RepoNotFound",
            f"Repository Not Found for url: {self.endpoint}{raw_path}. Please make sure you specified the correct "
            "`repo_id` and `repo_type`. If you are trying to access a private or gated repo, make sure you are "
            "authenticated.",
        )

    def _revision_not_found(self, revision: str) -> _Plan:
        return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def _plan_api(self, raw_path: str, segments: list[str], query: str) -> _Plan:
        split = self._split_repo(segments, ("revision", "tree"))
        if split is None or (split[1] and len(split[1]) < 2):
            return _with_category(self._error(404, None, "Not Found"), "api")
        repo_id, rest = split
        with self._lock:
            repo = self._repos.get(repo_id)
        if repo is None:
            return _with_category(self._repo_not_found(raw_path), "api")
        revision = unquote(rest[1]) if rest else "main"
        commit = repo.commit_for(revision)
        if commit is None:
            return _with_category(self._revision_not_found(revision), "api")
        params = parse_qs(query)
        if not rest or rest[0] == "revision":
            if len(rest) > 2:
                return _with_category(self._error(404, None, "Not Found"), "api")
            blobs = params.get("blobs", ["false"])[-1].lower() in ("true", "1")
            return _Plan("api", payload=_model_info(repo, commit, blobs))
        subpath = "/".join(unquote(s) for s in rest[2:]).strip("/")
        recursive = params.get("recursive", ["false"])[-1].lower() in ("true", "1")
        entries = _tree(commit, subpath, recursive)
        if entries is None:
            return _with_category(
                self._error(404, "EntryNotFound", f"{subpath} does not exist on \"{revision}\""), "api"
            )
        entries = [self._patched(e) for e in entries]
        start = _decode_cursor(params.get("cursor", [""])[-1])
        size = self.tree_page_size
        if self.tree_pagination == "endless":
            page = [entries[(start + i) % len(entries)] for i in range(size)] if entries else []
        else:
            page = entries[start : start + size]
        if start == 0:
            page = page + list(self.tree_extra_entries)
        plan = _Plan("api", payload=page)
        next_query = {k: v[-1] for k, v in params.items()}
        if self.tree_pagination != "repeat":
            next_query["cursor"] = _encode_cursor(start + size)
        if self.tree_pagination != "honest" or start + size < len(entries):
            base = self.tree_link_base or self.endpoint
            plan.headers["Link"] = f'<{base}{raw_path}?{urlencode(next_query)}>; rel="next"'
        return plan

    def _patched(self, entry: dict[str, Any]) -> dict[str, Any]:
        patch = self.tree_entry_patches.get(entry["path"])
        if not patch:
            return entry
        merged = dict(entry)
        for name, value in patch.items():
            old = merged.get(name)
            merged[name] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
        return merged

    def _plan_resolve(self, raw_path: str, segments: list[str], headers: Mapping[str, str]) -> _Plan:
        split = self._split_repo(segments, ("resolve",))
        if split is None or len(split[1]) < 3:
            return _with_category(self._error(404, None, "Not Found"), "resolve")
        repo_id, rest = split
        with self._lock:
            repo = self._repos.get(repo_id)
        if repo is None:
            return _with_category(self._repo_not_found(raw_path), "resolve")
        path = "/".join(unquote(s) for s in rest[2:])
        if repo.gated:
            denied = self._gate(repo, headers)
            if denied is not None:
                denied.targets = (path,)
                return denied
        revision = unquote(rest[1])
        commit = repo.commit_for(revision)
        if commit is None:
            plan = _with_category(self._revision_not_found(revision), "resolve")
        elif path not in commit.files:
            plan = _with_category(
                self._error(404, "EntryNotFound", f"{path} does not exist on \"{revision}\""), "resolve"
            )
        else:
            hub_file = commit.files[path]
            file_headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
            if hub_file.is_lfs:
                file_headers["X-Linked-Etag"] = f'"{hub_file.sha256}"'
                file_headers["X-Linked-Size"] = str(hub_file.size)
            if hub_file.is_lfs and repo.redirect_lfs:
                # The Hub's 302 to its CDN: the ETag is the pointer's git oid, X-Linked-* describe the content.
                file_headers["ETag"] = f'"{hub_file.oid}"'
                file_headers["Location"] = f"{self.cdn_endpoint}/cdn/{hub_file.sha256}"
                plan = _Plan("resolve", 302, None, file_headers)
            else:
                file_headers["ETag"] = f'"{hub_file.etag}"'
                file_headers["Content-Type"] = "application/octet-stream"
                name = path.rsplit("/", 1)[-1]
                file_headers["Content-Disposition"] = (
                    f"inline; filename*=UTF-8''{quote(name)}; filename=\"{quote(name)}\";"
                )
                plan = _Plan("resolve", headers=file_headers, file=hub_file)
                plan.byte_range = parse_range(headers.get("range"), hub_file.size)
        plan.targets = (path,)
        return plan

    def _gate(self, repo: _Repo, headers: Mapping[str, str]) -> _Plan | None:
        authorization = headers.get("authorization", "")
        scheme, _, given = authorization.partition(" ")
        if self.token is not None and scheme.lower() == "bearer" and given.strip() == self.token:
            return None
        if not authorization:
            plan = self._error(
                401,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted. You must have access to it and be authenticated "
                "to access it. Please log in.",
            )
        else:
            plan = self._error(
                403,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized list. "
                f"Visit {self.endpoint}/{repo.repo_id} to ask for access.",
            )
        return _with_category(plan, "resolve")

    def _plan_cdn(self, raw_sha: str, headers: Mapping[str, str]) -> _Plan:
        sha256 = unquote(raw_sha)
        with self._lock:
            hub_file = self._blobs.get(sha256)
            paths = tuple(
                path
                for repo in self._repos.values()
                for commit in repo.commits.values()
                for path, candidate in commit.files.items()
                if candidate.sha256 == sha256
            )
        if hub_file is None:
            return _with_category(self._error(404, "NoSuchKey", "The specified key does not exist."), "resolve")
        plan = _Plan(
            "resolve",
            headers={
                "ETag": f'"{sha256}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            },
            file=hub_file,
            targets=paths,
        )
        plan.byte_range = parse_range(headers.get("range"), hub_file.size)
        return plan


def _with_category(plan: _Plan, category: str) -> _Plan:
    plan.category = category
    return plan


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    if not cursor:
        return 0
    try:
        return int(json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["offset"])
    except (ValueError, KeyError, TypeError):
        return 0


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _dir_oids(files: Mapping[str, HubFile]) -> dict[str, str]:
    dirs: set[str] = set()
    for path in files:
        parent = _parent(path)
        while parent:
            dirs.add(parent)
            parent = _parent(parent)
    oids = {}
    for directory in dirs:
        listing = "".join(f"{p}\0{f.oid}\n" for p, f in sorted(files.items()) if p.startswith(directory + "/"))
        oids[directory] = hashlib.sha1(f"tree {directory}\n{listing}".encode()).hexdigest()
    return oids


def _file_entry(hub_file: HubFile) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": hub_file.oid, "size": hub_file.size}
    lfs = hub_file.lfs_info()
    if lfs is not None:
        entry["lfs"] = lfs
    entry["path"] = hub_file.path
    return entry


def _tree(commit: _Commit, subpath: str, recursive: bool) -> list[dict[str, Any]] | None:
    """The Hub's listing of ``subpath`` ("" = root), or None when it is not a directory of the commit."""
    if subpath and subpath not in commit.dirs:
        return None
    prefix = subpath + "/" if subpath else ""

    def wanted(path: str) -> bool:
        return path.startswith(prefix) and (recursive or _parent(path) == subpath)

    dirs = [
        {"type": "directory", "oid": oid, "size": 0, "path": path}
        for path, oid in sorted(commit.dirs.items())
        if wanted(path)
    ]
    files = [_file_entry(f) for path, f in commit.files.items() if wanted(path)]
    if recursive:
        return sorted(dirs + files, key=lambda e: e["path"])
    return dirs + files


def _model_info(repo: _Repo, commit: _Commit, blobs: bool) -> dict[str, Any]:
    siblings = []
    for hub_file in commit.files.values():
        sibling: dict[str, Any] = {"rfilename": hub_file.path}
        if blobs:
            sibling["blobId"] = hub_file.oid
            sibling["size"] = hub_file.size
            if hub_file.is_lfs:
                lfs = hub_file.lfs_info() or {}
                sibling["lfs"] = {"sha256": hub_file.sha256, "size": hub_file.size, "pointerSize": lfs["pointerSize"]}
        siblings.append(sibling)
    return {
        "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
        "sha": commit.sha,
        "lastModified": LAST_MODIFIED,
        "createdAt": LAST_MODIFIED,
        "private": False,
        "disabled": False,
        "gated": repo.gated,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "usedStorage": sum(f.size for f in commit.files.values()),
    }


# --- standalone ---------------------------------------------------------------------------------------------------


def folder_files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` (recursively) by its posix path, skipping ``.git/`` and ``.cache/``."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and relative.parts[0] not in (".git", ".cache"):
            files[relative.as_posix()] = path
    return files


def _main(argv: list[str] | None = None) -> None:
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="A mock Hugging Face Hub serving local folders.")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--repo", action="append", default=[], metavar="OWNER/NAME=FOLDER", help="serve a folder (repeatable)"
    )
    parser.add_argument("--token", default="hf_mock_token", help="token accepted for gated repos")
    parser.add_argument("--gated", action="store_true", help="make every repo gated")
    parser.add_argument("--redirect-lfs", action="store_true", help="302 LFS files to /cdn/{sha256}")
    parser.add_argument("--separate-cdn", action="store_true", help="serve /cdn/ from a second port")
    parser.add_argument("--lfs-threshold", type=int, default=DEFAULT_LFS_THRESHOLD)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")

    hub = MockHub(token=args.token, port=args.port, separate_cdn=args.separate_cdn)
    for spec in args.repo:
        repo_id, sep, folder = spec.partition("=")
        if not sep or not Path(folder).is_dir():
            parser.error(f"--repo wants OWNER/NAME=FOLDER with an existing folder, not {spec!r}")
        commit = hub.add_repo(
            repo_id,
            folder_files(Path(folder)),
            gated=args.gated,
            lfs_threshold=args.lfs_threshold,
            redirect_lfs=args.redirect_lfs,
        )
        print(f"{repo_id}: {len(folder_files(Path(folder)))} files, commit {commit}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    hub.start()
    print(f"Mock hub serving on {hub.endpoint} (Ctrl+C to stop)", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()


if __name__ == "__main__":
    _main()
