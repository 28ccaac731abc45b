"""The evolution run: generations of LLM agents living in a grid world, learning online and passing on their adapters.

One generation = a fresh ``World`` (seeded by the run's seed and the generation number), every agent deciding each
step through its own LoRA adapter on the one shared base model (one batched forward pass for all living agents),
and, every ``train_every`` steps, one policy-gradient step per living agent on a batch of its own experiences.
Then the fittest ``elite_ratio`` are kept unchanged and the other slots are filled with mutated crossovers.

Decisions written down here:

- Learning state (experience buffers, reward baselines, Adam moments) belongs to one life: it starts fresh every
  generation. What is inherited is the adapter weights only. This also makes a generation boundary a complete
  checkpoint: with every random stream derived from ``(seed, generation)``, a resumed run replays exactly what an
  uninterrupted run would have done (tested).
- The advantage is the reward minus the agent's running baseline (an exponential mean of its own rewards, weight
  ``BASELINE_DECAY``), computed when the batch is trained, so it reflects how good the action was compared with what
  the agent usually gets now.
- Agents learn only while alive; a dead agent's adapter still takes part in selection with its final fitness.
- "The best agent" exported after each generation is the fittest of the generation just played (fitness of
  different generations come from different worlds and are not comparable enough to keep an all-time best).
- Every generation's rule-based population plays the same world (same seed) so the comparison is like for like.
- A cancel stops within one world step; the partial generation is not checkpointed, and ``resume`` re-plays it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from src.errors import EvolutionRunError
from src.settings import get_settings
from src.utils.files import write_atomically
from src.workflows.evolution.config import EvolutionConfig
from src.workflows.evolution.experience import Experience, ExperienceBuffer
from src.workflows.evolution.genetics import breed, select_next_generation
from src.workflows.evolution.plots import plot_fitness, render_world
from src.workflows.evolution.rule_based import run_rule_based_generation
from src.workflows.evolution.world import ACTIONS, World

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
ADAPTERS_FILE = "adapters.safetensors"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
FITNESS_PLOT = "fitness.png"
BEST_AGENT_DIR = "best_agent"
WORLD_SNAPSHOT = "world_gen{generation}.png"

BASELINE_DECAY = 0.9  # running reward baseline: b <- decay * b + (1 - decay) * reward
BUFFER_CAPACITY = 200  # experiences kept per agent (one life)
SNAPSHOT_EVERY = 25  # world steps between live images
INVALID_ACTION = "<invalid>"  # what a free-text agent "does" when its text names no valid action


@dataclass
class GenerationStats:
    generation: int  # 1-based
    mean_fitness: float
    max_fitness: float
    min_fitness: float
    food_collected: int
    food_delivered: int
    deaths: int
    invalid_actions: int
    decisions: int
    steps: int  # world steps played (fewer than asked when every agent died)
    decision_time_s: float
    training_time_s: float
    train_updates: int
    best_agent: int
    rule_based_mean: float
    rule_based_max: float
    wall_time_s: float


@dataclass
class EvolutionEvent:
    """Progress for the CLI's bar and the chat: ``step`` events (an image every few steps), one ``generation`` event
    per finished generation, ``notice`` and a final ``finished``."""

    kind: str
    generation: int  # 1-based
    num_generations: int
    step: int = 0
    steps: int = 0
    best_fitness: float | None = None
    stats: GenerationStats | None = None
    image: bytes | None = None  # PNG: the world (step) or the fitness plot (finished)
    text: str = ""


@dataclass
class EvolutionResult:
    run_dir: Path
    generations: list[GenerationStats]
    cancelled: bool
    fitness_plot: Path | None
    best_agent_dir: Path | None
    config: EvolutionConfig = field(repr=False)

    def summary(self) -> str:
        if not self.generations:
            return f"No generation finished. Run folder: {self.run_dir}"
        first, last = self.generations[0], self.generations[-1]
        state = "stopped" if self.cancelled else "finished"
        return (
            f"Evolution {state} after {len(self.generations)} generation(s). Mean fitness {first.mean_fitness:.1f} -> "
            f"{last.mean_fitness:.1f} (best {last.max_fitness:.1f}); rule-based baseline {last.rule_based_mean:.1f}. "
            f"Run folder: {self.run_dir}"
        )


def derived_seed(seed: int, generation: int, purpose: str) -> int:
    """A stable 63-bit seed for one random stream of one generation (independent of Python's hash salt)."""
    digest = hashlib.sha256(f"{seed}/{generation}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def _fittest(fitnesses: list[float]) -> int:
    """The index of the fittest agent (the first one on a tie)."""
    return max(range(len(fitnesses)), key=fitnesses.__getitem__)


def resolve_run_dir(run: str | Path) -> Path:
    """A run folder given as a path or as its name under the evolution folder."""
    candidates = [Path(run).expanduser(), get_settings().evolution_dir / str(run)]
    for candidate in candidates:
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise EvolutionRunError(f"No evolution run at {run} (a run folder holds {CONFIG_FILE}).")


class EvolutionSimulation:
    """``EvolutionSimulation(num_agents=20, world_size=20).run(steps_per_generation=500, num_generations=10)``.

    Settings come from ``config`` (default: the environment and ``.env``, see ``EvolutionConfig``), with keyword
    overrides on top (``seed=1``, ``enable_online_learning=False``...). ``population`` lets a caller share an
    already loaded ``LoRAPopulation`` of the right size (the benchmark does).
    """

    def __init__(
        self,
        num_agents: int | None = None,
        world_size: int | None = None,
        *,
        config: EvolutionConfig | None = None,
        run_dir: str | Path | None = None,
        on_event: Callable[[EvolutionEvent], None] | None = None,
        cancel: threading.Event | None = None,
        snapshot_every: int = SNAPSHOT_EVERY,
        population: Any = None,
        **overrides: Any,
    ) -> None:
        base = config or EvolutionConfig.from_env()
        self.config = base.replace(num_agents=num_agents, world_size=world_size, **overrides)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.on_event = on_event
        self.cancel = cancel or threading.Event()
        self.snapshot_every = max(1, int(snapshot_every))
        self.population = population
        self.history: list[GenerationStats] = []
        self._resuming = False

    @classmethod
    def resume(
        cls,
        run: str | Path,
        *,
        on_event: Callable[[EvolutionEvent], None] | None = None,
        cancel: threading.Event | None = None,
        population: Any = None,
        num_generations: int | None = None,
    ) -> EvolutionSimulation:
        """Continue an interrupted (or finished, with a larger ``num_generations``) run from its last checkpoint."""
        run_dir = resolve_run_dir(run)
        try:
            config = EvolutionConfig.from_dict(json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise EvolutionRunError(f"The run's {CONFIG_FILE} cannot be read: {exc}") from exc
        sim = cls(
            config=config,
            run_dir=run_dir,
            on_event=on_event,
            cancel=cancel,
            population=population,
            num_generations=num_generations,
        )
        sim._resuming = True
        return sim

    # --- events and files ----------------------------------------------------------------------------------------

    @property
    def _folder(self) -> Path:
        if self.run_dir is None:  # run() sets it before anything is written
            raise RuntimeError("the evolution run has no folder yet")
        return self.run_dir

    def _emit(self, event: EvolutionEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # a broken progress display must not end the run
            logger.exception("The evolution's on_event callback failed on a %s event", event.kind)

    def _new_run_dir(self) -> Path:
        root = get_settings().evolution_dir
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder, counter = root / f"{stamp}_seed{self.config.seed}", 1
        while folder.exists():
            counter += 1
            folder = root / f"{stamp}_seed{self.config.seed}_{counter}"
        return folder

    def _write_json(self, name: str, data: Any) -> None:
        write_atomically(self._folder / name, json.dumps(data, indent=1).encode("utf-8"))

    def _write_metrics(self) -> None:
        rows = [asdict(stats) for stats in self.history]
        self._write_json(METRICS_JSON, {"config": self.config.to_dict(), "generations": rows})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(GenerationStats.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(rows)
        write_atomically(self._folder / METRICS_CSV, out.getvalue().encode("utf-8"))

    def fitness_series(self) -> dict[str, list[float]]:
        label = "LLM" if self.config.enable_online_learning else "LLM (no learning)"
        return {
            f"{label} mean": [s.mean_fitness for s in self.history],
            f"{label} max": [s.max_fitness for s in self.history],
            "rule-based mean": [s.rule_based_mean for s in self.history],
        }

    def _checkpoint(self, next_generation: int) -> None:
        """Everything the next generation starts from: the adapters (after breeding) and the history so far."""
        from safetensors.torch import save

        tensors = {}
        for index in range(self.config.num_agents):
            for key, value in self.population.get_adapter_state(self._name(index)).items():
                tensors[f"{index}/{key}"] = value.contiguous()
        write_atomically(self._folder / ADAPTERS_FILE, save(tensors))
        self._write_json(STATE_FILE, {"next_generation": next_generation, "history": [asdict(s) for s in self.history]})

    def _restore(self) -> int:
        from safetensors.torch import load

        state_path = self._folder / STATE_FILE
        if not state_path.is_file():
            return 0  # interrupted before its first checkpoint: start from the beginning
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            tensors = load((self._folder / ADAPTERS_FILE).read_bytes())
        except (OSError, ValueError, KeyError) as exc:
            raise EvolutionRunError(f"The run's checkpoint cannot be read: {exc}") from exc
        states: list[dict[str, torch.Tensor]] = [{} for _ in range(self.config.num_agents)]
        for key, value in tensors.items():
            index, name = key.split("/", 1)
            states[int(index)][name] = value
        for index, adapter_state in enumerate(states):
            self.population.set_adapter_state(self._name(index), adapter_state)
        self.history = [GenerationStats(**row) for row in state["history"]]
        return int(state["next_generation"])

    @staticmethod
    def _name(index: int) -> str:
        from src.workflows.evolution.population import ADAPTER_PREFIX

        return f"{ADAPTER_PREFIX}{index}"

    def _load_population(self) -> Any:
        from src.workflows.evolution.population import LoRAPopulation

        config = self.config
        if self.population is not None:
            if len(self.population.adapter_names) != config.num_agents:
                raise EvolutionRunError(
                    f"The population given has {len(self.population.adapter_names)} agents, the run needs "
                    f"{config.num_agents}."
                )
            return self.population
        return LoRAPopulation(
            config.model_path,
            config.num_agents,
            ACTIONS,
            rank=config.lora_rank,
            alpha=config.lora_alpha,
            target_modules=config.lora_target_modules,
            seed=config.seed,
        )

    # --- the run -------------------------------------------------------------------------------------------------

    def run(self, steps_per_generation: int | None = None, num_generations: int | None = None) -> EvolutionResult:
        self.config = self.config.replace(steps_per_generation=steps_per_generation, num_generations=num_generations)
        config = self.config
        if self.run_dir is None:
            self.run_dir = self._new_run_dir()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.population = self._load_population()
        start = 0
        if self._resuming:
            start = self._restore()
            self._emit(EvolutionEvent("notice", start + 1, config.num_generations, text=f"Resuming at generation {start + 1}."))
        # Written after the population loaded: a model that cannot load leaves no run folder claiming to be a run.
        self._write_json(CONFIG_FILE, config.to_dict())
        cancelled = False
        for generation in range(start, config.num_generations):
            played = self._live_generation(generation)
            if played is None:
                cancelled = True
                break
            stats, fitnesses = played
            self.history.append(stats)
            self._write_metrics()
            plot_fitness(self.fitness_series(), self.run_dir / FITNESS_PLOT)
            self.population.export_adapter(self._name(stats.best_agent), self.run_dir / BEST_AGENT_DIR)
            if generation + 1 < config.num_generations:
                self._breed(generation, fitnesses)
            self._checkpoint(generation + 1)
            self._emit(
                EvolutionEvent(
                    "generation", generation + 1, config.num_generations, stats.steps, stats.steps,
                    best_fitness=stats.max_fitness, stats=stats,
                    text=f"Generation {generation + 1}: mean fitness {stats.mean_fitness:.1f}, best "
                    f"{stats.max_fitness:.1f}, delivered {stats.food_delivered}, deaths {stats.deaths} "
                    f"(rule-based mean {stats.rule_based_mean:.1f})",
                )
            )  # fmt: skip
        plot = self.run_dir / FITNESS_PLOT
        result = EvolutionResult(
            run_dir=self.run_dir,
            generations=list(self.history),
            cancelled=cancelled,
            fitness_plot=plot if plot.is_file() else None,
            best_agent_dir=self.run_dir / BEST_AGENT_DIR if (self.run_dir / BEST_AGENT_DIR).is_dir() else None,
            config=config,
        )
        self._emit(
            EvolutionEvent(
                "finished", len(self.history), config.num_generations,
                image=plot.read_bytes() if plot.is_file() else None, text=result.summary(),
            )
        )  # fmt: skip
        return result

    def _breed(self, generation: int, fitnesses: list[float]) -> None:
        """Elites keep their adapters (and slots 0..k-1); the other slots get mutated crossovers of two parents."""
        config = self.config
        plan = select_next_generation(
            fitnesses, config.elite_ratio, random.Random(derived_seed(config.seed, generation, "selection"))
        )
        states = [self.population.get_adapter_state(self._name(i)) for i in range(config.num_agents)]
        generator = torch.Generator().manual_seed(derived_seed(config.seed, generation, "mutation"))
        for index, state in enumerate(breed(plan, states, config.mutation_rate, generator)):
            self.population.set_adapter_state(self._name(index), state)

    def _live_generation(self, generation: int) -> tuple[GenerationStats, list[float]] | None:
        """Play one generation: its statistics and every agent's fitness; None when cancelled."""
        config = self.config
        started = time.perf_counter()
        world_seed = derived_seed(config.seed, generation, "world")
        world_options = {"food_density": config.food_density, "wall_density": config.wall_density}
        world = World(size=config.world_size, seed=world_seed, num_agents=config.num_agents, **world_options)
        rng = random.Random(derived_seed(config.seed, generation, "replay"))
        generator = torch.Generator().manual_seed(derived_seed(config.seed, generation, "decisions"))
        buffers = [ExperienceBuffer(BUFFER_CAPACITY) for _ in range(config.num_agents)]
        baselines = [0.0] * config.num_agents
        for index in range(config.num_agents):
            self.population.reset_optimizer(self._name(index))
        decision_time = training_time = 0.0
        decisions = updates = 0
        steps_played = 0
        for step in range(config.steps_per_generation):
            if self.cancel.is_set():
                return None
            alive = world.alive_ids()
            if not alive:
                break
            observations = [world.observation(i) for i in alive]
            valid = [world.valid_actions(i) for i in alive]
            names = [self._name(i) for i in alive]
            t0 = time.perf_counter()
            if config.decision_mode == "free_text":
                chosen = self.population.decide_free_text(
                    observations, names, config.max_tokens, config.temperature, generator, valid
                )
                actions = [action if action is not None else INVALID_ACTION for action in chosen]
            else:
                actions = [
                    d.action for d in self.population.decide(observations, names, valid, config.temperature, generator)
                ]
            decision_time += time.perf_counter() - t0
            decisions += len(alive)
            outcomes = world.step(dict(zip(alive, actions, strict=True)))
            steps_played += 1
            for index, observation, action in zip(alive, observations, actions, strict=True):
                outcome = outcomes[index]
                baselines[index] = BASELINE_DECAY * baselines[index] + (1 - BASELINE_DECAY) * outcome.reward
                if action == INVALID_ACTION:
                    continue  # nothing to reinforce: the text named no action
                after = world.observation(index) if not outcome.died else ""
                buffers[index].add(Experience(observation, action, outcome.reward, after))
            if config.enable_online_learning and (step + 1) % config.train_every == 0:
                t0 = time.perf_counter()
                updates += self._train(world, buffers, baselines, rng)
                training_time += time.perf_counter() - t0
            if self.on_event is not None:
                fitnesses = world.fitnesses()
                image = None
                if (step + 1) % self.snapshot_every == 0 or step == 0:
                    image = render_world(
                        world.snapshot(), highlight_agent=_fittest(fitnesses),
                        title=f"generation {generation + 1}, step {step + 1}",
                    )  # fmt: skip
                self._emit(
                    EvolutionEvent(
                        "step", generation + 1, config.num_generations, step + 1, config.steps_per_generation,
                        best_fitness=max(fitnesses), image=image,
                    )
                )  # fmt: skip
        fitnesses = world.fitnesses()
        if self.run_dir is not None:
            render_world(
                world, highlight_agent=_fittest(fitnesses),
                path=self.run_dir / WORLD_SNAPSHOT.format(generation=generation + 1),
                title=f"generation {generation + 1}, end",
            )  # fmt: skip
        rule_based = run_rule_based_generation(
            config.world_size, config.num_agents, config.steps_per_generation, world_seed, **world_options
        )
        agents = world.agents
        stats = GenerationStats(
            generation=generation + 1,
            mean_fitness=statistics.fmean(fitnesses),
            max_fitness=max(fitnesses),
            min_fitness=min(fitnesses),
            food_collected=sum(a.food_collected for a in agents),
            food_delivered=sum(a.food_delivered for a in agents),
            deaths=sum(1 for a in agents if not a.alive),
            invalid_actions=sum(a.invalid_actions for a in agents),
            decisions=decisions,
            steps=steps_played,
            decision_time_s=round(decision_time, 4),
            training_time_s=round(training_time, 4),
            train_updates=updates,
            best_agent=_fittest(fitnesses),
            rule_based_mean=statistics.fmean(rule_based),
            rule_based_max=max(rule_based),
            wall_time_s=round(time.perf_counter() - started, 3),
        )
        return stats, fitnesses

    def _train(
        self, world: World, buffers: list[ExperienceBuffer], baselines: list[float], rng: random.Random
    ) -> int:
        """One optimizer step for every living agent with experiences, all in one forward/backward pass."""
        batches: dict[str, list[tuple[str, str, float]]] = {}
        for index in world.alive_ids():
            if not buffers[index]:
                continue
            batch = buffers[index].sample(self.config.batch_size, rng)
            items = [(e.observation, e.action, e.reward - baselines[index]) for e in batch]
            if any(advantage != 0.0 for _, _, advantage in items):
                batches[self._name(index)] = items
        if not batches:
            return 0
        self.population.train_steps(batches, self.config.learning_rate)
        return len(batches)
