"""A Hub mirror is untrusted input: it controls the listing (names, sizes, pages) and the bytes (issue 13).

Each test runs a real download against the mock Hub on 127.0.0.1 (tests/mock_hub.py) made hostile in one way, and
checks that the download ends within seconds with a typed error (or falls back to an honest mirror), leaves nothing
outside the model folder, never shows the token where it must not go, and keeps what a later resume needs.
``bounded`` fails a test whose download is still running after ``BOUND_S`` instead of letting it loop forever.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from src.errors import (
    FileRestartLimitError,
    InvalidRemoteFileSizeError,
    ListingRefusedError,
    UnsafeRemoteFileNameError,
)
from src.settings import ENV_HF_TOKEN, ENV_HUB_TOKEN_HOSTS, reload_settings
from src.utils.downloader import DONE, FAILED, MAX_RESTARTS_PER_ENDPOINT, PAUSED, CancelToken, DownloadState, part_path
from src.utils.hub_api import MAX_LISTING_PAGES, MAX_METADATA_BYTES, HubClient, RefusedAnswer
from src.utils.ModelManager import ModelManager
from tests.mock_hub import Faults, MockHub, make_random_file

MODEL = "qwen2.5-0.5b"
REPO = "Qwen/Qwen2.5-0.5B-Instruct"
WEIGHTS = "model.safetensors"
WEIGHTS_SIZE = 3 << 20
BOUND_S = 10.0  # today each of these attacks ran forever; with the fixes each test takes well under a second or two
TOKEN = "hf_secret_token"


@pytest.fixture
def repo(tmp_path: Path) -> dict[str, bytes | Path]:
    return {
        "config.json": json.dumps({"model_type": "llama"}).encode(),
        WEIGHTS: make_random_file(tmp_path / "weights.bin", WEIGHTS_SIZE, seed=13),
        "tokenizer.json": b'{"version": "1.0"}',
    }


@pytest.fixture
def hub(repo: dict[str, bytes | Path]) -> MockHub:
    with MockHub() as server:
        server.add_repo(REPO, repo)
        yield server


def bounded(endpoints: list[str], *hubs: MockHub, cancel: CancelToken | None = None) -> DownloadState:
    """``ModelManager.download`` in a thread; if it is still running after BOUND_S (an unbounded loop), it is
    cancelled, the hubs are stopped so that a loop without a cancel check ends too, and the test fails."""
    cancel = cancel or CancelToken()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["state"] = ModelManager().download(MODEL, endpoints=endpoints, cancel=cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the test, which re-raises it
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    if thread.is_alive():
        cancel.cancel()
        for server in hubs:
            server.stop()
        thread.join(10)
        pytest.fail(f"the download was still running after {BOUND_S:g} s: an unbounded loop")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["state"]


def folder_of(models_dir: Path) -> Path:
    return models_dir / MODEL


def assert_weights_complete(models_dir: Path, repo: dict[str, bytes | Path]) -> None:
    source = repo[WEIGHTS]
    assert isinstance(source, Path)
    assert (folder_of(models_dir) / WEIGHTS).read_bytes() == source.read_bytes()
    assert not list(folder_of(models_dir).glob("*.part"))


def pause_midway(hub: MockHub, models_dir: Path) -> int:
    """A first download paused with part of the weights on disk; returns how many bytes the .part holds."""
    hub.faults = Faults(throttle_bytes_per_s=4 << 20, path_glob=f"*{WEIGHTS}")
    cancel = CancelToken()

    def pause_after_a_mebibyte() -> None:
        if hub.wait_for(lambda log: any(r.body_bytes_sent > (1 << 20) for r in log), 10):
            cancel.cancel()

    threading.Thread(target=pause_after_a_mebibyte, daemon=True).start()
    assert bounded([hub.endpoint], hub, cancel=cancel).status == PAUSED
    hub.clear_faults()
    hub.clear_log()
    return part_path(folder_of(models_dir), WEIGHTS).stat().st_size


SIZE_LIES = {
    # Content-Length counts the junk: refused from the headers, before a byte is written.
    "announced": Faults(extra_bytes=4096, times=None, path_glob=f"*{WEIGHTS}"),
    # No Content-Length: the body runs past the announced size and is refused while reading.
    "unannounced": Faults(extra_bytes=4096, no_content_length=True, times=None, path_glob=f"*{WEIGHTS}"),
}


# --- sizes and bytes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lie", list(SIZE_LIES))
def test_a_size_lie_on_the_only_endpoint_stops_with_a_typed_error_and_resumes_later(
    models_dir: Path, hub: MockHub, repo: dict, lie: str
) -> None:
    hub.faults = SIZE_LIES[lie]
    with pytest.raises(FileRestartLimitError) as caught:
        bounded([hub.endpoint], hub)
    error = caught.value
    assert (error.file, error.endpoint) == (WEIGHTS, hub.endpoint) and "bytes" in error.reason
    assert len(hub.requests_for(f"*{WEIGHTS}", method="GET")) == 1 + MAX_RESTARTS_PER_ENDPOINT
    assert not (folder_of(models_dir) / WEIGHTS).exists(), "a size lie must never be accepted as the file"
    state = DownloadState.load(folder_of(models_dir))
    assert state is not None and state.status == FAILED and WEIGHTS in (state.error or "")

    hub.clear_faults()
    hub.clear_log()
    assert bounded([hub.endpoint], hub).status == DONE
    assert_weights_complete(models_dir, repo)


@pytest.mark.parametrize("lie", list(SIZE_LIES))
def test_a_size_lie_moves_the_file_to_the_next_mirror(models_dir: Path, repo: dict, lie: str) -> None:
    with MockHub() as liar, MockHub() as honest:
        liar.add_repo(REPO, repo)
        honest.add_repo(REPO, repo)
        liar.faults = SIZE_LIES[lie]
        assert bounded([liar.endpoint, honest.endpoint], liar, honest).status == DONE
        assert len(liar.requests_for(f"*{WEIGHTS}", method="GET")) == 1 + MAX_RESTARTS_PER_ENDPOINT
        # The honest mirror continues the .part the liar's last answer left (the bytes before the junk, maybe all
        # of them: then no request is needed); the checksum judges the result.
        assert len(honest.requests_for(f"*{WEIGHTS}", method="GET")) <= 1
    assert_weights_complete(models_dir, repo)


@pytest.mark.parametrize(
    ("path", "patch"),
    [
        (WEIGHTS, {"lfs": {"size": str(WEIGHTS_SIZE)}}),
        (WEIGHTS, {"lfs": {"size": -1}}),
        ("config.json", {"size": True}),
        ("config.json", {"size": 24.0}),
    ],
    ids=["string", "negative", "bool", "float"],
)
def test_a_bad_size_is_a_typed_error_naming_the_file_and_the_partial_download_is_kept(
    models_dir: Path, hub: MockHub, repo: dict, path: str, patch: dict
) -> None:
    partial = pause_midway(hub, models_dir)
    hub.tree_entry_patches = {path: patch}
    with pytest.raises(InvalidRemoteFileSizeError) as caught:
        bounded([hub.endpoint], hub)
    assert (caught.value.file, caught.value.endpoint) == (path, hub.endpoint)
    assert not hub.requests_for("*/resolve/*")
    state = DownloadState.load(folder_of(models_dir))
    assert state is not None and state.status == FAILED and path in (state.error or "")
    assert part_path(folder_of(models_dir), WEIGHTS).stat().st_size == partial

    hub.tree_entry_patches = {}
    assert bounded([hub.endpoint], hub).status == DONE
    [resumed] = hub.requests_for(f"*{WEIGHTS}", method="GET")
    assert resumed.range_header == f"bytes={partial}-"
    assert_weights_complete(models_dir, repo)


# --- listings ----------------------------------------------------------------------------------------------------


def test_an_endless_listing_is_refused_after_the_page_limit(models_dir: Path, hub: MockHub) -> None:
    hub.tree_page_size = 2
    hub.tree_pagination = "endless"
    started = time.monotonic()
    with pytest.raises(ListingRefusedError, match=f"more than {MAX_LISTING_PAGES} pages") as caught:
        bounded([hub.endpoint], hub)
    assert caught.value.endpoint == hub.endpoint and caught.value.file is None
    assert len(hub.requests_for("*/tree/*")) == MAX_LISTING_PAGES
    assert not hub.requests_for("*/resolve/*")
    assert time.monotonic() - started < BOUND_S


def test_a_listing_that_links_back_to_a_page_already_read_is_refused(models_dir: Path, hub: MockHub) -> None:
    hub.tree_pagination = "repeat"
    with pytest.raises(ListingRefusedError, match="already read"):
        bounded([hub.endpoint], hub)
    assert len(hub.requests_for("*/tree/*")) == 1
    assert not hub.requests_for("*/resolve/*")


def test_a_next_page_on_another_server_is_never_requested(models_dir: Path, hub: MockHub, repo: dict) -> None:
    with MockHub() as elsewhere:
        elsewhere.add_repo(REPO, repo)
        hub.tree_page_size = 2
        hub.tree_link_base = elsewhere.endpoint
        with pytest.raises(ListingRefusedError, match="another server"):
            bounded([hub.endpoint], hub, elsewhere)
        assert elsewhere.log == []
    assert not hub.requests_for("*/resolve/*")


@pytest.mark.parametrize(
    "name",
    ["..\\evil", "C:evil", "/etc/x", "a/../../x", "a\\b", "C:\\x", "..\\evil.safetensors", "a//b", "./a", "a\x00b",
     "evil\u202eyp.txt", "con\u200bfig.json"],
)
def test_a_hostile_file_name_refuses_the_listing_before_anything_is_written(
    models_dir: Path, hub: MockHub, name: str
) -> None:
    hub.tree_extra_entries = [{"type": "file", "oid": "0" * 40, "size": 10, "path": name}]
    with pytest.raises(UnsafeRemoteFileNameError) as caught:
        bounded([hub.endpoint], hub)
    assert (caught.value.file, caught.value.endpoint) == (name, hub.endpoint)
    assert not hub.requests_for("*/resolve/*")
    assert [p.name for p in folder_of(models_dir).iterdir()] == [".download.lock"]
    assert not [p for p in models_dir.parent.rglob("*") if p.name in ("evil", "x", "b") or "evil" in p.name]


def test_two_files_that_one_file_system_would_make_one_are_refused(models_dir: Path, hub: MockHub) -> None:
    hub.tree_extra_entries = [{"type": "file", "oid": "0" * 40, "size": 10, "path": "Model.safetensors"}]
    with pytest.raises(UnsafeRemoteFileNameError, match="case or Unicode"):
        bounded([hub.endpoint], hub)
    assert not hub.requests_for("*/resolve/*")


def test_a_downloaded_file_with_a_windows_device_name_is_refused(models_dir: Path, hub: MockHub) -> None:
    hub.tree_extra_entries = [{"type": "file", "oid": "0" * 40, "size": 10, "path": "nul.safetensors"}]
    with pytest.raises(UnsafeRemoteFileNameError, match="device name"):
        bounded([hub.endpoint], hub)
    assert not hub.requests_for("*/resolve/*")


def test_an_odd_name_in_a_folder_that_is_not_downloaded_is_tolerated(
    models_dir: Path, hub: MockHub, repo: dict
) -> None:
    # Not an attack (passes on the old code too): a real repository may hold "logs/step:1.txt"; only the plain
    # relative form is required of files that are not downloaded.
    hub.tree_extra_entries = [{"type": "file", "oid": "0" * 40, "size": 10, "path": "logs/step:1.txt"}]
    assert bounded([hub.endpoint], hub).status == DONE
    assert_weights_complete(models_dir, repo)


# --- the token ---------------------------------------------------------------------------------------------------


def test_the_token_is_never_sent_over_plain_http(
    models_dir: Path, hub: MockHub, repo: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # http://huggingface.co is an allowed token host, reached through the mock Hub acting as the HTTP proxy: the
    # requests it logs are what would have crossed the network in clear.
    for variable in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HTTP_PROXY", hub.endpoint)
    monkeypatch.setenv(ENV_HF_TOKEN, TOKEN)
    monkeypatch.delenv(ENV_HUB_TOKEN_HOSTS, raising=False)
    reload_settings()
    with caplog.at_level(logging.WARNING, logger="src.utils.hub_api"):
        assert bounded(["http://huggingface.co"], hub).status == DONE
    assert hub.requests_for(f"*{WEIGHTS}", method="GET"), "the download must have gone through the proxy"
    assert all(r.header("authorization") is None for r in hub.log)
    warnings = [r for r in caplog.records if "Hub token" in r.getMessage()]
    assert len(warnings) == 1 and "plain http" in warnings[0].getMessage()
    assert_weights_complete(models_dir, repo)


def test_the_token_is_not_forwarded_on_a_redirect_to_another_server(
    models_dir: Path, repo: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "127.0.0.1" allows every port of this machine, so only the redirect rule keeps the CDN from seeing the token.
    monkeypatch.setenv(ENV_HF_TOKEN, TOKEN)
    monkeypatch.setenv(ENV_HUB_TOKEN_HOSTS, "127.0.0.1")
    reload_settings()
    with MockHub(token=TOKEN, separate_cdn=True) as hub:
        hub.add_repo(REPO, repo, gated=True, redirect_lfs=True)
        assert bounded([hub.endpoint], hub).status == DONE
        [resolve] = hub.requests_for(f"*/resolve/*/{WEIGHTS}", method="GET")
        assert resolve.header("authorization") == f"Bearer {TOKEN}" and resolve.status == 302
        cdn = [r for r in hub.log if r.listener == "cdn"]
        assert cdn and all(r.header("authorization") is None for r in cdn)
    assert_weights_complete(models_dir, repo)


# --- metadata answers: redirects and size -------------------------------------------------------------------------


class _ScriptedMirror(http.server.BaseHTTPRequestHandler):
    """A mirror whose every GET gets the same scripted answer (a fake: it only says what the test needs)."""

    answer: ClassVar[tuple[int, dict[str, str], bytes]] = (200, {}, b"{}")
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        status, headers, body = self.answer
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def scripted_mirror(status: int, headers: dict[str, str], body: bytes) -> Iterator[tuple[str, list[str]]]:
    """Serves the answer on a free port; yields its URL and the list of paths it was asked for."""
    handler = type("Mirror", (_ScriptedMirror,), {"answer": (status, headers, body), "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.seen
    finally:
        server.shutdown()
        server.server_close()


def test_metadata_is_never_fetched_from_where_a_mirror_redirects_elsewhere() -> None:
    with scripted_mirror(200, {}, b'{"sha": "0123"}') as (target, asked), \
            scripted_mirror(302, {"Location": f"{target}/internal-service"}, b"") as (mirror, _):  # fmt: skip
        with pytest.raises(RefusedAnswer, match="another server"):
            HubClient([mirror]).get_json(HubClient.revision_url(mirror, REPO, "main"))
        assert asked == []  # the local "service" was never asked


def test_a_metadata_answer_is_read_up_to_a_bound() -> None:
    huge = b"[" + b'{"type": "file", "path": "x", "size": 1},' * (MAX_METADATA_BYTES // 40) + b"{}]"
    with scripted_mirror(200, {"Content-Type": "application/json"}, huge) as (mirror, _), \
            pytest.raises(RefusedAnswer, match="more than"):  # fmt: skip
        HubClient([mirror]).get_json(f"{mirror}/api/models/{REPO}/tree/main")
