"""World rules, rewards, energy, observation text, valid actions, determinism and checkpoints."""

from __future__ import annotations

import json

import pytest

from src.errors import HearthError, InvalidParameterError, WorldLayoutError
from src.workflows.evolution.rule_based import RuleBasedPolicy, run_policy
from src.workflows.evolution.world import (
    ACTIONS,
    BUMP_REWARD,
    DEATH_REWARD,
    DELIVER_REWARD,
    EAT_ENERGY,
    EAT_HUNGRY_REWARD,
    HUNGRY_THRESHOLD,
    MAX_ENERGY,
    PICKUP_REWARD,
    START_ENERGY,
    Agent,
    World,
    fitness,
)

# 7x7: border walls, an inner wall at (3,1), food at (2,2) and (4,4), home at (5,5).
LAYOUT = """
#######
#..#..#
#.F...#
#.....#
#...F.#
#....H#
#######
"""


def small_world(*agents: tuple[int, int]) -> World:
    return World.from_layout(LAYOUT, agents=agents or [(1, 1)])


def test_actions_are_short_lowercase_words() -> None:
    assert ACTIONS == ("north", "south", "east", "west", "pickup", "drop", "eat", "rest")


def test_layout_is_built_exactly() -> None:
    world = small_world((1, 1))
    assert world.size == 7
    assert world.food == {(2, 2), (4, 4)}
    assert world.home == frozenset({(5, 5)})
    assert world.is_wall((3, 1)) and world.is_wall((0, 0)) and not world.is_wall((2, 1))
    assert world.is_wall((-1, 3)) and world.is_wall((7, 3))  # outside the grid counts as wall
    assert world.agents[0].position == (1, 1) and world.agents[0].energy == START_ENERGY


@pytest.mark.parametrize(
    ("layout", "agents"),
    [("###\n#.#\n###", [(1, 1)]), ("####\n#H.#\n####", []), ("#####\n#H..#\n#.X.#\n#...#\n#####", []),
     ("#####\n#H..#\n#...#\n#...#\n#####", [(0, 0)])],
)
def test_bad_layouts_raise_a_typed_error(layout: str, agents: list[tuple[int, int]]) -> None:
    with pytest.raises(WorldLayoutError):
        World.from_layout(layout, agents=agents)


def test_moves_change_position_and_cost_one_energy() -> None:
    world = small_world((1, 1))
    out = world.step({0: "south"})[0]
    assert world.agents[0].position == (1, 2)
    assert (out.event, out.reward, out.valid, out.died) == ("moved", 0.0, True, False)
    assert world.agents[0].energy == START_ENERGY - 1
    world.step({0: "east"})
    assert world.agents[0].position == (2, 2)
    world.step({0: "north"})
    world.step({0: "west"})
    assert world.agents[0].position == (1, 1)
    assert world.agents[0].steps_survived == 4 and world.t == 4


def test_bumping_a_wall_costs_one_and_does_not_move() -> None:
    world = small_world((2, 1))
    out = world.step({0: "east"})[0]  # (3,1) is an inner wall
    assert out.event == "bump" and out.reward == BUMP_REWARD == -1.0
    agent = world.agents[0]
    assert agent.position == (2, 1) and agent.bumps == 1 and agent.total_reward == -1.0
    world.step({0: "north"})  # the border
    assert agent.position == (2, 1) and agent.bumps == 2 and agent.total_reward == -2.0


def test_pickup_then_deliver_at_home() -> None:
    world = small_world((4, 4))
    assert "pickup" in world.valid_actions(0)
    out = world.step({0: "pickup"})[0]
    agent = world.agents[0]
    assert out.reward == PICKUP_REWARD == 5.0 and agent.carrying == 1 and agent.food_collected == 1
    assert (4, 4) not in world.food
    world.step({0: "east"})
    world.step({0: "south"})
    assert agent.position == (5, 5)
    out = world.step({0: "drop"})[0]
    assert out.event == "deliver" and out.reward == DELIVER_REWARD == 25.0
    assert agent.carrying == 0 and agent.food_delivered == 1 and agent.total_reward == 30.0
    assert fitness(agent) == pytest.approx(30 + 5 + 10 + 4 * 0.1)


def test_dropping_away_from_home_undoes_the_pickup() -> None:
    world = small_world((2, 2))
    world.step({0: "pickup"})
    out = world.step({0: "drop"})[0]
    agent = world.agents[0]
    assert out.event == "drop" and out.reward == -PICKUP_REWARD
    assert (2, 2) in world.food and agent.carrying == 0
    assert agent.total_reward == 0.0 and agent.food_collected == 0  # no reward loop from pickup/drop


def test_eating_when_hungry_is_rewarded_and_restores_energy() -> None:
    world = small_world((2, 2))
    agent = world.agents[0]
    world.step({0: "pickup"})
    agent.energy = HUNGRY_THRESHOLD - 10
    out = world.step({0: "eat"})[0]
    assert out.event == "eat" and out.reward == EAT_HUNGRY_REWARD == 10.0
    assert agent.energy == HUNGRY_THRESHOLD - 10 + EAT_ENERGY - 1
    assert agent.carrying == 0 and agent.food_eaten == 1


def test_eating_when_not_hungry_gives_nothing_and_energy_is_capped() -> None:
    world = small_world((2, 2))
    agent = world.agents[0]
    world.step({0: "pickup"})
    agent.energy = MAX_ENERGY - 5
    out = world.step({0: "eat"})[0]
    assert out.reward == 0.0
    assert agent.energy == MAX_ENERGY - 1  # capped at the maximum, then the step's cost


def test_energy_runs_out_and_the_agent_dies_once() -> None:
    world = small_world((1, 1), (4, 4))
    world.agents[0].energy = 2
    world.agents[1].energy = 1
    world.step({1: "pickup"})  # agent 1 picks up and dies in the same step: its food falls back
    assert not world.agents[1].alive and world.agents[1].died_at == 0
    assert world.agents[1].total_reward == PICKUP_REWARD + DEATH_REWARD
    assert (4, 4) in world.food and world.agents[1].carrying == 0
    out = world.step({0: "rest", 1: "rest"})
    assert set(out) == {0} and out[0].died and out[0].reward == DEATH_REWARD == -50.0
    agent = world.agents[0]
    assert not agent.alive and agent.energy == 0 and agent.steps_survived == 1
    assert world.done
    assert world.valid_actions(0) == [] and world.step({0: "north"}) == {}
    assert agent.total_reward == -50.0 and agent.position == (1, 1)


def test_eating_at_the_last_energy_point_saves_the_agent() -> None:
    world = small_world((2, 2))
    agent = world.agents[0]
    world.step({0: "pickup"})
    agent.energy = 1
    out = world.step({0: "eat"})[0]
    assert not out.died and agent.alive and agent.energy == 1 + EAT_ENERGY - 1
    assert out.reward == EAT_HUNGRY_REWARD


def test_valid_actions() -> None:
    world = small_world((1, 1), (2, 2))
    moves = ["north", "south", "east", "west"]
    assert world.valid_actions(0) == moves + ["rest"]
    assert world.valid_actions(1) == moves + ["pickup", "rest"]
    world.step({1: "pickup"})
    assert world.valid_actions(1) == moves + ["drop", "eat", "rest"]  # carrying: no second pickup, even on food


@pytest.mark.parametrize("action", ["pickup", "drop", "eat", "fly", ""])
def test_invalid_actions_do_nothing_but_are_counted(action: str) -> None:
    world = small_world((1, 1))
    before = world.to_dict()
    out = world.step({0: action})[0]
    agent = world.agents[0]
    assert (out.valid, out.event, out.reward) == (False, "invalid", 0.0)
    assert agent.invalid_actions == 1 and agent.position == (1, 1) and agent.total_reward == 0.0
    assert agent.energy == START_ENERGY - 1
    assert world.food == {(x, y) for x, y in before["food"]}


def test_agents_act_in_id_order_and_a_taken_food_is_contested_not_invalid() -> None:
    world = small_world((2, 2), (2, 2))
    out = world.step({1: "pickup", 0: "pickup"})
    assert out[0].event == "pickup" and out[1].event == "contested"
    assert out[1].valid and world.agents[1].invalid_actions == 0 and world.agents[1].carrying == 0


def test_missing_actions_mean_rest() -> None:
    world = small_world((1, 1))
    out = world.step({})[0]
    assert out.action == "rest" and out.valid and world.agents[0].position == (1, 1)


def test_food_grows_back_up_to_the_target() -> None:
    world = World.from_layout(LAYOUT, agents=[(2, 2)], food_respawn_rate=1.0)
    world.step({0: "pickup"})
    assert len(world.food) == 2 and world.agents[0].carrying  # one grew back at once
    assert not world.home & world.food and not world.walls & world.food
    still = World.from_layout(LAYOUT, agents=[(2, 2)])  # rate 0: nothing grows
    still.step({0: "pickup"})
    assert len(still.food) == 1


def test_observation_text() -> None:
    world = small_world((2, 1), (5, 5), (4, 4))
    assert world.observation(0) == "At (2,1), E100, no food. See: food↓ home↓→ wall↑→ Action:"
    assert world.observation(1) == "At (5,5), E100, no food. See: food↑← home here wall↓→ Action:"
    world.step({2: "pickup"})
    assert world.observation(2) == "At (4,4), E99, has food. See: food↑← home↓→ Action:"  # a tie: vertical first


def test_observation_arrows_follow_the_longer_axis_and_hide_far_food() -> None:
    layout = "\n".join(["#" * 15] + ["#" + "." * 13 + "#"] * 13 + ["#" * 15])
    layout = layout.split("\n")
    layout[7] = "#" + "." * 6 + "H" + "." * 6 + "#"
    layout[13] = "#" + "." * 12 + "F#"
    world = World.from_layout(layout, agents=[(1, 1), (10, 12)])
    assert world.observation(0) == "At (1,1), E100, no food. See: home↓→ wall↑← Action:"  # food 24 cells away
    assert world.observation(1) == "At (10,12), E100, no food. See: food→↓ home↑← Action:"


def test_observations_stay_short_in_a_real_world() -> None:
    world = World(size=20, seed=5, num_agents=20)
    run_policy(world, RuleBasedPolicy(seed=5), 60)
    texts = [world.observation(i) for i in range(20)]
    for text in texts:
        assert text.startswith("At (") and text.endswith("Action:") or text.endswith("dead.")
        assert len(text) <= 75 and len(text.split()) <= 12, text


def test_generated_world_has_border_home_food_agents_and_connected_free_cells() -> None:
    world = World(size=20, seed=3, num_agents=20, food_density=0.1, wall_density=0.1)
    for i in range(20):
        assert world.is_wall((i, 0)) and world.is_wall((0, i)) and world.is_wall((19, i)) and world.is_wall((i, 19))
    assert len(world.home) == 4 and not world.home & world.walls
    assert len(world.walls) > 4 * 19  # some inner walls
    assert len(world.food) == world.food_target > 0 and not world.food & (world.walls | world.home)
    assert len(world.agents) == 20 and all(not world.is_wall(a.position) for a in world.agents)
    open_cells = {(x, y) for x in range(20) for y in range(20) if not world.is_wall((x, y))}
    start = next(iter(world.home))
    seen, stack = {start}, [start]
    while stack:
        x, y = stack.pop()
        for nxt in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if nxt in open_cells and nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    assert seen == open_cells


@pytest.mark.parametrize("kwargs", [{"size": 3}, {"size": 20.5}, {"num_agents": -1}, {"food_density": 2.0}])
def test_bad_world_parameters_raise_a_typed_error(kwargs: dict) -> None:
    with pytest.raises(InvalidParameterError) as info:
        World(**kwargs)
    assert isinstance(info.value, HearthError)
    assert next(iter(kwargs)) in str(info.value)


def trajectory(seed: int, steps: int) -> list[tuple]:
    world = World(size=12, seed=seed, num_agents=6)
    policy = RuleBasedPolicy(seed=seed)
    states: list[tuple] = []
    for _ in range(steps):
        out = world.step(policy.actions(world))
        states.append(tuple(sorted((k, v.action, v.reward, v.position) for k, v in out.items())))
        states.append(tuple(sorted(world.food)))
    return states


def test_same_seed_same_trajectory_and_different_seed_differs() -> None:
    assert trajectory(7, 80) == trajectory(7, 80)
    assert trajectory(7, 80) != trajectory(8, 80)
    assert World(size=12, seed=1) == World(size=12, seed=1)
    assert World(size=12, seed=1) != World(size=12, seed=2)


def test_to_dict_from_dict_round_trip_continues_identically() -> None:
    world = World(size=12, seed=11, num_agents=5, food_respawn_rate=0.3)
    policy = RuleBasedPolicy(seed=2)
    run_policy(world, policy, 30)
    saved = json.loads(json.dumps(world.to_dict()))  # through JSON, as a checkpoint would go
    restored = World.from_dict(saved)
    assert restored == world and restored.to_dict() == world.to_dict()
    for _ in range(40):  # random actions from one shared RNG stream exercise food regrowth (the world's RNG)
        actions = {i: ACTIONS[(world.t * 7 + i * 3) % len(ACTIONS)] for i in world.alive_ids()}
        assert world.step(actions) == restored.step(dict(actions))
    assert restored.to_dict() == world.to_dict()
    assert world.rng.random() == restored.rng.random()


def test_snapshot_is_independent() -> None:
    world = small_world((1, 1))
    copy = world.snapshot()
    world.step({0: "south"})
    assert copy.agents[0].position == (1, 1) and copy.t == 0 and world.agents[0].position == (1, 2)


def test_corrupt_saved_world_raises_a_typed_error() -> None:
    data = small_world((1, 1)).to_dict()
    del data["agents"]
    with pytest.raises(WorldLayoutError):
        World.from_dict(data)
    with pytest.raises(WorldLayoutError):
        World.from_dict({**small_world().to_dict(), "version": 99})


def test_fitness_formula() -> None:
    agent = Agent(id=0, x=1, y=1, total_reward=12.5, food_collected=3, food_delivered=2, steps_survived=40)
    assert fitness(agent) == pytest.approx(12.5 + 15 + 20 + 4.0)
    assert small_world((1, 1), (2, 2)).fitnesses() == [0.0, 0.0]


def test_observations_fit_in_a_few_dozen_tokens_of_the_embedded_model() -> None:
    from src.settings import get_settings

    folder = get_settings().models_dir / "smollm2-135m"
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("the embedded model's tokenizer is not installed")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    world = World(size=20, seed=5, num_agents=20)
    policy = RuleBasedPolicy(seed=5)
    counts: list[int] = []
    for _ in range(40):
        counts += [len(tokenizer(world.observation(i))["input_ids"]) for i in world.alive_ids()]
        world.step(policy.actions(world))
    assert sum(counts) / len(counts) <= 28 and max(counts) <= 36, (sum(counts) / len(counts), max(counts))
