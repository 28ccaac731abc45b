"""Crossover and mutation math on small tensors, and the selection plan (elites, parents, determinism)."""

from __future__ import annotations

import random

import pytest
import torch

from src.errors import AdapterMismatchError, HearthError, InvalidParameterError
from src.workflows.evolution.genetics import (
    ChildPlan,
    GenerationPlan,
    breed,
    crossover,
    elite_count,
    mutate,
    select_next_generation,
)


def adapter(a: float, b: float) -> dict[str, torch.Tensor]:
    return {
        "layer.lora_A.weight": torch.full((2, 3), a),
        "layer.lora_B.weight": torch.tensor([[b], [2 * b]]),
    }


def test_crossover_is_the_weighted_average() -> None:
    child = crossover(adapter(1.0, 4.0), adapter(3.0, 8.0), 0.25)
    assert torch.equal(child["layer.lora_A.weight"], torch.full((2, 3), 0.25 * 1 + 0.75 * 3))
    assert torch.equal(child["layer.lora_B.weight"], torch.tensor([[7.0], [14.0]]))
    assert list(child) == ["layer.lora_A.weight", "layer.lora_B.weight"]
    assert all(t.dtype == torch.float32 for t in child.values())


def test_crossover_ends_are_the_parents_and_outputs_are_new_tensors() -> None:
    a, b = adapter(1.0, 2.0), adapter(5.0, 6.0)
    assert all(torch.equal(crossover(a, b, 1.0)[k], a[k]) for k in a)
    assert all(torch.equal(crossover(a, b, 0.0)[k], b[k]) for k in a)
    child = crossover(a, b, 1.0)
    child["layer.lora_A.weight"].add_(1)
    assert torch.equal(a["layer.lora_A.weight"], torch.full((2, 3), 1.0))  # parents untouched


def test_crossover_keeps_low_precision_dtypes() -> None:
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    b = {"w": torch.tensor([3.0, 4.0], dtype=torch.bfloat16)}
    child = crossover(a, b, 0.5)
    assert child["w"].dtype == torch.bfloat16 and torch.equal(child["w"], torch.tensor([2.0, 3.0], dtype=torch.bfloat16))


@pytest.mark.parametrize(
    "other",
    [
        {"layer.lora_A.weight": torch.zeros(2, 3)},  # a missing name
        {"layer.lora_A.weight": torch.zeros(3, 2), "layer.lora_B.weight": torch.zeros(2, 1)},  # a shape
        {"layer.lora_A.weight": torch.zeros(2, 3, dtype=torch.float64), "layer.lora_B.weight": torch.zeros(2, 1)},
    ],
)
def test_crossover_mismatch_raises_a_typed_error(other: dict[str, torch.Tensor]) -> None:
    with pytest.raises(AdapterMismatchError) as info:
        crossover(adapter(1.0, 1.0), other, 0.5)
    assert isinstance(info.value, HearthError) and "layer.lora_" in str(info.value)


def test_crossover_ratio_out_of_range() -> None:
    with pytest.raises(InvalidParameterError):
        crossover(adapter(1, 1), adapter(2, 2), 1.5)


def test_mutation_rate_zero_is_identity() -> None:
    state = adapter(0.5, -1.0)
    gen = torch.Generator().manual_seed(0)
    out = mutate(state, 0.0, gen)
    assert all(torch.equal(out[k], state[k]) for k in state)
    assert all(out[k] is not state[k] for k in state)


def test_mutation_is_gaussian_noise_with_absolute_std() -> None:
    state = {"lora_A": torch.zeros(200, 100), "lora_B": torch.zeros(100, 200)}  # lora_B starts at zero in peft
    out = mutate(state, 0.05, torch.Generator().manual_seed(1))
    for name, before in state.items():
        delta = out[name] - before
        assert abs(float(delta.mean())) < 0.002
        assert float(delta.std()) == pytest.approx(0.05, rel=0.03)
    assert not torch.equal(out["lora_A"], out["lora_B"].T)  # each tensor gets its own noise


def test_mutation_exact_values_follow_the_generator_in_sorted_name_order() -> None:
    state = {"b": torch.tensor([1.0, 2.0]), "a": torch.tensor([10.0])}
    out = mutate(state, 0.5, torch.Generator().manual_seed(42))
    gen = torch.Generator().manual_seed(42)
    noise_a = torch.randn((1,), generator=gen)
    noise_b = torch.randn((2,), generator=gen)
    assert torch.equal(out["a"], torch.tensor([10.0]) + noise_a * 0.5)
    assert torch.equal(out["b"], torch.tensor([1.0, 2.0]) + noise_b * 0.5)
    assert list(out) == ["b", "a"]  # the input's order is kept
    reordered = mutate({"a": state["a"], "b": state["b"]}, 0.5, torch.Generator().manual_seed(42))
    assert all(torch.equal(reordered[k], out[k]) for k in out)


def test_relative_mutation_scales_with_each_tensor_and_leaves_zeros() -> None:
    big = torch.randn(300, 300, generator=torch.Generator().manual_seed(3)) * 4.0
    state = {"big": big, "zero": torch.zeros(10, 10)}
    out = mutate(state, 0.1, torch.Generator().manual_seed(4), relative=True)
    assert float((out["big"] - big).std()) == pytest.approx(0.1 * float(big.std()), rel=0.03)
    assert torch.equal(out["zero"], state["zero"])


def test_mutation_is_deterministic_and_rejects_negative_rates() -> None:
    state = adapter(1.0, 2.0)
    one = mutate(state, 0.1, torch.Generator().manual_seed(9))
    two = mutate(state, 0.1, torch.Generator().manual_seed(9))
    assert all(torch.equal(one[k], two[k]) for k in state)
    with pytest.raises(InvalidParameterError):
        mutate(state, -0.1, torch.Generator())


def test_elite_count() -> None:
    assert elite_count(20, 0.2) == 4
    assert elite_count(4, 0.2) == 1
    assert elite_count(5, 0.5) == 3  # rounded half up
    assert elite_count(3, 0.01) == 1  # at least one when the ratio is above 0
    assert elite_count(10, 0.0) == 0 and elite_count(10, 1.0) == 10 and elite_count(0, 0.2) == 0


def test_selection_keeps_the_best_as_elites_and_fills_the_rest() -> None:
    fitness = [5.0, 50.0, -40.0, 20.0, 20.0, 1.0, 0.0, 3.0, 9.0, 7.0]
    plan = select_next_generation(fitness, 0.2, random.Random(0))
    assert plan.elites == [1, 3]  # the two best; the tie (3 and 4) goes to the lower index
    assert plan.size == 10 and len(plan.children) == 8
    for child in plan.children:
        assert 0 <= child.parent_a < 10 and 0 <= child.parent_b < 10 and child.parent_a != child.parent_b
        assert 0.0 <= child.ratio < 1.0
    assert len({c.ratio for c in plan.children}) == 8  # drawn per child


def test_selection_is_deterministic_given_the_rng() -> None:
    fitness = [float(i % 7) for i in range(20)]
    one = select_next_generation(fitness, 0.2, random.Random(5))
    two = select_next_generation(fitness, 0.2, random.Random(5))
    other = select_next_generation(fitness, 0.2, random.Random(6))
    assert one == two and one.to_dict() == two.to_dict()
    assert one.children != other.children


def test_tournament_selection_favours_fitter_parents() -> None:
    fitness = [float(i) for i in range(20)]  # index = fitness
    plan = select_next_generation(fitness * 1, 0.0, random.Random(1))
    parents = [p for c in plan.children for p in (c.parent_a, c.parent_b)]
    assert sum(parents) / len(parents) > 11  # uniform choice would average 9.5
    plan = select_next_generation([1.0] * 5 + [float("nan")], 0.5, random.Random(1))
    assert 5 not in plan.elites  # NaN counts as the worst


def test_tiny_populations() -> None:
    assert select_next_generation([3.0], 0.2, random.Random(0)) == GenerationPlan(elites=[0], children=[])
    plan = select_next_generation([3.0], 0.0, random.Random(0))
    assert plan.children[0].parent_a == plan.children[0].parent_b == 0
    assert select_next_generation([], 0.2, random.Random(0)).size == 0
    with pytest.raises(InvalidParameterError):
        select_next_generation([1.0, 2.0], 1.5, random.Random(0))


def test_breed_copies_elites_unchanged_and_mixes_children() -> None:
    states = [adapter(float(i), float(10 * i)) for i in range(4)]
    plan = GenerationPlan(elites=[2], children=[ChildPlan(0, 3, 0.5), ChildPlan(1, 2, 1.0)])
    population = breed(plan, states, 0.0, torch.Generator().manual_seed(0))
    assert len(population) == 3
    assert all(torch.equal(population[0][k], states[2][k]) for k in states[2])
    assert population[0]["layer.lora_A.weight"] is not states[2]["layer.lora_A.weight"]
    assert torch.equal(population[1]["layer.lora_A.weight"], torch.full((2, 3), 1.5))
    assert all(torch.equal(population[2][k], states[1][k]) for k in states[1])
    mutated = breed(plan, states, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(mutated[0]["layer.lora_A.weight"], states[2]["layer.lora_A.weight"])  # elites never mutate
    assert not torch.equal(mutated[1]["layer.lora_A.weight"], population[1]["layer.lora_A.weight"])
    with pytest.raises(InvalidParameterError):
        breed(GenerationPlan(elites=[7], children=[]), states, 0.0, torch.Generator())
