"""Start-up costs only what it uses: ``--help``, ``models list`` and a chat on the embedded model (llama.cpp) never
import torch or transformers (over a second together). A module check, not a timing: benchmarks/startup.py times it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "peft", "matplotlib", "flet")


def imported_by(arguments: list[str], tmp_path: Path) -> set[str]:
    environment = {**os.environ, "HEARTH_DATA_DIR": str(tmp_path / "data"), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-X", "importtime", "main.py", *arguments], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return {match.group(1) for match in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", done.stderr, re.MULTILINE)}


@pytest.mark.parametrize("arguments", [["--help"], ["evolve", "--help"], ["models", "list"]], ids=" ".join)
def test_commands_that_compute_nothing_import_no_ml_library(arguments: list[str], tmp_path: Path) -> None:
    modules = imported_by(arguments, tmp_path)
    assert "src.cli" in modules  # the check sees Hearth's own imports
    assert not [name for name in HEAVY if name in modules]


def test_a_chat_on_the_llamacpp_path_imports_no_torch(tmp_path: Path) -> None:
    modules = imported_by(["chat", "Say hi.", "--max-tokens", "1"], tmp_path)
    assert "xllamacpp" in modules  # it did answer, through llama.cpp
    assert "torch" not in modules and "transformers" not in modules
