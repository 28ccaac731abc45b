"""Genetic operators on LoRA adapter weights (``dict[str, torch.Tensor]`` state dicts) and the selection plan.

Decisions:

* **Crossover** is a weighted average, ``ratio * a + (1 - ratio) * b`` per tensor, computed in at least float32 and
  cast back to the parents' dtype. Names, shapes and dtypes must match exactly (``AdapterMismatchError`` otherwise).
  Non-floating tensors (none in a LoRA adapter, but a state dict may carry buffers) must be equal and are copied.
* **Mutation** adds Gaussian noise. By default the noise has an *absolute* standard deviation ``rate``: peft
  initialises every ``lora_B`` to zero, so noise relative to a tensor's own spread would never touch ``B`` and a
  population without online learning could not vary at all. ``relative=True`` scales the noise by each tensor's
  standard deviation instead (zero tensors then stay zero). Rate 0 returns equal copies. Tensors are visited in
  sorted name order, so the result depends only on the generator's state, not on the dict's order.
* **Selection** keeps the top ``elite_ratio`` unchanged (at least one when the ratio is above 0) and fills every other
  slot with a child of two parents chosen by *tournament selection* (``TOURNAMENT_SIZE`` contestants drawn with
  replacement from the whole population, the fittest wins; ties go to the lower index). Tournaments work with
  negative fitness (dying costs 50), where fitness-proportional selection would not. The two parents differ when
  the population has at least two members. The mixing ratio is drawn per child, uniform in [0, 1).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from src.errors import AdapterMismatchError, InvalidParameterError

StateDict = dict[str, torch.Tensor]

TOURNAMENT_SIZE = 3


def crossover(parent_a: Mapping[str, torch.Tensor], parent_b: Mapping[str, torch.Tensor], ratio: float) -> StateDict:
    """``ratio * a + (1 - ratio) * b`` for every tensor; new tensors, same names, shapes, dtypes and devices."""
    if not isinstance(ratio, int | float) or not 0.0 <= float(ratio) <= 1.0:
        raise InvalidParameterError(f"The crossover ratio must be between 0 and 1, got {ratio!r}.")
    check_compatible(parent_a, parent_b)
    child: StateDict = {}
    with torch.no_grad():
        for name, a in parent_a.items():
            b = parent_b[name]
            if not a.is_floating_point():
                child[name] = a.detach().clone()
                continue
            compute = torch.promote_types(a.dtype, torch.float32)
            mixed = a.detach().to(compute) * float(ratio) + b.detach().to(compute) * (1.0 - float(ratio))
            child[name] = mixed.to(a.dtype).contiguous()
    return child


def mutate(
    state: Mapping[str, torch.Tensor], rate: float, generator: torch.Generator, *, relative: bool = False
) -> StateDict:
    """Add Gaussian noise, std ``rate`` (or ``rate`` x the tensor's std with ``relative=True``); new tensors."""
    if not isinstance(rate, int | float) or not math.isfinite(rate) or rate < 0:
        raise InvalidParameterError(f"The mutation rate must be a number of at least 0, got {rate!r}.")
    out: StateDict = {name: tensor.detach().clone() for name, tensor in state.items()}
    if rate == 0:
        return out
    with torch.no_grad():
        for name in sorted(out):
            tensor = out[name]
            if not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            compute = torch.promote_types(tensor.dtype, torch.float32)
            values = tensor.to(compute)
            std = float(rate)
            if relative:
                std *= float(values.std()) if values.numel() > 1 else 0.0
            noise = torch.randn(tuple(tensor.shape), generator=generator, dtype=compute, device=generator.device)
            out[name] = (values + noise.to(tensor.device) * std).to(tensor.dtype).contiguous()
    return out


def check_compatible(parent_a: Mapping[str, torch.Tensor], parent_b: Mapping[str, torch.Tensor]) -> None:
    """Raise ``AdapterMismatchError`` unless both state dicts have the same names, shapes and dtypes."""
    only_a, only_b = sorted(set(parent_a) - set(parent_b)), sorted(set(parent_b) - set(parent_a))
    if only_a or only_b:
        raise AdapterMismatchError(
            f"weights only in the first: {_names(only_a)}; weights only in the second: {_names(only_b)}"
        )
    for name, a in parent_a.items():
        b = parent_b[name]
        if a.shape != b.shape:
            raise AdapterMismatchError(f"{name} has shape {tuple(a.shape)} in one and {tuple(b.shape)} in the other")
        if a.dtype != b.dtype:
            raise AdapterMismatchError(f"{name} has dtype {a.dtype} in one and {b.dtype} in the other")
        if not a.is_floating_point() and not torch.equal(a, b):
            raise AdapterMismatchError(f"{name} is not a floating-point tensor and differs between the parents")


def _names(names: list[str]) -> str:
    if not names:
        return "none"
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


@dataclass(frozen=True)
class ChildPlan:
    """One child slot: the weighted average ``ratio * parent_a + (1 - ratio) * parent_b``, then mutated."""

    parent_a: int
    parent_b: int
    ratio: float


@dataclass(frozen=True)
class GenerationPlan:
    """The next generation: ``elites`` (indices into the old population, best first) are kept unchanged and come
    first, then one slot per entry of ``children``."""

    elites: list[int]
    children: list[ChildPlan]

    @property
    def size(self) -> int:
        return len(self.elites) + len(self.children)

    def to_dict(self) -> dict[str, object]:
        return {"elites": list(self.elites), "children": [asdict(c) for c in self.children]}


def elite_count(population: int, elite_ratio: float) -> int:
    """How many elites ``elite_ratio`` keeps: rounded half up, at least one when the ratio is above 0."""
    if elite_ratio <= 0 or population == 0:
        return 0
    return min(population, max(1, math.floor(elite_ratio * population + 0.5)))


def select_next_generation(
    fitnesses: Sequence[float],
    elite_ratio: float,
    rng: random.Random,
    *,
    tournament_size: int = TOURNAMENT_SIZE,
) -> GenerationPlan:
    """Elites and, for every other slot, two tournament-selected parents and a mixing ratio (see the module doc).

    NaN fitness counts as the worst. Deterministic given ``rng``'s state.
    """
    if not isinstance(elite_ratio, int | float) or not 0.0 <= float(elite_ratio) <= 1.0:
        raise InvalidParameterError(f"The elite ratio must be between 0 and 1, got {elite_ratio!r}.")
    if tournament_size < 1:
        raise InvalidParameterError(f"The tournament size must be at least 1, got {tournament_size!r}.")
    scores = [-math.inf if math.isnan(f) else float(f) for f in fitnesses]
    n = len(scores)
    ranking = sorted(range(n), key=lambda i: (-scores[i], i))
    elites = ranking[: elite_count(n, float(elite_ratio))]

    def tournament(exclude: int | None = None) -> int:
        pool = [i for i in range(n) if i != exclude] if exclude is not None and n > 1 else list(range(n))
        contestants = [rng.choice(pool) for _ in range(tournament_size)]
        return min(contestants, key=lambda i: (-scores[i], i))

    children = []
    for _ in range(n - len(elites)):
        a = tournament()
        b = tournament(exclude=a)
        children.append(ChildPlan(parent_a=a, parent_b=b, ratio=rng.random()))
    return GenerationPlan(elites=elites, children=children)


def breed(
    plan: GenerationPlan,
    states: Sequence[Mapping[str, torch.Tensor]],
    mutation_rate: float,
    generator: torch.Generator,
    *,
    relative: bool = False,
) -> list[StateDict]:
    """The next generation's adapter weights in plan order: elites copied unchanged, then mutated crossovers."""
    if any(i >= len(states) for i in plan.elites) or any(
        max(c.parent_a, c.parent_b) >= len(states) for c in plan.children
    ):
        raise InvalidParameterError(f"The plan names agents beyond the {len(states)} adapters given.")
    population: list[StateDict] = [{k: v.detach().clone() for k, v in states[i].items()} for i in plan.elites]
    for child in plan.children:
        mixed = crossover(states[child.parent_a], states[child.parent_b], child.ratio)
        population.append(mutate(mixed, mutation_rate, generator, relative=relative))
    return population
