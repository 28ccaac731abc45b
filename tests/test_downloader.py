"""Model downloads against a mock Hub on 127.0.0.1 (tests/mock_hub.py), with the faults real networks have."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src import settings as app_settings
from src.errors import (
    ChecksumMismatchError,
    DownloadInProgressError,
    FileDownloadFailedError,
    GatedRepoError,
    InsufficientDiskSpaceError,
    InvalidRepoIdError,
    RepoNotFoundError,
)
from src.settings import ENV_HF_TOKEN, ENV_HUB_TOKEN_HOSTS, PROJECT_ROOT, reload_settings
from src.utils import downloader
from src.utils.catalog import resolve_local_model
from src.utils.ChatUtils import AIRequestHandlerWithHistory
from src.utils.downloader import DONE, FAILED, PAUSED, DownloadState, part_path
from src.utils.hub_api import HubClient, select_files
from src.utils.ModelManager import STATUS_CORRUPT, STATUS_NOT_DOWNLOADED, STATUS_PARTIAL, STATUS_READY, ModelManager
from tests.mock_hub import Faults, MockHub, make_random_file

QWEN = "Qwen/Qwen2.5-0.5B-Instruct"
WEIGHTS_SIZE = 6 << 20


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def small_repo(tmp_path: Path) -> dict[str, bytes | Path]:
    """A repository shaped like a model (what the downloader picks), with random weights: fast fault tests."""
    return {
        "config.json": json.dumps({"model_type": "llama"}).encode(),
        "generation_config.json": b'{"eos_token_id": 2}',
        "model.safetensors": make_random_file(tmp_path / "weights.bin", WEIGHTS_SIZE, seed=1),
        "tokenizer.json": b'{"version": "1.0"}',
        "tokenizer_config.json": b"{}",
        "README.md": b"not needed to load",
        "onnx/model.onnx": b"another format",
    }


@pytest.fixture
def real_repo() -> dict[str, bytes | Path]:
    """The embedded model's converted files: a real, loadable model repository."""
    _, folder = resolve_local_model("smollm2-135m")
    return {p.name: p.resolve() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def hub(small_repo: dict[str, bytes | Path]) -> MockHub:
    with MockHub() as server:
        server.add_repo(QWEN, small_repo)
        yield server


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_settings, "DOWNLOAD_BACKOFF_S", (0.05, 0.05, 0.05))


def download(hub_or_endpoints: MockHub | list[str], **kwargs: object) -> DownloadState:
    endpoints = [hub_or_endpoints.endpoint] if isinstance(hub_or_endpoints, MockHub) else hub_or_endpoints
    return ModelManager().download("qwen2.5-0.5b", endpoints=endpoints, **kwargs)


def assert_complete(models_dir: Path, repo: dict[str, bytes | Path]) -> None:
    folder = models_dir / "qwen2.5-0.5b"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        source = repo[name]
        expected = source.read_bytes() if isinstance(source, Path) else source
        assert (folder / name).read_bytes() == expected, name
    assert not list(folder.glob("*.part"))
    assert not (folder / "README.md").exists() and not (folder / "onnx").exists()
    assert ModelManager().info("qwen2.5-0.5b").status == STATUS_READY


# --- end to end -----------------------------------------------------------------------------------------------


def test_download_a_real_model_then_chat_with_it(models_dir: Path, real_repo: dict[str, bytes | Path]) -> None:
    with MockHub() as hub:
        hub.add_repo(QWEN, real_repo, redirect_lfs=True)
        updates = []
        state = download(hub, progress=updates.append)
    assert state.status == DONE
    folder = models_dir / "qwen2.5-0.5b"
    assert sha256_of(folder / "model.safetensors") == sha256_of(Path(real_repo["model.safetensors"]))
    assert updates[-1].state == DONE and updates[-1].done == updates[-1].total > 250_000_000
    assert any(u.speed_bps for u in updates)

    from src.db.llm_config_db import LLMConfigDB

    db = LLMConfigDB()
    db.set_current_config(db.save_config(provider="local_model", model="qwen2.5-0.5b"))
    handler = AIRequestHandlerWithHistory()
    reply = handler.get_single_response("after-download", "What is the capital of France?", max_new_tokens=8, temperature=0)
    assert "Paris" in reply
    assert handler.get_history("after-download")[-1]["model"] == "qwen2.5-0.5b"


def test_only_the_files_loading_needs_are_fetched_and_checked(
    models_dir: Path, hub: MockHub, small_repo: dict[str, bytes | Path]
) -> None:
    download(hub)
    assert_complete(models_dir, small_repo)
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub.requests_for("*/resolve/*", method="GET")}
    assert fetched == {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    state = DownloadState.load(models_dir / "qwen2.5-0.5b")
    assert state is not None and state.complete and state.commit == hub.commit_sha(QWEN)
    assert state.files["model.safetensors"].sha256 == sha256_of(models_dir / "qwen2.5-0.5b" / "model.safetensors")
    assert state.files["config.json"].git_oid  # small files are checked by their git blob id


# --- resume ---------------------------------------------------------------------------------------------------


def test_sigkill_mid_file_then_resume_with_a_range(models_dir: Path, hub: MockHub, small_repo: dict) -> None:
    hub.faults = Faults(throttle_bytes_per_s=1 << 20, path_glob="*model.safetensors")
    command = [sys.executable, str(PROJECT_ROOT / "main.py"), "models", "download", "qwen2.5-0.5b", "--endpoint", hub.endpoint]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ)
    part = part_path(models_dir / "qwen2.5-0.5b", "model.safetensors")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < (2 << 20)):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    partial = part.stat().st_size
    assert (2 << 20) <= partial < WEIGHTS_SIZE
    assert ModelManager().info("qwen2.5-0.5b").status == STATUS_PARTIAL
    assert "partial" in subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "main.py"), "models", "list"], capture_output=True, text=True, env=os.environ
    ).stdout

    hub.clear_log()
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ, timeout=120)
    assert result.returncode == 0, result.stderr
    [resumed] = hub.requests_for("*model.safetensors", method="GET")
    assert resumed.range_header == f"bytes={partial}-"
    assert resumed.body_bytes_sent == WEIGHTS_SIZE - partial
    assert_complete(models_dir, small_repo)


def test_pause_and_resume_in_process(models_dir: Path, hub: MockHub, small_repo: dict) -> None:
    hub.faults = Faults(throttle_bytes_per_s=2 << 20, path_glob="*model.safetensors")
    manager = ModelManager()
    handle = manager.start_download("qwen2.5-0.5b", endpoints=[hub.endpoint])
    assert hub.wait_for(lambda log: any(r.body_bytes_sent > (1 << 20) for r in log), timeout=30), (
        handle.error, handle.latest, hub.log)
    paused_at = time.monotonic()
    handle.pause()
    state = handle.wait(timeout=10)
    assert time.monotonic() - paused_at < 1.0, "pause must stop the transfer within a second"
    assert state is not None and state.status == PAUSED
    info = manager.info("qwen2.5-0.5b")
    assert info.status == STATUS_PARTIAL and 0 < info.fraction < 1
    partial = part_path(models_dir / "qwen2.5-0.5b", "model.safetensors").stat().st_size

    hub.clear_log()
    assert download(hub).status == DONE
    [resumed] = hub.requests_for("*model.safetensors", method="GET")
    assert resumed.range_header == f"bytes={partial}-"
    assert_complete(models_dir, small_repo)


@pytest.mark.parametrize(
    "fault",
    [
        Faults(drop_after_bytes=3 << 20, path_glob="*model.safetensors"),
        # Paced, so the client has read what came before the reset (a reset discards unread data).
        Faults(reset_after_bytes=3 << 20, throttle_bytes_per_s=16 << 20, path_glob="*model.safetensors"),
    ],
    ids=["dropped", "reset"],
)
def test_a_broken_connection_resumes_from_where_it_broke(
    models_dir: Path, hub: MockHub, small_repo: dict, fault: Faults, fast_backoff: None
) -> None:
    hub.faults = fault
    assert download(hub).status == DONE
    first, second = hub.requests_for("*model.safetensors", method="GET")
    assert first.range_header is None
    start = int(second.range_header.removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 3 << 20
    assert_complete(models_dir, small_repo)


def test_a_server_that_ignores_range_restarts_the_file(models_dir: Path, hub: MockHub, small_repo: dict, fast_backoff: None) -> None:
    hub.faults = Faults(drop_after_bytes=2 << 20, path_glob="*model.safetensors")
    hub.queue_fault(Faults(ignore_range=True, path_glob="*model.safetensors"))
    assert download(hub).status == DONE
    gets = hub.requests_for("*model.safetensors", method="GET")
    assert [g.status for g in gets] == [200, 200]
    assert gets[1].range_header is not None  # asked to resume, got the whole file, and used it correctly
    assert_complete(models_dir, small_repo)


def test_reboot_cuts_the_part_back_to_what_was_fsynced(
    models_dir: Path, hub: MockHub, small_repo: dict, fast_backoff: None
) -> None:
    hub.faults = Faults(drop_after_bytes=4 << 20, path_glob="*model.safetensors")
    hub.queue_fault(Faults(status=503, times=None, path_glob="*model.safetensors"))
    with pytest.raises(FileDownloadFailedError):
        download(hub)
    folder = models_dir / "qwen2.5-0.5b"
    state = DownloadState.load(folder)
    assert state is not None
    state.boot_id = "a-boot-before-a-power-cut"
    state.files["model.safetensors"].durable_bytes = 1 << 20
    state.save(folder)
    assert part_path(folder, "model.safetensors").stat().st_size == 4 << 20
    hub.clear_faults()
    hub.clear_log()
    assert download(hub).status == DONE
    [resumed] = hub.requests_for("*model.safetensors", method="GET")
    assert resumed.range_header == f"bytes={1 << 20}-"
    assert_complete(models_dir, small_repo)


# --- endpoints ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("primary_fault", ["refused", "503"])
def test_dead_primary_falls_back_to_the_mirror_and_the_token_stays_home(
    models_dir: Path, small_repo: dict, monkeypatch: pytest.MonkeyPatch, primary_fault: str
) -> None:
    with MockHub() as primary, MockHub() as mirror:
        primary.add_repo(QWEN, small_repo)
        mirror.add_repo(QWEN, small_repo)
        monkeypatch.setenv(ENV_HF_TOKEN, "hf_secret_token")
        monkeypatch.setenv(ENV_HUB_TOKEN_HOSTS, f"127.0.0.1:{primary.port}")
        reload_settings()
        if primary_fault == "refused":
            primary.stop_listener()
        else:
            primary.faults = Faults(status=503, applies_to="all", times=None)
        started = time.monotonic()
        updates = []
        download([primary.endpoint, mirror.endpoint], progress=updates.append)
        first_byte = next(u for u in updates if u.file and u.file_done)
        # The probe asks both endpoints at once and takes the first healthy answer: no timeout is waited on.
        assert first_byte.endpoint == mirror.endpoint
        assert time.monotonic() - started < 2.0 + WEIGHTS_SIZE / 50e6
        assert mirror.requests_for("*/resolve/*", method="GET")
        assert all(r.header("authorization") is None for r in mirror.log)
        if primary_fault == "503":
            assert any(r.header("authorization") == "Bearer hf_secret_token" for r in primary.log)
    assert_complete(models_dir, small_repo)


def test_a_failure_mid_file_continues_the_same_part_on_the_mirror(models_dir: Path, small_repo: dict) -> None:
    with MockHub() as primary, MockHub() as mirror:
        primary.add_repo(QWEN, small_repo)
        mirror.add_repo(QWEN, small_repo)
        primary.faults = Faults(drop_after_bytes=3 << 20, path_glob="*model.safetensors")
        primary.queue_fault(Faults(status=503, times=None, path_glob="*model.safetensors"))
        download([primary.endpoint, mirror.endpoint])
        [continued] = mirror.requests_for("*model.safetensors", method="GET")
        assert continued.range_header == f"bytes={3 << 20}-"
    assert_complete(models_dir, small_repo)


def test_retries_give_up_with_a_clear_error_naming_file_endpoint_and_cause(
    models_dir: Path, hub: MockHub, fast_backoff: None
) -> None:
    hub.faults = Faults(status=503, path_glob="*model.safetensors", times=None)
    with pytest.raises(FileDownloadFailedError) as error:
        download(hub)
    message = str(error.value)
    assert "model.safetensors" in message and hub.endpoint in message and "503" in message
    assert len(hub.requests_for("*model.safetensors", method="GET")) == 1 + app_settings.DOWNLOAD_RETRIES
    assert DownloadState.load(models_dir / "qwen2.5-0.5b").status == FAILED


def test_unknown_repo_is_reported_not_retried_on_mirrors(models_dir: Path) -> None:
    with MockHub() as primary, MockHub() as mirror:
        mirror.add_repo("acme/other", {"config.json": b"{}"})
        with pytest.raises(RepoNotFoundError, match="not found"):
            ModelManager().download("acme/does-not-exist", endpoints=[primary.endpoint, mirror.endpoint])
        assert not mirror.requests_for("*/tree/*") and not mirror.requests_for("*/resolve/*")


def test_gated_repo_is_a_clear_error(models_dir: Path, small_repo: dict) -> None:
    with MockHub(token="hf_right") as hub:
        hub.add_repo(QWEN, small_repo, gated=True)
        with pytest.raises(GatedRepoError, match="HF_TOKEN"):
            download(hub)


def test_optional_file_404_is_skipped(models_dir: Path, hub: MockHub, small_repo: dict) -> None:
    hub.faults = Faults(status=404, path_glob="*generation_config.json", times=None)
    assert download(hub).status == DONE
    folder = models_dir / "qwen2.5-0.5b"
    assert not (folder / "generation_config.json").exists()
    assert DownloadState.load(folder).files["generation_config.json"].status == "skipped"
    assert ModelManager().info("qwen2.5-0.5b").status == STATUS_READY


# --- integrity ------------------------------------------------------------------------------------------------


def test_a_corrupt_byte_is_detected_and_the_file_fetched_again(models_dir: Path, hub: MockHub, small_repo: dict) -> None:
    hub.faults = Faults(corrupt_offset=12345, path_glob="*model.safetensors")
    assert download(hub).status == DONE
    assert len(hub.requests_for("*model.safetensors", method="GET")) == 2
    assert_complete(models_dir, small_repo)


def test_a_file_corrupt_every_time_is_reported_and_never_put_in_place(models_dir: Path, hub: MockHub) -> None:
    hub.faults = Faults(corrupt_offset=0, path_glob="*model.safetensors", times=None)
    with pytest.raises(ChecksumMismatchError, match="model.safetensors"):
        download(hub)
    assert not (models_dir / "qwen2.5-0.5b" / "model.safetensors").exists()
    assert ModelManager().info("qwen2.5-0.5b").status == STATUS_PARTIAL
    with pytest.raises(Exception):
        resolve_local_model("qwen2.5-0.5b")


def test_verify_finds_a_damaged_file_and_download_fetches_only_it(models_dir: Path, hub: MockHub, small_repo: dict) -> None:
    download(hub)
    manager = ModelManager()
    assert manager.verify("qwen2.5-0.5b") == []
    weights = models_dir / "qwen2.5-0.5b" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert manager.verify("qwen2.5-0.5b") == ["model.safetensors"]
    assert manager.info("qwen2.5-0.5b").status == STATUS_CORRUPT
    hub.clear_log()
    download(hub)
    assert {r.path.rsplit("/", 1)[-1] for r in hub.requests_for("*/resolve/*", method="GET")} == {"model.safetensors"}
    assert_complete(models_dir, small_repo)


def test_not_enough_disk_space_is_refused_before_downloading(
    models_dir: Path, hub: MockHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloader, "free_disk_bytes", lambda folder: WEIGHTS_SIZE)  # less than size + 10%
    with pytest.raises(InsufficientDiskSpaceError, match="GB"):
        download(hub)
    assert not hub.requests_for("*/resolve/*", method="GET")


# --- management -----------------------------------------------------------------------------------------------


def test_one_download_per_model_at_a_time(models_dir: Path, hub: MockHub) -> None:
    hub.faults = Faults(throttle_bytes_per_s=2 << 20, path_glob="*model.safetensors")
    manager = ModelManager()
    handle = manager.start_download("qwen2.5-0.5b", endpoints=[hub.endpoint])
    assert hub.wait_for(lambda log: any(r.body_bytes_sent for r in log if "model.safetensors" in r.path), 30)
    with pytest.raises(DownloadInProgressError):
        download(hub)
    assert manager.info("qwen2.5-0.5b").status == "downloading"
    handle.pause()
    handle.wait(10)


def test_delete_removes_the_folder_and_its_state(models_dir: Path, hub: MockHub) -> None:
    download(hub)
    manager = ModelManager()
    assert manager.delete("qwen2.5-0.5b")
    assert not (models_dir / "qwen2.5-0.5b").exists()
    assert manager.info("qwen2.5-0.5b").status == STATUS_NOT_DOWNLOADED


def test_add_a_user_repo_and_download_it_by_repo_id(models_dir: Path, small_repo: dict) -> None:
    manager = ModelManager()
    with pytest.raises(InvalidRepoIdError):
        manager.add_model("not a repo")
    with pytest.raises(InvalidRepoIdError):
        manager.add_model("../../etc")
    entry = manager.add_model("acme/Tiny-Chat-v1")
    assert entry.id == "tiny-chat-v1"
    assert manager.add_model("acme/Tiny-Chat-v1") == entry  # adding twice is harmless
    with MockHub() as hub:
        hub.add_repo("someone/Model", small_repo)
        state = manager.download("someone/Model", endpoints=[hub.endpoint])
    assert state.model_id == "model" and state.status == DONE
    assert {"tiny-chat-v1", "model"} <= {info.entry.id for info in manager.list_models()}


def test_endpoint_list_is_stored_and_checked(hub: MockHub) -> None:
    manager = ModelManager()
    assert manager.endpoints() == ["https://huggingface.co", "https://hf-mirror.com"]
    manager.set_endpoints([hub.endpoint + "/", "http://127.0.0.1:9"])
    assert manager.endpoints() == [hub.endpoint, "http://127.0.0.1:9"]
    hub.add_repo("HuggingFaceTB/SmolLM2-135M-Instruct", {"config.json": b"{}"})
    health = manager.check_endpoints()
    assert [h.healthy for h in health] == [True, False]
    manager.set_endpoints(None)
    assert manager.endpoints()[0] == "https://huggingface.co"


def test_token_goes_only_to_allowed_hosts() -> None:
    hub = HubClient(
        ["https://hf-mirror.com"], token="hf_x", token_hosts=("huggingface.co", "127.0.0.1:8000", "localhost", "[::1]:8000")
    )
    assert hub.auth_headers("https://huggingface.co/api/models/a/b") == {"Authorization": "Bearer hf_x"}
    assert hub.auth_headers("https://cdn-lfs.huggingface.co/x") == {"Authorization": "Bearer hf_x"}
    assert hub.auth_headers("https://hf-mirror.com/a/b/resolve/main/x") == {}
    assert hub.auth_headers("https://evilhuggingface.co/x") == {}
    assert hub.auth_headers("http://127.0.0.1:8000/x") == {"Authorization": "Bearer hf_x"}
    assert hub.auth_headers("http://127.0.0.1:8001/x") == {}
    # Over https only, but plain http to this machine is fine (tests, a local mirror); see tests/security.
    assert hub.auth_headers("http://huggingface.co/api/models/a/b") == {}
    assert hub.auth_headers("http://localhost/x") == {"Authorization": "Bearer hf_x"}
    assert hub.auth_headers("http://[::1]:8000/x") == {"Authorization": "Bearer hf_x"}
    # After a redirect, only on the server the request started at.
    start = "https://huggingface.co/a/b/resolve/main/x"
    moved = "https://huggingface.co/c/d/resolve/main/x"
    assert hub.auth_headers(moved, started_at=start) == {"Authorization": "Bearer hf_x"}
    assert hub.auth_headers("https://cdn-lfs.huggingface.co/x", started_at=start) == {}


def test_file_selection_prefers_safetensors() -> None:
    def entry(path: str) -> dict:
        return {"type": "file", "path": path, "size": 1, "oid": "0" * 40}

    names = [f.path for f in select_files([entry(n) for n in (
        "config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "merges.txt", "sub/model.safetensors"
    )])]
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "merges.txt"]
    assert "pytorch_model.bin" in [f.path for f in select_files([entry(n) for n in ("config.json", "pytorch_model.bin", "vocab.json")])]
    with pytest.raises(Exception, match="no transformers weights"):
        select_files([entry("config.json"), entry("tokenizer.json"), entry("model.onnx")])
    # A repository of GGUF files (one per quantization): just the preferred one (see tests/test_gguf_models.py).
    gguf = select_files([entry(n) for n in ("README.md", "m-q8_0.gguf", "m-q4_k_m.gguf", "m-f16.gguf")])
    assert [f.path for f in gguf] == ["m-q4_k_m.gguf"]


def test_two_models_download_at_the_same_time(models_dir: Path, hub: MockHub, small_repo: dict) -> None:
    hub.add_repo("acme/second", small_repo)
    hub.faults = Faults(throttle_bytes_per_s=2 << 20, path_glob="*model.safetensors", times=None)
    manager = ModelManager()
    first = manager.start_download("qwen2.5-0.5b", endpoints=[hub.endpoint])
    second = manager.start_download("acme/second", endpoints=[hub.endpoint])
    assert hub.wait_for(
        lambda log: len({r.path for r in log if r.path.endswith("model.safetensors") and not r.finished}) == 2, 30
    ), "both transfers should be in flight at once"
    assert first.wait(60).status == DONE and second.wait(60).status == DONE
    assert_complete(models_dir, small_repo)


def test_models_cli(models_dir: Path, hub: MockHub) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "main.py"), "models", *args],
            capture_output=True, text=True, env=os.environ, timeout=120,
        )

    added = cli("add", "acme/Cli-Model", "--id", "cli-model")
    assert added.returncode == 0 and "models download cli-model" in added.stdout
    hub.add_repo("acme/Cli-Model", {"config.json": b"{}", "model.safetensors": b"x" * 1000, "tokenizer.json": b"{}"})
    done = cli("download", "cli-model", "--endpoint", "http://127.0.0.1:9", "--endpoint", hub.endpoint)
    assert done.returncode == 0, done.stderr
    assert "cli-model is ready" in done.stdout
    assert "ready" in next(line for line in cli("list").stdout.splitlines() if line.startswith("cli-model"))
    assert cli("verify", "cli-model").returncode == 0
    assert cli("delete", "cli-model").returncode == 0
    assert not (models_dir / "cli-model").exists()
    for args, message in [
        (("download", "smollm2-135m"), "ships with Hearth"),
        (("download", "no-such-model"), "Unknown model"),
        (("add", "not-a-repo"), "owner/name"),
        (("verify", "qwen2.5-0.5b"), "models download qwen2.5-0.5b"),
        (("download", "acme/missing", "--endpoint", hub.endpoint), "not found"),
    ]:
        result = cli(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert message in result.stderr, (args, result.stderr)
