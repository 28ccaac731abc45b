#!/usr/bin/env python3
"""The evolution simulation's costs and outcome on this machine, each figure beside its reference from the same run.

    .venv/bin/python benchmarks/evolution.py [--agents 20] [--world-size 20] [--repeats 5]
                                             [--generations 10] [--steps 100] [--skip-fitness]

Table 1 (embedded SmolLM2-135M, float32, CPU; medians of --repeats):
- decision time per world step for all agents: one batched forward pass with a different adapter per row vs one
  agent at a time (targets: batched >= 3x faster, <= 50 ms per agent decision amortised);
- one online training update per agent (batch 4): alone (``train_step``) and amortised when every agent trains in
  the same step (``train_steps``, what the simulation does) (target 200 ms);
- memory: RSS of a process with 20 agents (adapters, Adam state after a training step) minus RSS of a process with
  the base model alone, each in its own fresh subprocess (target under 100 MB).
Table 2: fitness of generation 1 and generation G of the learning LLM population, of an LLM population without
online learning (same seed, same worlds), and of the rule-based population on the same worlds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# OMP_WAIT_POLICY is not set: the CLI leaves OpenMP's default too (see src/workflows/evolution/cli.py).


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_probe(mode: str, agents: int) -> None:
    """Run in a subprocess: print the RSS once the base model alone, or the population, is loaded and used."""
    import torch

    from src.workflows.evolution.population import LoRAPopulation
    from src.workflows.evolution.world import ACTIONS, World

    if mode == "base":
        from transformers import AutoModelForCausalLM

        from src.utils.catalog import resolve_local_model

        _, folder = resolve_local_model("smollm2-135m")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.inference_mode():
            model(torch.ones((agents, 40), dtype=torch.long))  # the same forward shape as one batched decision
    else:
        population = LoRAPopulation("smollm2-135m", agents, ACTIONS, seed=0)
        world = World(size=20, seed=0, num_agents=agents)
        ids = world.alive_ids()
        names = [population.adapter_names[i] for i in ids]
        observations = [world.observation(i) for i in ids]
        population.decide(observations, names, [world.valid_actions(i) for i in ids], 1.0, torch.Generator())
        batch = [(observations[0], "north", 1.0)] * 4
        population.train_steps({name: batch for name in names}, 1e-3)  # every agent now holds Adam state
    print(json.dumps({"rss_mb": rss_mb()}))


def measure_memory(agents: int) -> tuple[float, float]:
    results = []
    for mode in ("base", "population"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-probe", mode, "--agents", str(agents)],
            capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
        results.append(json.loads(out.stdout.strip().splitlines()[-1])["rss_mb"])
    return results[0], results[1]


def timings(agents: int, world_size: int, repeats: int) -> dict[str, float]:
    import torch

    from src.workflows.evolution.population import LoRAPopulation
    from src.workflows.evolution.world import ACTIONS, World

    population = LoRAPopulation("smollm2-135m", agents, ACTIONS, seed=0)
    world = World(size=world_size, seed=1, num_agents=agents)
    generator = torch.Generator().manual_seed(0)
    batched, sequential = [], []
    for _ in range(repeats + 1):  # the first round warms up
        ids = world.alive_ids()
        observations = [world.observation(i) for i in ids]
        valid = [world.valid_actions(i) for i in ids]
        names = [population.adapter_names[i] for i in ids]
        t0 = time.perf_counter()
        decisions = population.decide(observations, names, valid, 1.0, generator)
        t1 = time.perf_counter()
        population.decide_sequential(observations, names, valid, 1.0, generator)
        t2 = time.perf_counter()
        batched.append(t1 - t0)
        sequential.append(t2 - t1)
        world.step({i: d.action for i, d in zip(ids, decisions, strict=True)})
    batched, sequential = batched[1:], sequential[1:]
    observation = world.observation(0)
    batch = [(observation, action, advantage) for action, advantage in (("north", 1.0), ("east", -0.5), ("rest", 0.2), ("west", 1.5))]
    single, together = [], []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        population.train_step(population.adapter_names[0], batch, 1e-3)
        t1 = time.perf_counter()
        population.train_steps({name: batch for name in population.adapter_names}, 1e-3)
        t2 = time.perf_counter()
        single.append(t1 - t0)
        together.append((t2 - t1) / agents)
    return {
        "batched": statistics.median(batched),
        "sequential": statistics.median(sequential),
        "train_single": statistics.median(single[1:]),
        "train_amortised": statistics.median(together[1:]),
        "adapter_mb": population.adapter_nbytes() / 2**20,
    }


def fitness_runs(agents: int, world_size: int, generations: int, steps: int) -> dict[str, list[float]]:
    from src.workflows.evolution import EvolutionSimulation
    from src.workflows.evolution.config import EvolutionConfig
    from src.workflows.evolution.plots import plot_fitness

    series: dict[str, list[float]] = {}
    out_dir = Path(tempfile.mkdtemp(prefix="hearth-evolution-bench-"))
    for label, learning in (("LLM", True), ("LLM (no learning)", False)):
        config = EvolutionConfig.from_env(
            env={}, env_file=None, num_agents=agents, world_size=world_size, num_generations=generations,
            steps_per_generation=steps, enable_online_learning=learning, seed=7,
        )  # fmt: skip
        started = time.perf_counter()
        result = EvolutionSimulation(config=config, run_dir=out_dir / label.replace(" ", "_")).run()
        print(f"  {label}: {generations} generations in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        series[f"{label} mean"] = [g.mean_fitness for g in result.generations]
        series[f"{label} max"] = [g.max_fitness for g in result.generations]
        series["rule-based mean"] = [g.rule_based_mean for g in result.generations]
    plot_fitness(series, out_dir / "fitness.png", title="Fitness per generation (benchmark)")
    print(f"  plot: {out_dir / 'fitness.png'}", file=sys.stderr)
    return series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--world-size", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--skip-fitness", action="store_true")
    parser.add_argument("--memory-probe", choices=("base", "population"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe, args.agents)
        return
    os.environ.setdefault("HEARTH_DATA_DIR", tempfile.mkdtemp(prefix="hearth-bench-"))

    t = timings(args.agents, args.world_size, args.repeats)
    base_mb, population_mb = measure_memory(args.agents)
    n = args.agents
    print(f"\nTable 1: {n} agents, embedded SmolLM2-135M (float32, CPU), median of {args.repeats}\n")
    print("| measure | Hearth | reference | ratio | target |")
    print("|---|---|---|---|---|")
    print(
        f"| decision, one world step, all {n} agents (s) | {t['batched']:.3f} batched | {t['sequential']:.3f} one at a "
        f"time | {t['sequential'] / t['batched']:.2f}x faster | >= 3x |"
    )
    print(f"| per agent decision, amortised (ms) | {1000 * t['batched'] / n:.1f} | 50 (target) | "
          f"{(1000 * t['batched'] / n) / 50:.2f} | <= 1.00 |")  # fmt: skip
    print(f"| training update per agent, all agents in one pass (ms) | {1000 * t['train_amortised']:.0f} | 200 (target) | "
          f"{1000 * t['train_amortised'] / 200:.2f} | <= 1.00 |")  # fmt: skip
    print(f"| training update, one agent alone (ms) | {1000 * t['train_single']:.0f} | 200 (target) | "
          f"{1000 * t['train_single'] / 200:.2f} | - |")  # fmt: skip
    extra = population_mb - base_mb
    print(f"| RSS: {n} agents minus base model alone (MB) | {extra:.0f} ({population_mb:.0f} - {base_mb:.0f}) | "
          f"100 (target) | {extra / 100:.2f} | <= 1.00 |")  # fmt: skip
    print(f"| one adapter's weights (MB) | {t['adapter_mb']:.2f} | 1-2 (issue) | - | - |")
    if args.skip_fitness:
        return
    print(f"\nRunning {args.generations} generations x {args.steps} steps, twice (learning / no learning)...", file=sys.stderr)
    series = fitness_runs(n, args.world_size, args.generations, args.steps)
    print(f"\nTable 2: mean fitness (max in brackets), {n} agents, world {args.world_size}, {args.steps} steps per generation\n")
    print(f"| population | generation 1 | generation {args.generations} | change | vs rule-based (gen {args.generations}) |")
    print("|---|---|---|---|---|")
    rule = series["rule-based mean"]
    for label in ("LLM", "LLM (no learning)"):
        means, maxes = series[f"{label} mean"], series[f"{label} max"]
        print(
            f"| {label} | {means[0]:.1f} ({maxes[0]:.1f}) | {means[-1]:.1f} ({maxes[-1]:.1f}) | "
            f"{means[-1] - means[0]:+.1f} | {means[-1] / rule[-1]:.2f}x |"
        )
    print(f"| rule-based | {rule[0]:.1f} | {rule[-1]:.1f} | {rule[-1] - rule[0]:+.1f} | 1.00x |")


if __name__ == "__main__":
    main()
