"""Tests of the mock Hugging Face Hub itself (tests/mock_hub.py): metadata shape, hashes, ranges, errors, faults."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.mock_hub import Faults, MockHub, make_random_file, random_bytes

REPO = "acme/tiny"
TOKEN = "hf_test_token"
CONFIG = b'{"model_type": "llama"}'
NOTES = b"notes in a sub folder\n"
WEIGHTS = bytes(range(256)) * 8  # 2 KiB, LFS by its suffix
BIG_SIZE = 3000  # a Path file above the test's lfs_threshold


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\x00" + data).hexdigest()


def pointer_oid(data: bytes) -> tuple[str, int]:
    pointer = (
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n"
    ).encode()
    return git_oid(pointer), len(pointer)


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    return make_random_file(tmp_path / "big.dat", BIG_SIZE, seed=3)


@pytest.fixture
def hub(big_file: Path) -> Iterator[MockHub]:
    with MockHub(token=TOKEN) as server:
        server.add_repo(
            REPO,
            {"config.json": CONFIG, "sub/notes.txt": NOTES, "model.safetensors": WEIGHTS, "data/big.dat": big_file},
            lfs_threshold=2048,
        )
        yield server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


def url(hub: MockHub, path: str, rev: str = "main") -> str:
    return f"{hub.endpoint}/{REPO}/resolve/{rev}/{path}"


def read_until_error(client: httpx.Client, target: str) -> tuple[bytes, Exception | None]:
    received = bytearray()
    try:
        with client.stream("GET", target) as response:
            for piece in response.iter_raw():
                received += piece
    except httpx.HTTPError as exc:
        return bytes(received), exc
    return bytes(received), None


# --- metadata ---


def test_revision_info_by_branch_and_sha(hub: MockHub, client: httpx.Client) -> None:
    info = client.get(f"{hub.endpoint}/api/models/{REPO}/revision/main").json()
    sha = info["sha"]
    assert len(sha) == 40 and int(sha, 16) >= 0
    assert (info["id"], info["modelId"], info["private"], info["gated"]) == (REPO, REPO, False, False)
    assert sorted(s["rfilename"] for s in info["siblings"]) == [
        "config.json", "data/big.dat", "model.safetensors", "sub/notes.txt"
    ]
    assert client.get(f"{hub.endpoint}/api/models/{REPO}/revision/{sha}").json()["sha"] == sha
    assert hub.commit_sha(REPO) == sha
    # Deterministic: the same files give the same commit.
    with MockHub() as other:
        files = {"config.json": CONFIG, "sub/notes.txt": NOTES, "model.safetensors": WEIGHTS}
        assert other.add_repo("x/y", files) == other.add_repo("z/w", dict(reversed(list(files.items()))))


def test_tree_hashes_and_folders(hub: MockHub, client: httpx.Client, big_file: Path) -> None:
    base = f"{hub.endpoint}/api/models/{REPO}/tree/main"
    top = client.get(base).json()
    assert {(e["type"], e["path"]) for e in top} == {
        ("directory", "data"), ("directory", "sub"), ("file", "config.json"), ("file", "model.safetensors")
    }
    for query in ("?recursive=true", "?recursive=1"):
        entries = {e["path"]: e for e in client.get(base + query).json() if e["type"] == "file"}
        assert set(entries) == {"config.json", "sub/notes.txt", "model.safetensors", "data/big.dat"}
    config, notes = entries["config.json"], entries["sub/notes.txt"]
    assert (config["oid"], config["size"], "lfs" in config) == (git_oid(CONFIG), len(CONFIG), False)
    assert (notes["oid"], notes["size"]) == (git_oid(NOTES), len(NOTES))
    big = big_file.read_bytes()
    for path, content in (("model.safetensors", WEIGHTS), ("data/big.dat", big)):
        entry = entries[path]
        oid, pointer_size = pointer_oid(content)  # as on the Hub: the oid of what git stores, the pointer
        assert entry["oid"] == oid and entry["size"] == len(content)
        assert entry["lfs"] == {
            "oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": pointer_size
        }
    assert [e["path"] for e in client.get(base + "/sub").json()] == ["sub/notes.txt"]
    missing = client.get(base + "/nope")
    assert (missing.status_code, missing.headers["x-error-code"]) == (404, "EntryNotFound")


def test_tree_pagination_link(hub: MockHub, client: httpx.Client) -> None:
    hub.tree_page_size = 2
    page_url: str | None = f"{hub.endpoint}/api/models/{REPO}/tree/main?recursive=true"
    paths: list[str] = []
    while page_url:
        response = client.get(page_url)
        paths += [e["path"] for e in response.json()]
        page_url = response.links.get("next", {}).get("url")
    assert len(paths) == 6 and len(set(paths)) == 6  # 4 files and 2 folders, each once


# --- files ---


def test_head_headers(hub: MockHub, client: httpx.Client) -> None:
    sha = hub.commit_sha(REPO)
    plain = client.head(url(hub, "config.json"))
    assert plain.status_code == 200
    assert plain.headers["content-length"] == str(len(CONFIG))
    assert plain.headers["accept-ranges"] == "bytes"
    assert plain.headers["etag"] == f'"{git_oid(CONFIG)}"'
    assert plain.headers["x-repo-commit"] == sha and "x-linked-etag" not in plain.headers
    lfs = client.head(url(hub, "model.safetensors", rev=sha))
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    assert lfs.headers["etag"] == lfs.headers["x-linked-etag"] == f'"{digest}"'
    assert lfs.headers["x-linked-size"] == lfs.headers["content-length"] == str(len(WEIGHTS))
    assert client.get(url(hub, "config.json")).content == CONFIG


def test_ranges(hub: MockHub, client: httpx.Client, big_file: Path) -> None:
    big = big_file.read_bytes()
    tail = client.get(url(hub, "data/big.dat"), headers={"Range": "bytes=1000-"})
    assert tail.status_code == 206 and tail.content == big[1000:]
    assert tail.headers["content-range"] == f"bytes 1000-{BIG_SIZE - 1}/{BIG_SIZE}"
    middle = client.get(url(hub, "model.safetensors"), headers={"Range": "bytes=10-19"})
    assert (middle.status_code, middle.content) == (206, WEIGHTS[10:20])
    beyond = client.get(url(hub, "config.json"), headers={"Range": f"bytes={len(CONFIG)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(CONFIG)}"


def test_error_codes(hub: MockHub, client: httpx.Client) -> None:
    cases = {
        f"{hub.endpoint}/api/models/acme/missing/revision/main": "RepoNotFound",
        f"{hub.endpoint}/acme/missing/resolve/main/config.json": "RepoNotFound",
        f"{hub.endpoint}/api/models/{REPO}/revision/nope": "RevisionNotFound",
        url(hub, "config.json", rev="nope"): "RevisionNotFound",
        url(hub, "missing.json"): "EntryNotFound",
    }
    for target, code in cases.items():
        response = client.get(target)
        assert (response.status_code, response.headers.get("x-error-code")) == (404, code), target
        assert response.json()["error"]
    assert "Repository Not Found for url:" in client.get(f"{hub.endpoint}/acme/missing/resolve/main/x").json()["error"]


def test_gated_repo(hub: MockHub, client: httpx.Client) -> None:
    hub.add_repo("acme/gated", {"config.json": CONFIG}, gated=True)
    target = f"{hub.endpoint}/acme/gated/resolve/main/config.json"
    anonymous = client.get(target)
    assert (anonymous.status_code, anonymous.headers["x-error-code"]) == (401, "GatedRepo")
    wrong = client.get(target, headers={"Authorization": "Bearer hf_wrong"})
    assert (wrong.status_code, wrong.headers["x-error-code"]) == (403, "GatedRepo")
    good = client.get(target, headers={"Authorization": f"Bearer {TOKEN}"})
    assert (good.status_code, good.content) == (200, CONFIG)
    info = client.get(f"{hub.endpoint}/api/models/acme/gated/revision/main")
    assert info.status_code == 200 and info.json()["gated"] == "auto"  # metadata stays public, as on the Hub


def test_redirect_lfs_to_separate_cdn(big_file: Path, client: httpx.Client) -> None:
    with MockHub(token=TOKEN, separate_cdn=True) as hub:
        hub.add_repo("acme/cdn", {"model.safetensors": big_file, "config.json": CONFIG}, redirect_lfs=True)
        target = f"{hub.endpoint}/acme/cdn/resolve/main/model.safetensors"
        head = client.head(target, headers={"Authorization": f"Bearer {TOKEN}"})
        digest = hashlib.sha256(big_file.read_bytes()).hexdigest()
        assert head.status_code == 302 and head.headers["location"] == f"{hub.cdn_endpoint}/cdn/{digest}"
        assert head.headers["x-linked-size"] == str(BIG_SIZE) and head.headers["x-linked-etag"] == f'"{digest}"'
        ranged = client.get(
            target, headers={"Authorization": f"Bearer {TOKEN}", "Range": "bytes=100-"}, follow_redirects=True
        )
        assert ranged.status_code == 206 and ranged.content == big_file.read_bytes()[100:]
        [cdn] = hub.requests_for("/cdn/*")
        assert cdn.listener == "cdn" and cdn.range_header == "bytes=100-"
        assert "authorization" not in cdn.headers  # another origin: httpx dropped the token
        assert client.get(f"{hub.endpoint}/acme/cdn/resolve/main/config.json").content == CONFIG  # not LFS


# --- faults ---


def test_drop_after_bytes(hub: MockHub, client: httpx.Client) -> None:
    client.head(url(hub, "data/big.dat"))  # a HEAD probe does not use up a body fault
    hub.faults = Faults(drop_after_bytes=1000, path_glob="*big.dat")
    received, error = read_until_error(client, url(hub, "data/big.dat"))
    assert len(received) == 1000 and isinstance(error, httpx.RemoteProtocolError)
    assert hub.faults.fired == 1 and client.get(url(hub, "data/big.dat")).status_code == 200  # times=1
    faulty = [r for r in hub.log if r.fault]
    assert [(r.method, r.fault, r.body_bytes_sent) for r in faulty] == [("GET", "drop_after_bytes=1000", 1000)]


def test_reset_after_bytes(hub: MockHub, client: httpx.Client) -> None:
    hub.faults = Faults(reset_after_bytes=500)
    received, error = read_until_error(client, url(hub, "data/big.dat"))
    assert isinstance(error, (httpx.ReadError, httpx.RemoteProtocolError)) and len(received) <= 500


def test_status_on_api_then_queue(hub: MockHub, client: httpx.Client) -> None:
    hub.faults = Faults(status=503, applies_to="api", times=2, retry_after_s=1)
    hub.queue_fault(status=500, applies_to="all", path_glob="*/revision/*")
    revision = f"{hub.endpoint}/api/models/{REPO}/revision/main"
    first = client.get(revision)
    assert first.status_code == 503 and first.headers["retry-after"] == "1" and "error" in first.json()
    assert client.get(url(hub, "config.json")).status_code == 200  # resolve is not covered
    assert [client.get(revision).status_code for _ in range(3)] == [503, 500, 200]
    assert [r.fault for r in hub.requests_for("*/revision/*")] == ["status=503+retry_after_s=1"] * 2 + [
        "status=500", None
    ]


def test_ignore_range_and_corrupt(hub: MockHub, client: httpx.Client, big_file: Path) -> None:
    big = big_file.read_bytes()
    hub.faults = Faults(ignore_range=True)
    whole = client.get(url(hub, "data/big.dat"), headers={"Range": "bytes=100-"})
    assert whole.status_code == 200 and whole.content == big
    hub.faults = Faults(corrupt_offset=1234)
    served = client.get(url(hub, "data/big.dat"), headers={"Range": "bytes=1000-"}).content
    diffs = [i for i, (a, b) in enumerate(zip(served, big[1000:])) if a != b]
    assert len(served) == BIG_SIZE - 1000 and diffs == [234] and served[234] == big[1234] ^ 0xFF


def test_throttle(hub: MockHub, client: httpx.Client) -> None:
    hub.faults = Faults(throttle_bytes_per_s=10_000)
    started = time.monotonic()
    assert client.get(url(hub, "model.safetensors")).content == WEIGHTS  # 2048 bytes at 10 kB/s
    assert time.monotonic() - started >= 0.2


def test_stall(hub: MockHub, client: httpx.Client) -> None:
    hub.faults = Faults(stall_s=0.3, applies_to="api")
    started = time.monotonic()
    assert client.get(f"{hub.endpoint}/api/models/{REPO}/revision/main").status_code == 200
    assert time.monotonic() - started >= 0.3
    hub.faults = Faults(stall_s=5.0)
    with pytest.raises(httpx.ReadTimeout):
        client.get(url(hub, "config.json"), timeout=0.2)
    assert hub.wait_for(lambda log: log[-1].client_disconnected and log[-1].finished, 2.0)


# --- log and lifecycle ---


def test_log_records_and_stop_listener(hub: MockHub, client: httpx.Client) -> None:
    client.get(url(hub, "data/big.dat"), headers={"Range": "bytes=7-", "Authorization": "Bearer abc"})
    [record] = hub.requests_for("*/big.dat", method="GET")
    method, path, query, headers, range_header, status, sent, fault = record
    assert (method, path, query, range_header, status, sent, fault) == (
        "GET", f"/{REPO}/resolve/main/data/big.dat", "", "bytes=7-", 206, BIG_SIZE - 7, None
    )
    assert headers["authorization"] == "Bearer abc" and hub.wait_idle() and record.finished
    port = hub.port
    hub.stop_listener(close_connections=True)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url(hub, "config.json"), timeout=2.0)
    assert len(hub.log) == 1
    hub.start()
    assert hub.port == port and httpx.get(url(hub, "config.json")).content == CONFIG
    hub.clear_log()
    assert hub.log == []


def test_random_file_is_deterministic(tmp_path: Path) -> None:
    a = make_random_file(tmp_path / "a", 3 << 20 | 5, seed=9).read_bytes()
    assert a == random_bytes(len(a), seed=9) and a[:100] == make_random_file(tmp_path / "b", 100, 9).read_bytes()
    assert random_bytes(10, seed=9, offset=(1 << 20) - 3) == a[(1 << 20) - 3 : (1 << 20) + 7]
    assert a != make_random_file(tmp_path / "c", len(a), seed=10).read_bytes()
