"""The evolution run on the real embedded model: generations, files, checkpoint/resume, elites, export, CLI, chat parsing.

Worlds and step counts are tiny so that each run takes seconds; what is checked is the bookkeeping and that the same
seed gives the same run, not that the agents get good (the benchmark measures that).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from src.errors import EvolutionConfigError, EvolutionRunError
from src.settings import PROJECT_ROOT
from src.ui.workflows.evolution_view import parse_evolve_command
from src.workflows.evolution import EvolutionEvent, EvolutionSimulation
from src.workflows.evolution.config import EvolutionConfig
from src.workflows.evolution.population import load_exported
from src.workflows.evolution.simulation import (
    ADAPTERS_FILE,
    BEST_AGENT_DIR,
    FITNESS_PLOT,
    METRICS_CSV,
    METRICS_JSON,
    derived_seed,
)

TIMING_FIELDS = {"decision_time_s", "training_time_s", "wall_time_s"}


def small_config(**overrides: object) -> EvolutionConfig:
    values: dict[str, object] = {
        "num_agents": 3, "world_size": 6, "steps_per_generation": 8, "num_generations": 2, "train_every": 4,
        "batch_size": 2, "seed": 5, "learning_rate": 1e-3,
    }  # fmt: skip
    values.update(overrides)
    return EvolutionConfig.from_env(env={}, env_file=None, **values)


def comparable(history: list[object]) -> list[dict[str, object]]:
    return [{k: v for k, v in asdict(row).items() if k not in TIMING_FIELDS} for row in history]  # type: ignore[call-overload]


def test_a_real_short_run_leaves_metrics_plots_checkpoint_and_the_best_agent(tmp_path: Path) -> None:
    events: list[EvolutionEvent] = []
    sim = EvolutionSimulation(
        4, 8, config=small_config(num_generations=2, steps_per_generation=20, train_every=5),
        run_dir=tmp_path / "run", on_event=events.append, snapshot_every=10,
    )  # fmt: skip
    result = sim.run()
    assert not result.cancelled and len(result.generations) == 2
    rows = list(csv.DictReader((result.run_dir / METRICS_CSV).open()))
    assert [int(r["generation"]) for r in rows] == [1, 2]
    for row, stats in zip(rows, result.generations, strict=True):
        assert float(row["mean_fitness"]) == pytest.approx(stats.mean_fitness)
        assert stats.min_fitness <= stats.mean_fitness <= stats.max_fitness
        assert stats.decisions > 0 and stats.train_updates >= 0
    assert json.loads((result.run_dir / METRICS_JSON).read_text())["config"]["num_agents"] == 4
    assert (result.run_dir / FITNESS_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (result.run_dir / "world_gen2.png").is_file() and (result.run_dir / ADAPTERS_FILE).is_file()
    # Live view: pictures during the run, a message per generation, the plot at the end.
    assert any(e.kind == "step" and e.image and e.image[:4] == b"\x89PNG" for e in events)
    assert [e.generation for e in events if e.kind == "generation"] == [1, 2]
    assert events[-1].kind == "finished" and events[-1].image is not None
    # The exported best agent loads with peft on a fresh base model.
    agent = load_exported(result.run_dir / BEST_AGENT_DIR)
    assert agent.adapter_names == ["agent_0"]


def test_online_learning_trains_and_without_it_nothing_is_trained(tmp_path: Path) -> None:
    learning = EvolutionSimulation(config=small_config(num_generations=1, steps_per_generation=12), run_dir=tmp_path / "a")
    assert learning.run().generations[0].train_updates > 0
    frozen = EvolutionSimulation(
        config=small_config(num_generations=1, steps_per_generation=12, enable_online_learning=False),
        run_dir=tmp_path / "b",
    )
    stats = frozen.run().generations[0]
    assert stats.train_updates == 0 and stats.training_time_s == 0


def test_an_interrupted_run_resumed_gives_the_same_result_as_an_uninterrupted_one(tmp_path: Path) -> None:
    whole = EvolutionSimulation(config=small_config(), run_dir=tmp_path / "whole").run()

    cancel = threading.Event()

    def stop_after_first(event: EvolutionEvent) -> None:
        if event.kind == "generation":
            cancel.set()

    first = EvolutionSimulation(config=small_config(), run_dir=tmp_path / "split", on_event=stop_after_first, cancel=cancel)
    interrupted = first.run()
    assert interrupted.cancelled and len(interrupted.generations) == 1

    resumed = EvolutionSimulation.resume(tmp_path / "split").run()
    assert not resumed.cancelled
    assert comparable(resumed.generations) == comparable(whole.generations)
    from safetensors.torch import load_file

    a, b = load_file(whole.run_dir / ADAPTERS_FILE), load_file(resumed.run_dir / ADAPTERS_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_elites_keep_their_adapters_bit_for_bit(tmp_path: Path) -> None:
    sim = EvolutionSimulation(config=small_config(num_agents=5, elite_ratio=0.4), run_dir=tmp_path / "run")
    sim.population = sim._load_population()
    before = [sim.population.get_adapter_state(sim._name(i)) for i in range(5)]
    sim._breed(0, [1.0, 50.0, -3.0, 20.0, 0.0])  # elites: agents 1 and 3
    after = [sim.population.get_adapter_state(sim._name(i)) for i in range(5)]
    for slot, elite in enumerate((1, 3)):
        assert all(torch.equal(after[slot][k], before[elite][k]) for k in before[elite])
    for child in range(2, 5):  # children differ from every parent (crossover + mutation)
        assert not any(all(torch.equal(after[child][k], parent[k]) for k in parent) for parent in before)


def test_bad_settings_and_missing_runs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(EvolutionConfigError, match="NUM_AGENTS"):
        EvolutionSimulation(0, config=small_config())
    with pytest.raises(EvolutionRunError, match="No evolution run"):
        EvolutionSimulation.resume(tmp_path / "nothing-here")


def test_derived_seeds_are_stable_and_distinct() -> None:
    assert derived_seed(1, 0, "world") == derived_seed(1, 0, "world")
    assert len({derived_seed(1, g, p) for g in range(3) for p in ("world", "decisions")}) == 6


def test_chat_command_parsing() -> None:
    assert parse_evolve_command("hello") is None
    assert parse_evolve_command("/evolve") == {}
    assert parse_evolve_command("/evolve 20 agents 10 generations") == {"num_agents": 20, "num_generations": 10}
    assert parse_evolve_command("/evolve 4 agents, 2 gens, 30 steps, size 8, seed 3") == {
        "num_agents": 4, "num_generations": 2, "steps_per_generation": 30, "world_size": 8, "seed": 3,
    }  # fmt: skip
    assert parse_evolve_command("/evolve --agents 6 --generations=3") == {"num_agents": 6, "num_generations": 3}
    with pytest.raises(ValueError, match="cannot read: lots"):
        parse_evolve_command("/evolve lots of agents")


def test_cli_runs_exports_and_watches(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HEARTH_DATA_DIR": str(tmp_path / "data"),
        "NUM_AGENTS": "2", "WORLD_SIZE": "6", "TRAIN_EVERY": "3",
    }  # fmt: skip
    main = [sys.executable, str(PROJECT_ROOT / "main.py"), "evolve"]
    run = subprocess.run(
        [*main, "--steps", "6", "--generations", "1", "--seed", "2"],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Generation 1:" in run.stdout and "Evolution finished" in run.stdout
    [run_dir] = list((tmp_path / "data" / "evolution").iterdir())
    exported = subprocess.run(
        [*main, "export", str(run_dir), "--to", str(tmp_path / "best")], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "best" / "adapter_config.json").is_file()
    watched = subprocess.run(
        [*main, "watch", str(tmp_path / "best"), "--steps", "3", "--delay", "0"], env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.count("step ") == 3 and "fitness" in watched.stdout
    missing = subprocess.run(
        [*main, "--resume", str(tmp_path / "nope")], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode == 1 and "No evolution run" in missing.stderr
