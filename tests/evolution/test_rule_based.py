"""The rule-based baseline: sensible decisions, determinism, and clearly better than random actions."""

from __future__ import annotations

from statistics import mean

from src.workflows.evolution.rule_based import (
    RandomPolicy,
    RuleBasedPolicy,
    distance_field,
    run_policy,
    run_random_generation,
    run_rule_based_generation,
)
from src.workflows.evolution.world import HUNGRY_THRESHOLD, World

LAYOUT = """
#######
#..#..#
#.F...#
#.....#
#...F.#
#....H#
#######
"""


def test_distance_field_goes_around_walls() -> None:
    world = World.from_layout(LAYOUT, agents=[(1, 1)])
    field = distance_field(world, [(4, 1)])
    assert field[(4, 1)] == 0 and field[(2, 1)] == 4  # around the wall at (3,1)
    assert (3, 1) not in field


def test_rules_in_order() -> None:
    world = World.from_layout(LAYOUT, agents=[(2, 2), (4, 4), (1, 1), (1, 3)])
    policy = RuleBasedPolicy(seed=0)
    assert policy.act(world, 0) == "pickup"  # on food, empty-handed
    assert policy.act(world, 3) == "north"  # food (2,2) in sight: first step of a shortest path
    world.step({0: "pickup", 1: "pickup", 2: "rest", 3: "rest"})
    assert policy.act(world, 1) == "south"  # carrying: shortest path home (5,5)
    world.agents[1].energy = HUNGRY_THRESHOLD - 1
    assert policy.act(world, 1) == "eat"  # carrying and hungry
    world.agents[0].x, world.agents[0].y = 5, 5
    assert policy.act(world, 0) == "drop"  # carrying at home
    assert not world.food
    assert policy.act(world, 2) in {"east", "south"}  # nothing in sight: explore, never into a wall


def test_rule_based_policy_delivers_food_in_a_small_world() -> None:
    world = World.from_layout(LAYOUT, agents=[(1, 1)])
    run_policy(world, RuleBasedPolicy(seed=1), 30)
    assert world.agents[0].food_delivered == 2 and world.agents[0].invalid_actions == 0


def test_rule_based_is_deterministic_given_the_seed() -> None:
    assert run_rule_based_generation(12, 6, 120, seed=3) == run_rule_based_generation(12, 6, 120, seed=3)
    assert run_rule_based_generation(12, 6, 120, seed=3) != run_rule_based_generation(12, 6, 120, seed=4)


def test_rule_based_beats_random_actions_on_average() -> None:
    rule = [mean(run_rule_based_generation(14, 8, 150, seed=s)) for s in range(3)]
    rand = [mean(run_random_generation(14, 8, 150, seed=s)) for s in range(3)]
    assert min(rule) > max(rand) + 50, (rule, rand)
    assert mean(rule) > 100


def test_random_policy_only_picks_valid_actions() -> None:
    world = World(size=10, seed=2, num_agents=4)
    outcomes: list = []
    run_policy(world, RandomPolicy(seed=2), 50, on_step=lambda w, out: outcomes.extend(out.values()))
    assert outcomes and all(o.valid for o in outcomes)
    assert sum(a.invalid_actions for a in world.agents) == 0
