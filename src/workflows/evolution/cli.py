"""``python main.py evolve ...``: run, resume, export and watch evolution runs from the terminal."""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


def add_evolve_parser(commands: Any) -> None:
    evolve = commands.add_parser(
        "evolve",
        help="LLM agents with their own LoRA adapters live in a grid world, learn and evolve",
        description="Run the evolution simulation. Settings not given here come from the environment or .env "
        "(NUM_AGENTS, WORLD_SIZE, STEPS_PER_GENERATION, NUM_GENERATIONS, SEED, MODEL_PATH, LORA_RANK, ...). Ctrl+C "
        "stops after the current step; `--resume RUN` continues from the last finished generation. "
        "`evolve export RUN` copies the best agent's adapter; `evolve watch RUN` shows it play.",
    )
    evolve.add_argument("--agents", type=int, metavar="N", dest="num_agents", help="number of agents (default 20)")
    evolve.add_argument("--world-size", type=int, metavar="S", dest="world_size", help="grid side length (default 20)")
    evolve.add_argument("--steps", type=int, metavar="N", dest="steps_per_generation", help="world steps per generation")
    evolve.add_argument("--generations", type=int, metavar="G", dest="num_generations", help="number of generations")
    evolve.add_argument("--seed", type=int, metavar="S", help="random seed (same seed, same run)")
    evolve.add_argument("--model", dest="model_path", metavar="ID", help="base model: local model id or folder (default: embedded)")
    evolve.add_argument("--no-learning", action="store_true", help="no online learning: evolution only")
    evolve.add_argument("--free-text", action="store_true", help="agents write their action (comparison mode)")
    evolve.add_argument("--resume", metavar="RUN", help="continue this run (its folder or name)")
    actions = evolve.add_subparsers(dest="evolve_command", metavar="ACTION")
    export = actions.add_parser("export", help="copy the best agent's adapter (peft save_pretrained) to a folder")
    export.add_argument("run", help="the run's folder or name")
    export.add_argument("--to", dest="target", help="destination folder (default: print where it is)")
    watch = actions.add_parser("watch", help="watch the best agent of a run play a new world in the terminal")
    watch.add_argument("run", help="the run's folder or name, or an exported adapter folder")
    watch.add_argument("--steps", type=int, default=60)
    watch.add_argument("--seed", type=int, default=0)
    watch.add_argument("--delay", type=float, default=0.15, help="seconds between frames (0: as fast as possible)")


def run_evolve(args: argparse.Namespace) -> int:
    # OpenMP's wait policy is left to its default (spin briefly, then sleep): PASSIVE made a batched decision of 20
    # agents 1.5x slower (2.24 vs 1.47 s) on an idle 2-core machine. Threads: HEARTH_THREADS (src/utils/cpu.py).
    if args.evolve_command == "export":
        return _export(args)
    if args.evolve_command == "watch":
        return _watch(args)
    return _run(args)


def _best_agent_dir(run: str) -> Path:
    from src.errors import EvolutionRunError
    from src.workflows.evolution.population import EXPORT_METADATA
    from src.workflows.evolution.simulation import BEST_AGENT_DIR, resolve_run_dir

    if (Path(run).expanduser() / EXPORT_METADATA).is_file():
        return Path(run).expanduser()
    folder = resolve_run_dir(run) / BEST_AGENT_DIR
    if not folder.is_dir():
        raise EvolutionRunError(f"The run {run} has no exported best agent yet (it is written after each generation).")
    return folder


def _export(args: argparse.Namespace) -> int:
    source = _best_agent_dir(args.run)
    if not args.target:
        print(source)
        return 0
    target = Path(args.target).expanduser()
    if target.exists():
        print(f"error: {target} already exists; choose a new folder", file=sys.stderr)
        return EXIT_USER_ERROR
    shutil.copytree(source, target)
    print(f"Exported the best agent to {target} (load it with peft: PeftModel.from_pretrained(base, '{target}')).")
    return 0


def _watch(args: argparse.Namespace) -> int:
    import torch

    from src.workflows.evolution.population import load_exported
    from src.workflows.evolution.world import World

    folder = _best_agent_dir(args.run)
    agent = load_exported(folder)
    name = agent.adapter_names[0]
    size = _run_world_size(folder)
    world = World(size=size, seed=args.seed, num_agents=1)
    generator = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        if world.done:
            break
        decision = agent.decide([world.observation(0)], [name], [world.valid_actions(0)], 0.0, generator)[0]
        outcome = world.step({0: decision.action})[0]
        print(f"\nstep {step + 1}: {decision.action} -> {outcome.event} ({outcome.reward:+.0f}), energy {outcome.energy}")
        print(world.render_text(), flush=True)
        if args.delay > 0:
            time.sleep(args.delay)
    body = world.agents[0]
    print(f"\nfitness {world.fitnesses()[0]:.1f}: delivered {body.food_delivered}, collected {body.food_collected}")
    return 0


def _run_world_size(best_agent_dir: Path) -> int:
    """The world size of the run the agent came from (a watched agent plays the kind of world it evolved in)."""
    import json

    from src.workflows.evolution.config import DEFAULT_WORLD_SIZE
    from src.workflows.evolution.simulation import CONFIG_FILE

    config = best_agent_dir.parent / CONFIG_FILE
    try:
        return int(json.loads(config.read_text(encoding="utf-8"))["world_size"])
    except (OSError, ValueError, KeyError):
        return DEFAULT_WORLD_SIZE


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from src.utils.interruptible import run_interruptibly
    from src.workflows.evolution.simulation import EvolutionEvent, EvolutionSimulation

    cancel = threading.Event()
    bar: Any = None

    def show(event: EvolutionEvent) -> None:
        nonlocal bar
        if event.kind == "step":
            if bar is None:
                bar = tqdm(total=event.steps, unit="step", dynamic_ncols=True, file=sys.stderr)
            bar.set_description(f"generation {event.generation}/{event.num_generations}")
            bar.n = event.step
            bar.set_postfix(best=f"{event.best_fitness:.1f}" if event.best_fitness is not None else "-")
            bar.refresh()
        elif event.kind in ("generation", "notice"):
            if bar is not None:
                bar.close()
                bar = None
            print(event.text, flush=True)

    if args.resume:
        sim = EvolutionSimulation.resume(
            args.resume, on_event=show, cancel=cancel, num_generations=args.num_generations
        )
    else:
        overrides = {
            "seed": args.seed,
            "model_path": args.model_path,
            "enable_online_learning": False if args.no_learning else None,
            "decision_mode": "free_text" if args.free_text else None,
            "num_generations": args.num_generations,
            "steps_per_generation": args.steps_per_generation,
        }
        sim = EvolutionSimulation(args.num_agents, args.world_size, on_event=show, cancel=cancel, **overrides)
    try:
        result = run_interruptibly(sim.run, cancel, "stopping after the current step...", "hearth-evolution")
    finally:
        if bar is not None:
            bar.close()
    if result is None:
        print("error: the evolution stopped without a result", file=sys.stderr)
        return EXIT_USER_ERROR
    print(result.summary())
    if result.cancelled:
        print(f"Continue with: python main.py evolve --resume {result.run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
