"""The LoRA agent population on the real embedded model (SmolLM2-135M): batched per-adapter decisions, valid actions,
online training that touches only its own adapter, state moves, export and reload.

The model is loaded once for the module (3 agents); every test that changes an adapter puts its weights back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from src.errors import AdapterStateMismatchError, InvalidParameterError, UnknownAdapterError
from src.workflows.evolution.population import (
    Decision,
    LoRAPopulation,
    TrainSample,
    build_prompt,
    load_exported,
    parse_action,
)

ACTIONS = ["north", "south", "east", "west", "pickup", "drop", "eat", "rest"]
OBSERVATIONS = [
    "At (5,3), E80, has food. See: home↑ wall← Action:",
    "At (1,1), E20, no food. See: food→ home↓ Action:",
    "At (9,9), E99, no food. See: food here home← Action:",
    "At (2,7), E50, has food. See: home here wall↓",  # no "Action:": the prompt gets it appended
]


@pytest.fixture(scope="module")
def pop() -> Iterator[LoRAPopulation]:
    population = LoRAPopulation("smollm2-135m", 3, ACTIONS, seed=7)
    yield population


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _all_states(pop: LoRAPopulation) -> dict[str, dict[str, torch.Tensor]]:
    return {name: pop.get_adapter_state(name) for name in pop.adapter_names}


def _base_weights(pop: LoRAPopulation) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in pop.model.named_parameters() if "lora_" not in n}


def _count_forwards(pop: LoRAPopulation) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    calls = [0]
    inner = pop.model.get_base_model().model  # the transformer stack under the LM head

    def hook(*_: object) -> None:
        calls[0] += 1

    return calls, inner.register_forward_hook(hook)


def _assert_same(a: list[Decision], b: list[Decision], tol: float = 1e-4) -> None:
    assert [d.action for d in a] == [d.action for d in b]
    for x, y in zip(a, b, strict=True):
        assert x.logprobs.keys() == y.logprobs.keys()
        for action in x.logprobs:
            assert abs(x.logprobs[action] - y.logprobs[action]) < tol, (action, x.logprobs, y.logprobs)
            assert abs(x.probabilities[action] - y.probabilities[action]) < tol


def test_prompt_and_parsing() -> None:
    assert build_prompt("At (1,1). See: food→ Action:") == "At (1,1). See: food→ Action:"
    assert build_prompt("At (1,1). See: food→ ") == "At (1,1). See: food→ Action:"
    assert build_prompt("At (1,1). Action:", ("north", "rest")) == "Moves: north rest\nAt (1,1). Action:"
    assert parse_action(" North, because", ACTIONS) == "north"
    assert parse_action('"pick up" it', ["pick", "pick up"]) == "pick up"
    assert parse_action(" northward", ACTIONS) is None
    assert parse_action(" I think", ACTIONS) is None


def test_the_action_vocabulary_takes_the_single_token_fast_path(pop: LoRAPopulation) -> None:
    assert pop.single_token_actions
    assert all(len(pop._action_ids(a)) == 1 for a in ACTIONS)
    assert len(pop._action_ids("pick up")) == 2  # the general path is exercised below with this one


def test_batched_decisions_equal_sequential_ones_in_one_forward_pass(pop: LoRAPopulation) -> None:
    names = ["agent_0", "agent_1", "agent_2", "agent_1"]  # a repeated adapter in the same batch too
    valid = [ACTIONS, ["north", "rest"], ACTIONS[:4], ["east", "eat", "drop"]]
    calls, handle = _count_forwards(pop)
    try:
        batched = pop.decide(OBSERVATIONS, names, valid, 1.0, _gen(3))
        assert calls[0] == 1, "all agents decide in ONE forward pass"
        sequential = pop.decide_sequential(OBSERVATIONS, names, valid, 1.0, _gen(3))
        assert calls[0] == 1 + len(OBSERVATIONS)
    finally:
        handle.remove()
    _assert_same(batched, sequential)
    # over many draws the two paths keep agreeing (same per-row draws in the same order)
    g1, g2 = _gen(11), _gen(11)
    for _ in range(3):
        _assert_same(pop.decide(OBSERVATIONS, names, valid, 2.0, g1), pop.decide_sequential(OBSERVATIONS, names, valid, 2.0, g2))


def test_multi_token_actions_are_scored_exactly_in_the_same_batch(pop: LoRAPopulation) -> None:
    valid = [["north", "pick up", "drop"], ["pick up", "pick"], ACTIONS, ["rest", "pick up"]]
    names = ["agent_2", "agent_0", "agent_1", "agent_2"]
    batched = pop.decide(OBSERVATIONS, names, valid, 1.0, _gen(5))
    _assert_same(batched, pop.decide_sequential(OBSERVATIONS, names, valid, 1.0, _gen(5)))
    # the single-token path gives the same numbers as the general one
    fast = pop.decide(OBSERVATIONS, names, [ACTIONS] * 4, 0.0, None)
    assert abs(fast[2].logprobs["drop"] - batched[2].logprobs["drop"]) < 1e-4
    # reference: a plain unpadded forward of prompt + " pick up" through agent_2, summing the two tokens' log-probs
    prompt = pop.tokenizer(build_prompt(OBSERVATIONS[0], pop.actions))["input_ids"]
    action = pop.tokenizer(" pick up", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = pop.model(input_ids=torch.tensor([prompt + action]), adapter_names=["agent_2"]).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    expected = sum(float(logprobs[len(prompt) - 1 + j, t]) for j, t in enumerate(action))
    assert abs(batched[0].logprobs["pick up"] - expected) < 1e-4


def test_agents_with_different_adapters_decide_differently(pop: LoRAPopulation) -> None:
    same = [OBSERVATIONS[0]] * 3
    decisions = pop.decide(same, pop.adapter_names, [ACTIONS] * 3, 0.0, None)
    for i in range(3):
        for j in range(i + 1, 3):
            gap = max(abs(decisions[i].logprobs[a] - decisions[j].logprobs[a]) for a in ACTIONS)
            assert gap > 1e-3, f"agents {i} and {j} have (almost) the same adapter: the init must not be a no-op"
    for name, state in _all_states(pop).items():
        assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in state.items()), name
    with torch.inference_mode():  # and every agent differs from the bare base model ("__base__" rows skip LoRA)
        base = pop.decide([OBSERVATIONS[0]], ["agent_0"], [ACTIONS], 0.0, None)[0]
        prompt = pop.tokenizer(build_prompt(OBSERVATIONS[0], pop.actions))["input_ids"]
        logits = pop.model(input_ids=torch.tensor([prompt]), adapter_names=["__base__"]).logits
        bare = torch.log_softmax(logits[0, -1].float(), dim=-1)
    assert abs(base.logprobs["north"] - float(bare[pop._action_ids("north")[0]])) > 1e-4


def test_only_valid_actions_are_ever_returned(pop: LoRAPopulation) -> None:
    generator = _gen(1)
    for _ in range(3):
        decisions = pop.decide(OBSERVATIONS, ["agent_0", "agent_1", "agent_2", "agent_0"], [["rest"]] * 4, 5.0, generator)
        assert [d.action for d in decisions] == ["rest"] * 4
        assert all(d.probabilities == {"rest": 1.0} for d in decisions)
    subsets = [["drop"], ["west", "eat"], ["pickup", "south", "north"], ["east", "rest"]]
    seen: set[str] = set()
    for _ in range(5):
        for decision, valid in zip(pop.decide(OBSERVATIONS, ["agent_1"] * 4, subsets, 10.0, generator), subsets, strict=True):
            assert decision.action in valid
            assert set(decision.logprobs) == set(valid)
            seen.add(decision.action)
    assert len(seen) > 4, "a high temperature samples more than the argmax"
    with pytest.raises(InvalidParameterError):
        pop.decide(OBSERVATIONS[:1], ["agent_0"], [[]], 1.0, generator)
    with pytest.raises(UnknownAdapterError):
        pop.decide(OBSERVATIONS[:1], ["agent_9"], [ACTIONS], 1.0, generator)


def test_temperature_zero_is_deterministic_argmax(pop: LoRAPopulation) -> None:
    names = ["agent_0", "agent_1", "agent_2", "agent_2"]
    first = pop.decide(OBSERVATIONS, names, [ACTIONS] * 4, 0.0, _gen(1))
    second = pop.decide(OBSERVATIONS, names, [ACTIONS] * 4, 0.0, _gen(999))
    assert [d.action for d in first] == [d.action for d in second]
    for decision in first:
        assert decision.action == max(decision.logprobs, key=decision.logprobs.__getitem__)
        assert decision.probabilities[decision.action] == 1.0


def test_free_text_mode_returns_a_valid_action_or_none(pop: LoRAPopulation) -> None:
    names = ["agent_0", "agent_1", "agent_2", "agent_0"]
    greedy = pop.decide_free_text(OBSERVATIONS, names, 4, 0.0, None)
    assert greedy == pop.decide_free_text(OBSERVATIONS, names, 4, 0.0, _gen(2))
    sampled = pop.decide_free_text(OBSERVATIONS, names, 4, 1.0, _gen(2))
    assert len(greedy) == len(sampled) == 4
    assert all(a is None or a in ACTIONS for a in greedy + sampled)
    assert pop.decide_free_text(OBSERVATIONS, names, 4, 1.0, _gen(2)) == sampled
    only_rest = pop.decide_free_text(OBSERVATIONS, names, 3, 1.0, _gen(2), valid_actions=[["rest"]] * 4)
    assert all(a in (None, "rest") for a in only_rest)


def test_a_train_step_changes_only_its_own_adapter_and_lowers_its_loss(pop: LoRAPopulation) -> None:
    batch = [
        TrainSample(OBSERVATIONS[0], "north", 1.0),
        TrainSample(OBSERVATIONS[1], "eat", 2.0),
        TrainSample(OBSERVATIONS[2], "pickup", 0.5),
        (OBSERVATIONS[3], "pick up", 1.0),  # plain tuples and multi-token actions work too
    ]
    before, base_before = _all_states(pop), _base_weights(pop)
    try:
        loss_before = pop.batch_loss("agent_1", batch)
        report = pop.train_step("agent_1", batch, 1e-3, compute_loss_after=True)
        assert report.loss_before == pytest.approx(loss_before, abs=1e-4)
        assert report.loss_after is not None and report.loss_after < report.loss_before - 1e-3
        assert pop.batch_loss("agent_1", batch) == pytest.approx(report.loss_after, abs=1e-4)
        after = _all_states(pop)
        for name in ("agent_0", "agent_2"):
            assert all(torch.equal(before[name][k], after[name][k]) for k in before[name]), f"{name} was touched"
        assert any(not torch.equal(before["agent_1"][k], after["agent_1"][k]) for k in before["agent_1"])
        base_after = _base_weights(pop)
        assert base_before.keys() == base_after.keys()
        assert all(torch.equal(base_before[k], base_after[k]) for k in base_before), "the base model was touched"
        assert all(not p.requires_grad for p in pop.model.parameters()), "nothing stays trainable between steps"
        # the optimizer is agent_1's own: it holds exactly agent_1's parameters, and a second step keeps lowering
        state = pop.get_optimizer_state("agent_1")
        assert state is not None and len(state["state"]) == len(before["agent_1"])
        assert pop.get_optimizer_state("agent_0") is None
        assert 0 <= pop.optimizer_nbytes("agent_1") - 2 * pop.adapter_nbytes() < 4096  # Adam: two moments + steps
        second = pop.train_step("agent_1", batch, 1e-3, compute_loss_after=True)
        assert second.loss_after is not None and second.loss_after < report.loss_after
    finally:
        pop.set_adapter_state("agent_1", before["agent_1"])
    assert pop.get_optimizer_state("agent_1") is None, "new weights start with a fresh optimizer"


def test_negative_advantage_pushes_the_action_down(pop: LoRAPopulation) -> None:
    before = pop.get_adapter_state("agent_0")
    try:
        old = pop.decide([OBSERVATIONS[0]], ["agent_0"], [ACTIONS], 0.0, None)[0].logprobs["eat"]
        pop.train_step("agent_0", [(OBSERVATIONS[0], "eat", -1.0)] * 2, 1e-3)
        new = pop.decide([OBSERVATIONS[0]], ["agent_0"], [ACTIONS], 0.0, None)[0].logprobs["eat"]
        assert new < old - 1e-3
    finally:
        pop.set_adapter_state("agent_0", before)


def test_batched_training_of_several_adapters_equals_separate_steps(pop: LoRAPopulation) -> None:
    batches = {
        "agent_0": [(OBSERVATIONS[0], "north", 1.0), (OBSERVATIONS[1], "rest", -0.5)],
        "agent_2": [(OBSERVATIONS[2], "pickup", 2.0), (OBSERVATIONS[3], "drop", 1.0), (OBSERVATIONS[0], "eat", 0.3)],
    }
    before = _all_states(pop)
    try:
        separate = {name: pop.train_step(name, batch, 1e-3).loss_before for name, batch in batches.items()}
        separate_states = _all_states(pop)
        for name in batches:
            pop.set_adapter_state(name, before[name])
        reports = pop.train_steps(batches, 1e-3)
        together = _all_states(pop)
        assert {r.adapter_name: r.loss_before for r in reports} == pytest.approx(separate, abs=1e-4)
        assert all(torch.equal(before["agent_1"][k], together["agent_1"][k]) for k in before["agent_1"])
        for name in batches:
            for key in before[name]:
                assert torch.allclose(together[name][key], separate_states[name][key], atol=1e-6), (name, key)
        for name in batches:  # split into one pass per adapter: the same again
            pop.set_adapter_state(name, before[name])
        assert len(pop.train_steps(batches, 1e-3, rows_per_pass=1)) == 2
        for name, state in _all_states(pop).items():
            for key in state:
                assert torch.allclose(state[key], together[name][key], atol=1e-6), (name, key)
    finally:
        for name in batches:
            pop.set_adapter_state(name, before[name])


def test_adapter_state_round_trip_and_moves_between_agents(pop: LoRAPopulation) -> None:
    original = _all_states(pop)
    try:
        state = pop.get_adapter_state("agent_0")
        assert not any("agent_0" in key for key in state), "keys must not depend on the adapter name"
        state["bogus"] = state[next(iter(state))]
        with pytest.raises(AdapterStateMismatchError):
            pop.set_adapter_state("agent_2", state)
        del state["bogus"]
        pop.set_adapter_state("agent_2", state)
        assert all(torch.equal(pop.get_adapter_state("agent_2")[k], state[k]) for k in state)
        d0, d2 = pop.decide([OBSERVATIONS[1]] * 2, ["agent_0", "agent_2"], [ACTIONS] * 2, 0.0, None)
        assert d0.logprobs == pytest.approx(d2.logprobs, abs=1e-6)
        state[next(iter(state))].add_(1.0)  # the copy is independent of the live weights
        assert not torch.equal(pop.get_adapter_state("agent_2")[next(iter(state))], state[next(iter(state))])
        with pytest.raises(UnknownAdapterError):
            pop.get_adapter_state("agent_3")
    finally:
        pop.set_adapter_state("agent_2", original["agent_2"])
    assert all(torch.equal(pop.get_adapter_state("agent_2")[k], original["agent_2"][k]) for k in original["agent_2"])


def test_export_then_reload_on_a_fresh_base_decides_identically(pop: LoRAPopulation, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    before = pop.get_adapter_state("agent_1")
    try:
        pop.train_step("agent_1", [(OBSERVATIONS[0], "west", 1.0), (OBSERVATIONS[2], "pickup", 1.0)], 1e-3)
        folder = pop.export_adapter("agent_1", tmp_path / "best")
        assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
        assert [p.name for p in tmp_path.iterdir()] == ["best"], "no temporary folder is left behind"
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(pop.model_folder), str(folder))
        assert sum(1 for n, _ in plain.named_parameters() if "lora_" in n) == len(before)
        del plain

        exported = pop.export_adapter("agent_1", tmp_path / "best")  # exporting again replaces the folder
        single = load_exported(exported)
        assert single.adapter_names == ["agent_0"] and single.actions == tuple(ACTIONS)
        live = pop.get_adapter_state("agent_1")
        loaded = single.get_adapter_state("agent_0")
        assert all(torch.equal(live[k], loaded[k]) for k in live)
        names = ["agent_1"] * len(OBSERVATIONS)
        _assert_same(
            pop.decide(OBSERVATIONS, names, [ACTIONS] * 4, 1.0, _gen(4)),
            single.decide(OBSERVATIONS, ["agent_0"] * 4, [ACTIONS] * 4, 1.0, _gen(4)),
            tol=1e-5,
        )
    finally:
        pop.set_adapter_state("agent_1", before)


def test_adapter_memory_is_one_to_two_megabytes(pop: LoRAPopulation) -> None:
    nbytes = pop.adapter_nbytes()
    print(f"\nadapter: {nbytes / 1e6:.2f} MB (rank {pop.rank}, {','.join(pop.target_modules)}, float32)")
    assert 0.5e6 < nbytes < 4e6
    assert all(p.dtype == torch.float32 for p in pop._adapters["agent_0"].params.values())


def test_bad_arguments_are_refused(pop: LoRAPopulation) -> None:
    with pytest.raises(InvalidParameterError):
        pop.train_step("agent_0", [], 1e-3)
    with pytest.raises(InvalidParameterError):
        pop.train_step("agent_0", [(OBSERVATIONS[0], "north", 1.0)], 0.0)
    with pytest.raises(InvalidParameterError):
        pop.decide(OBSERVATIONS, ["agent_0"], [ACTIONS], 1.0, None)
    assert pop.decide([], [], [], 1.0, None) == []
