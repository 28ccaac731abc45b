"""Metadata from the Hugging Face Hub (or a mirror): which endpoint is alive, what a revision contains.

Only JSON metadata goes through here; bytes go through ``downloader``. The Hub token is a credential and is only
ever sent to the hosts in ``settings.hub_token_hosts`` (huggingface.co by default), never to a mirror, over https
only, and never past a redirect to another server (see ``HubClient.auth_headers``).

A mirror controls what it lists, so a listing is read as untrusted input: at most ``MAX_LISTING_PAGES`` pages, each
"next" link on the endpoint's own server and never one already read; every file name a plain relative name that
stays inside the model folder on every OS; every size a non-negative integer. Anything else is a typed
``MirrorAnswerError`` naming the endpoint (and the file), raised before a byte is written.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from src import settings as _settings
from src.errors import (
    DownloadError,
    GatedRepoError,
    InvalidRemoteFileSizeError,
    InvalidRepoIdError,
    ListingRefusedError,
    NoHealthyEndpointError,
    RepoNotFoundError,
    UnsafeRemoteFileNameError,
)
from src.settings import get_settings
from src.utils.catalog import GGUF_SUFFIX, is_model_gguf
from src.utils.files import relative_parts, safe_relative_path, same_file_key
from src.utils.http_client import direct_mounts_for, is_loopback, origin

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")

# What transformers needs to load a chat model; everything else in a repo (ONNX, GGUF, other formats) is skipped.
_REQUIRED_FILES = ("config.json",)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_OPTIONAL_FILES = (
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
_SAFETENSORS_PATTERNS = ("*.safetensors", "model.safetensors.index.json")
_PYTORCH_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
# A GGUF repository holds one file per quantization: we fetch one. 4-bit K-quants keep nearly all the quality at a
# quarter of the size and are what llama.cpp runs fastest on a CPU; then the next best trade-offs.
GGUF_QUANT_PREFERENCE = ("q4_k_m", "q4_k_s", "q4_0", "q5_k_m", "q4_1", "q5_0", "q6_k", "q8_0", "f16", "bf16")
# A mirror decides how many "next" pages a listing has. The Hub pages tree listings by 1,000 entries, so 1,000 pages
# is a million files, hundreds of times the largest model repository, yet only seconds of requests before an endless
# listing is refused (each page is kept in memory until the listing ends).
MAX_LISTING_PAGES = 1000
# One metadata answer (a revision, a listing page of about 1,000 entries: a few hundred KB on the Hub).
MAX_METADATA_BYTES = 16 * 1024 * 1024


class RefusedAnswer(httpx.HTTPError):
    """A metadata answer Hearth does not read on: a redirect to another server, or too many bytes. An HTTP error
    like a dropped connection, so every caller already treats that endpoint as failed."""

    def __init__(self, message: str, *, request: httpx.Request) -> None:
        super().__init__(message)
        self.request = request


def validate_repo_id(repo: str) -> str:
    repo = (repo or "").strip()
    if not _REPO_ID.match(repo) or ".." in repo or "--" in repo:
        raise InvalidRepoIdError(repo)
    return repo


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files: the content's sha256
    git_oid: str | None  # other files: the git blob sha1 (also a full-content checksum)
    required: bool


@dataclass(frozen=True)
class RepoSnapshot:
    repo: str
    revision: str
    commit: str
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class EndpointHealth:
    endpoint: str
    healthy: bool
    latency_s: float | None
    detail: str


class HubClient:
    """Talks to an ordered list of endpoints; one ``httpx.Client`` per endpoint (they differ in proxy handling)."""

    def __init__(self, endpoints: list[str], *, token: str | None = None, token_hosts: tuple[str, ...] | None = None):
        cleaned = [e.strip().rstrip("/") for e in endpoints if e and e.strip()]
        if not cleaned:
            raise DownloadError("The list of download endpoints is empty.")
        for endpoint in cleaned:
            if not endpoint.startswith(("http://", "https://")):
                raise DownloadError(f"Endpoint {endpoint!r} must start with http:// or https://.")
        self.endpoints = list(dict.fromkeys(cleaned))
        settings = get_settings()
        self._token = token if token is not None else settings.hf_token
        self._token_hosts = tuple(token_hosts if token_hosts is not None else settings.hub_token_hosts)
        self._clients: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()
        self._warned_plain_http: set[tuple[str, str, int]] = set()

    # --- plumbing -------------------------------------------------------------------------------------------------

    def client_for(self, url: str) -> httpx.Client:
        parsed = httpx.URL(url)
        key = f"{parsed.scheme}://{parsed.netloc.decode()}"
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = httpx.Client(
                    timeout=httpx.Timeout(
                        connect=_settings.HUB_CONNECT_TIMEOUT_S,
                        read=_settings.HUB_READ_TIMEOUT_S,
                        write=_settings.HUB_CONNECT_TIMEOUT_S,
                        pool=_settings.HUB_CONNECT_TIMEOUT_S,
                    ),
                    # Redirects are followed by hand so that the token policy is applied to every hop.
                    follow_redirects=False,
                    mounts=direct_mounts_for(parsed, trust_env=True),
                )
                self._clients[key] = client
            return client

    def auth_headers(self, url: str, *, started_at: str | None = None) -> dict[str, str]:
        """The Authorization header for a request to ``url``, or none. ``started_at``: the first URL of the redirect
        chain that led to ``url``.

        The token goes only (1) to the hosts allowed to see it (``settings.hub_token_hosts``), (2) over https, as
        plain http shows it to everyone on the way; http to this machine (127.0.0.1, ::1, localhost) is allowed, for
        local mirrors and tests; and (3) after a redirect, only to the server the request started at: a redirect is
        the server's say-so, and the Hub's CDN redirects are signed URLs that need no token. An allowed host reached
        over plain http gets no token and a warning, once per server, so that a download without it is explained.
        """
        if not self._token:
            return {}
        parsed = httpx.URL(url)
        host = (parsed.host or "").lower()
        netloc = parsed.netloc.decode().lower()
        allowed = any(
            netloc == allowed_host if ":" in allowed_host else host == allowed_host or host.endswith("." + allowed_host)
            for allowed_host in self._token_hosts
        )
        if not allowed or (started_at is not None and origin(started_at) != origin(url)):
            return {}
        if parsed.scheme != "https" and not is_loopback(host):
            server = origin(url)
            with self._lock:
                first_time = server not in self._warned_plain_http
                self._warned_plain_http.add(server)
            if first_time:
                logger.warning(
                    "Not sending the Hub token to %s://%s: plain http would show it to everyone on the way. Use "
                    "https:// for this endpoint (gated repositories need the token).", parsed.scheme, netloc,
                )
            return {}
        return {"Authorization": f"Bearer {self._token}"}

    def get_json(self, url: str, timeout: float | None = None) -> tuple[httpx.Response, Any]:
        response = self._get(url, timeout=timeout)
        try:
            return response, response.json()
        except ValueError:
            return response, None

    def _get(self, url: str, timeout: float | None = None) -> httpx.Response:
        """GET metadata, following redirects on the same server only (the Hub moves a renamed repository within
        itself; a mirror sending Hearth elsewhere could make it request a service on this machine or the local
        network) and reading at most ``MAX_METADATA_BYTES``."""
        started_at = url
        for _ in range(5):
            kwargs: dict[str, Any] = {"headers": self.auth_headers(url, started_at=started_at)}
            if timeout is not None:
                kwargs["timeout"] = timeout
            response = self._bounded_get(url, kwargs)
            if response.is_redirect and "location" in response.headers:
                url = str(httpx.URL(url).join(response.headers["location"]))
                if origin(url) != origin(started_at):
                    raise RefusedAnswer(f"{started_at} redirected to another server ({url})", request=response.request)
                continue
            return response
        raise DownloadError(f"Too many redirects at {url}.")

    def _bounded_get(self, url: str, options: dict[str, Any]) -> httpx.Response:
        with self.client_for(url).stream("GET", url, **options) as streamed:
            body = bytearray()
            for chunk in streamed.iter_bytes():
                body += chunk
                if len(body) > MAX_METADATA_BYTES:
                    raise RefusedAnswer(f"{url} answered with more than {MAX_METADATA_BYTES:,} bytes of metadata",
                                        request=streamed.request)  # fmt: skip
            return httpx.Response(streamed.status_code, headers=streamed.headers, content=bytes(body),
                                  request=streamed.request)  # fmt: skip

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    # --- endpoints ------------------------------------------------------------------------------------------------

    @staticmethod
    def revision_url(endpoint: str, repo: str, revision: str) -> str:
        return f"{endpoint}/api/models/{repo}/revision/{quote(revision, safe='')}"

    @staticmethod
    def file_url(endpoint: str, repo: str, commit: str, path: str) -> str:
        return f"{endpoint}/{repo}/resolve/{quote(commit, safe='')}/{quote(path)}"

    def check_endpoints(self, repo: str = "HuggingFaceTB/SmolLM2-135M-Instruct", revision: str = "main") -> list[EndpointHealth]:
        """Ask every endpoint at once for a revision's metadata (short timeout): the settings page's live status."""
        results: dict[str, EndpointHealth] = {}

        def probe(endpoint: str) -> None:
            started = time.monotonic()
            try:
                response = self._get(self.revision_url(endpoint, repo, revision), timeout=_settings.HUB_PROBE_TIMEOUT_S)
            except httpx.HTTPError as exc:
                results[endpoint] = EndpointHealth(endpoint, False, None, _describe(exc))
                return
            latency = time.monotonic() - started
            # A definite answer about the repo (found, not found, gated) means the endpoint itself works.
            healthy = response.status_code < 500 and response.status_code != 429
            results[endpoint] = EndpointHealth(endpoint, healthy, latency, f"HTTP {response.status_code}")

        threads = [threading.Thread(target=probe, args=(e,), daemon=True) for e in self.endpoints]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(_settings.HUB_PROBE_TIMEOUT_S + 1.0)
        return [
            results.get(e, EndpointHealth(e, False, None, "no answer")) for e in self.endpoints
        ]

    def resolve_revision(self, repo: str, revision: str) -> tuple[str, str, list[str]]:
        """Probe all endpoints in parallel; return ``(endpoint, commit, endpoints in the order to use them)``.

        The first endpoint (in preference order) that gives a definite answer wins: a 200 gives the commit, a 404
        or 401/403 is reported as it is (not retried on mirrors: a mirror will not know better). Endpoints that
        are down, slow or 5xx are put last, to be retried only if the healthy ones fail mid-download.
        """
        repo = validate_repo_id(repo)
        answers: dict[str, tuple[str, Any]] = {}
        done = {endpoint: threading.Event() for endpoint in self.endpoints}

        def probe(endpoint: str) -> None:
            try:
                response, payload = self.get_json(
                    self.revision_url(endpoint, repo, revision), timeout=_settings.HUB_PROBE_TIMEOUT_S
                )
                answers[endpoint] = ("response", (response, payload))
            except httpx.HTTPError as exc:
                answers[endpoint] = ("error", _describe(exc))
            finally:
                done[endpoint].set()

        for endpoint in self.endpoints:
            threading.Thread(target=probe, args=(endpoint,), daemon=True).start()
        problems: list[str] = []
        healthy: list[str] = []
        chosen: tuple[str, str] | None = None
        for endpoint in self.endpoints:
            done[endpoint].wait(_settings.HUB_PROBE_TIMEOUT_S + 1.0)
            kind, value = answers.get(endpoint, ("error", "no answer"))
            if kind == "error":
                problems.append(f"{endpoint}: {value}")
                continue
            response, payload = value
            status = response.status_code
            if status >= 500 or status == 429:
                problems.append(f"{endpoint}: HTTP {status}")
                continue
            healthy.append(endpoint)
            if chosen is not None:
                continue
            if status == 200 and isinstance(payload, dict) and isinstance(payload.get("sha"), str):
                chosen = (endpoint, payload["sha"])
            elif status in (401, 403):
                raise GatedRepoError(repo, endpoint, status)
            elif status == 404:
                raise RepoNotFoundError(repo, revision, endpoint)
            else:
                problems.append(f"{endpoint}: unexpected HTTP {status}")
                healthy.remove(endpoint)
        if chosen is None:
            raise NoHealthyEndpointError(problems)
        if problems:
            logger.warning("Skipping unhealthy endpoints: %s", "; ".join(problems))
        order = healthy + [e for e in self.endpoints if e not in healthy]
        return chosen[0], chosen[1], order

    def snapshot(
        self, endpoint: str, repo: str, revision: str, commit: str, *, gguf_file: str | None = None
    ) -> RepoSnapshot:
        """The files of ``repo`` at ``commit`` that loading needs, with sizes and checksums."""
        entries = self._tree(endpoint, repo, commit)
        files = select_files(entries, gguf_file=gguf_file)
        written: dict[str, str] = {}
        for remote in files:
            # The files that will be written get the full check too (Windows device names, ':', '~', ...); the rest
            # of the listing only had to be plain relative names (see _file_entry).
            safe_relative_path(remote.path, _unsafe_name_from(endpoint), exact=True)
            twin = written.setdefault(same_file_key(remote.path), remote.path)
            if twin != remote.path:
                raise UnsafeRemoteFileNameError(remote.path, endpoint, f"it is {twin!r} on Windows and macOS, which "
                                                "do not tell case or Unicode forms apart: one would overwrite the other")  # fmt: skip
        return RepoSnapshot(repo=repo, revision=revision, commit=commit, files=tuple(files))

    def _tree(self, endpoint: str, repo: str, commit: str) -> list[dict[str, Any]]:
        """Every file entry of the listing, checked (see the module docstring); directory entries are dropped."""
        url = f"{endpoint}/api/models/{repo}/tree/{quote(commit, safe='')}?recursive=true"
        read: set[str] = set()
        entries: list[dict[str, Any]] = []
        for _page in range(MAX_LISTING_PAGES):
            read.add(url)
            response, payload = self.get_json(url)
            if response.status_code == 404:
                raise RepoNotFoundError(repo, commit, endpoint)
            if response.status_code in (401, 403):
                raise GatedRepoError(repo, endpoint, response.status_code)
            if response.status_code != 200 or not isinstance(payload, list):
                raise DownloadError(f"{endpoint} gave an unexpected file list for {repo} (HTTP {response.status_code}).")
            entries.extend(
                _file_entry(e, endpoint) for e in payload if isinstance(e, dict) and e.get("type") == "file"
            )
            # The Hub paginates long listings with a Link header, always to itself. A link elsewhere would make Hearth
            # request whatever URL the mirror names (a service on this machine or the local network): refused.
            next_link = response.links.get("next", {}).get("url")
            if not next_link:
                return entries
            url = str(httpx.URL(url).join(next_link))
            if origin(url) != origin(endpoint):
                raise ListingRefusedError(repo, endpoint, f"its next page is on another server ({url})")
            if url in read:
                raise ListingRefusedError(repo, endpoint, f"it links back to a page already read ({url})")
        raise ListingRefusedError(repo, endpoint, f"it goes on for more than {MAX_LISTING_PAGES} pages")


def pick_gguf_file(names: list[str], wanted: str | None = None) -> str | None:
    """The one GGUF file to fetch from a repository's top-level ``names``: ``wanted`` if given (matched without
    regard to case), else the first quantization in ``GGUF_QUANT_PREFERENCE``; single-file models only (a model
    split into ``-00001-of-00003`` parts is skipped) and never a multimodal projector."""
    ggufs = [n for n in names if is_model_gguf(n) and not re.search(r"-\d{5}-of-\d{5}\.gguf$", n)]
    if wanted is not None:
        return next((n for n in ggufs if n.lower() == wanted.lower()), None)
    for quant in GGUF_QUANT_PREFERENCE:
        pattern = re.compile(rf"(^|[-_.]){re.escape(quant)}([-_.]|$)", re.IGNORECASE)
        hits = sorted(n for n in ggufs if pattern.search(n[: -len(GGUF_SUFFIX)] + "."))
        if hits:
            return hits[0]
    return min(ggufs) if ggufs else None


def select_files(entries: list[dict[str, Any]], *, gguf_file: str | None = None) -> list[RemoteFile]:
    """Pick what loading needs from a repository listing: config, weights (safetensors preferred over PyTorch
    .bin), tokenizer, and the optional extras; for a repository of GGUF files (no transformers weights, or
    ``gguf_file`` asked for), just the one GGUF file. Only top-level files: sub-folders hold other formats."""
    files = {
        e["path"]: e
        for e in entries
        if e.get("type") == "file" and isinstance(e.get("path"), str) and "/" not in e["path"]
    }
    names = list(files)

    def matching(patterns: tuple[str, ...]) -> list[str]:
        return sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns))

    weights = matching(_SAFETENSORS_PATTERNS)
    if not any(n.endswith(".safetensors") for n in weights):
        weights = matching(_PYTORCH_PATTERNS)
    if gguf_file is not None or not any(n.endswith((".safetensors", ".bin")) for n in weights):
        gguf = pick_gguf_file(names, gguf_file)
        if gguf is not None:
            return [_remote_file(gguf, files[gguf], required=True)]
        if gguf_file is not None:
            raise DownloadError(f"This repository has no file {gguf_file!r}.")
        raise DownloadError(
            "This repository has no transformers weights (safetensors or PyTorch .bin) and no single-file GGUF "
            "model to load."
        )
    for required in _REQUIRED_FILES:
        if required not in files:
            raise DownloadError(f"This repository has no {required}; it is not a transformers model.")
    tokenizer = [n for n in _TOKENIZER_FILES if n in files]
    if not tokenizer:
        raise DownloadError("This repository has no tokenizer (tokenizer.json, tokenizer.model or vocab.json).")
    chosen = [(n, True) for n in (*_REQUIRED_FILES, *weights, *tokenizer)]
    chosen += [(n, False) for n in _OPTIONAL_FILES if n in files]
    return [_remote_file(name, files[name], required) for name, required in chosen]


def _unsafe_name_from(endpoint: str) -> Callable[[object, str], UnsafeRemoteFileNameError]:
    return lambda name, reason: UnsafeRemoteFileNameError(name, endpoint, reason)


def _file_entry(entry: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """A listing's file entry with a name and a size that can be trusted, or a typed error naming the file.

    Every entry is checked, not only those downloaded: no git repository can hold such a name or size, so a listing
    that has one is forged, and the rest of it is not trusted either. The name must be a plain relative POSIX name
    (no backslash, drive letter, absolute path, '..', empty part or NUL) on every OS, not only where it would
    escape. The size (``lfs.size`` for LFS files) must be an int >= 0; a bool is refused although Python counts it
    as an int. The size checked is stored as the entry's ``size``.
    """
    path = entry.get("path")
    relative_parts(path, _unsafe_name_from(endpoint), exact=True)
    lfs = entry.get("lfs")
    size = lfs.get("size", entry.get("size")) if isinstance(lfs, dict) else entry.get("size")
    if type(size) is not int or size < 0:
        raise InvalidRemoteFileSizeError(str(path), endpoint, size)
    return {**entry, "size": size}


def _remote_file(name: str, entry: dict[str, Any], required: bool) -> RemoteFile:
    lfs = entry.get("lfs") if isinstance(entry.get("lfs"), dict) else None
    return RemoteFile(
        path=name,
        size=int(entry.get("size", 0)),
        sha256=str(lfs["oid"]) if lfs and lfs.get("oid") else None,
        git_oid=None if lfs else (str(entry["oid"]) if entry.get("oid") else None),
        required=required,
    )


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")
