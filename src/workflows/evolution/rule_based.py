"""A hand-written policy for the grid world: the baseline the LLM population is compared against.

The policy knows the map (walls and home never move, so it plans shortest paths with cached breadth-first distance
fields) but sees food only within ``VIEW_RADIUS``, like the agents' observation text. Its rules, in order:

1. carrying and hungry: eat;
2. carrying: drop at home, otherwise walk the shortest path home;
3. on food: pick it up;
4. food in sight: walk the shortest path to the closest one;
5. otherwise explore: keep a heading, turn at walls and now and then at random.

Deterministic given its seed (its own ``random.Random``) and the world.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Iterable

from src.workflows.evolution.world import (
    DROP,
    EAT,
    HUNGRY_THRESHOLD,
    MOVES,
    PICKUP,
    REST,
    VIEW_RADIUS,
    Cell,
    StepOutcome,
    World,
)

logger = logging.getLogger(__name__)

TURN_PROBABILITY = 0.15  # chance per step that an exploring agent picks a new heading
UNREACHABLE = 1 << 30


class RuleBasedPolicy:
    """Decides actions for every living agent of a world by hand-written rules."""

    def __init__(self, seed: int = 0, turn_probability: float = TURN_PROBABILITY) -> None:
        self.rng = random.Random(seed)
        self.turn_probability = turn_probability
        self._headings: dict[int, str] = {}
        self._fields: dict[frozenset[Cell], dict[Cell, int]] = {}
        self._walls: frozenset[Cell] | None = None

    def actions(self, world: World) -> dict[int, str]:
        """One action per living agent, in ascending id order (so the policy's RNG use is deterministic)."""
        return {agent_id: self.act(world, agent_id) for agent_id in world.alive_ids()}

    def act(self, world: World, agent_id: int) -> str:
        if self._walls is not world.walls:  # a new world: the cached distance fields no longer apply
            self._walls, self._fields = world.walls, {}
        agent = world.agent(agent_id)
        pos = agent.position
        if agent.carrying:
            if agent.energy < HUNGRY_THRESHOLD:
                return EAT
            if pos in world.home:
                return DROP
            return self._step_towards(world, agent_id, world.home)
        if pos in world.food:
            return PICKUP
        visible = [f for f in world.food if abs(f[0] - pos[0]) + abs(f[1] - pos[1]) <= VIEW_RADIUS]
        if visible:
            target = min(visible, key=lambda f: (self._field(world, (f,)).get(pos, UNREACHABLE), f[1], f[0]))
            if self._field(world, (target,)).get(pos, UNREACHABLE) < UNREACHABLE:
                return self._step_towards(world, agent_id, (target,))
        return self._explore(world, agent_id)

    def _field(self, world: World, targets: Iterable[Cell]) -> dict[Cell, int]:
        key = frozenset(targets)
        found = self._fields.get(key)
        if found is None:
            found = self._fields[key] = distance_field(world, key)
        return found

    def _step_towards(self, world: World, agent_id: int, targets: Iterable[Cell]) -> str:
        field = self._field(world, targets)
        x, y = world.agent(agent_id).position
        best, best_distance = None, field.get((x, y), UNREACHABLE)
        for move, (dx, dy) in MOVES.items():
            d = field.get((x + dx, y + dy), UNREACHABLE)
            if d < best_distance:
                best, best_distance = move, d
        return best if best is not None else self._explore(world, agent_id)

    def _explore(self, world: World, agent_id: int) -> str:
        x, y = world.agent(agent_id).position
        open_moves = [m for m, (dx, dy) in MOVES.items() if not world.is_wall((x + dx, y + dy))]
        if not open_moves:
            return REST
        heading = self._headings.get(agent_id)
        if heading not in open_moves or self.rng.random() < self.turn_probability:
            choices = [m for m in open_moves if m != _REVERSE.get(heading or "")] or open_moves
            heading = self.rng.choice(choices)
            self._headings[agent_id] = heading
        return heading


class RandomPolicy:
    """Uniformly random valid actions: the floor every other policy must beat."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def actions(self, world: World) -> dict[int, str]:
        return {agent_id: self.rng.choice(world.valid_actions(agent_id)) for agent_id in world.alive_ids()}


_REVERSE = {"north": "south", "south": "north", "east": "west", "west": "east"}


def distance_field(world: World, targets: Iterable[Cell]) -> dict[Cell, int]:
    """Shortest-path step counts from every reachable open cell to the nearest of ``targets`` (walls block)."""
    field: dict[Cell, int] = {}
    queue: deque[Cell] = deque()
    for cell in targets:
        if not world.is_wall(cell):
            field[cell] = 0
            queue.append(cell)
    while queue:
        x, y = queue.popleft()
        d = field[(x, y)] + 1
        for dx, dy in MOVES.values():
            nxt = (x + dx, y + dy)
            if nxt not in field and not world.is_wall(nxt):
                field[nxt] = d
                queue.append(nxt)
    return field


def run_policy(
    world: World,
    policy: RuleBasedPolicy | RandomPolicy,
    steps: int,
    on_step: Callable[[World, dict[int, StepOutcome]], None] | None = None,
) -> World:
    """Step ``world`` with ``policy`` for ``steps`` steps (or until every agent is dead); returns the world."""
    for _ in range(steps):
        if world.done:
            break
        outcomes = world.step(policy.actions(world))
        if on_step is not None:
            on_step(world, outcomes)
    return world


def _run_generation(
    policy: RuleBasedPolicy | RandomPolicy, world_size: int, num_agents: int, steps: int, seed: int, **world_options: float
) -> list[float]:
    world = World(size=world_size, seed=seed, num_agents=num_agents, **world_options)  # type: ignore[arg-type]
    run_policy(world, policy, steps)
    fitnesses = world.fitnesses()
    logger.debug(
        "%s generation seed=%d: mean fitness %.1f", type(policy).__name__, seed, sum(fitnesses) / max(1, len(fitnesses))
    )
    return fitnesses


def run_rule_based_generation(
    world_size: int = 20,
    num_agents: int = 20,
    steps: int = 200,
    seed: int = 0,
    **world_options: float,
) -> list[float]:
    """Fitness of every agent after one generation of the rule-based population in a fresh ``World(seed=seed)``."""
    return _run_generation(RuleBasedPolicy(seed=seed), world_size, num_agents, steps, seed, **world_options)


def run_random_generation(
    world_size: int = 20,
    num_agents: int = 20,
    steps: int = 200,
    seed: int = 0,
    **world_options: float,
) -> list[float]:
    """Like ``run_rule_based_generation`` with uniformly random valid actions."""
    return _run_generation(RandomPolicy(seed=seed), world_size, num_agents, steps, seed, **world_options)
