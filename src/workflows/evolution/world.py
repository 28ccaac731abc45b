"""The grid world the evolution's agents live in: walls, food, a home base, and agents with energy.

Coordinates are ``(x, y)``: ``x`` grows to the east (columns), ``y`` grows to the south (rows), so ``north`` is
``y - 1``. The grid is square, ``size`` x ``size``, with a wall all around the border and a few inner walls that never
cut the free cells into separate regions.

Rules of one step (``World.step``), for every living agent in ascending id order:

* The action is checked against ``valid_actions(agent_id)`` as it was at the *start* of the step (what the agent saw).
  An action that was not valid there (or is not an action at all) is *invalid*: it does nothing, earns
  ``INVALID_ACTION_REWARD`` (0: the issue's reward list has no such penalty, and the wasted step's energy already
  costs), and is counted in ``invalid_actions``.
* Moves into a wall are *bumps*: the agent stays, earns ``BUMP_REWARD`` (-1) and ``bumps`` is counted. Agents never
  block each other; several may share a cell.
* ``pickup`` on a food cell while empty-handed: the food leaves the grid, ``PICKUP_REWARD`` (+5),
  ``food_collected`` + 1. If an agent earlier in the order took that food in the same step, nothing happens and the
  action still counts as valid (event ``contested``).
* ``drop`` while carrying: at home this is a delivery, ``DELIVER_REWARD`` (+25), ``food_delivered`` + 1. Away from
  home the food goes back on the cell (or is lost if the cell already holds food), with ``DROP_AWAY_REWARD`` (-5)
  and ``food_collected`` - 1, so that picking the same food up again and again is not a source of reward.
* ``eat`` while carrying: the food is consumed, energy + ``EAT_ENERGY`` up to ``max_energy``. If the agent was hungry
  (energy below ``HUNGRY_THRESHOLD`` before eating) it earns ``EAT_HUNGRY_REWARD`` (+10), otherwise 0.
* ``rest`` does nothing.
* Then every step costs ``STEP_ENERGY_COST`` (1) energy. An agent whose energy reaches 0 dies: ``DEATH_REWARD`` (-50),
  any food it carried falls on its cell. An agent that is still alive after the step gets ``steps_survived`` + 1.

After all agents acted, food grows back: for every food item missing below the world's food target, one appears on
a random free cell with probability ``food_respawn_rate``. Everything random comes from the world's own
``random.Random(seed)``; its state is part of ``to_dict()``, so a world rebuilt with ``from_dict()`` continues exactly
as the original would have.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from src.errors import InvalidParameterError, WorldLayoutError

logger = logging.getLogger(__name__)

Cell = tuple[int, int]

NORTH, SOUTH, EAST, WEST = "north", "south", "east", "west"
PICKUP, DROP, EAT, REST = "pickup", "drop", "eat", "rest"
ACTIONS: tuple[str, ...] = (NORTH, SOUTH, EAST, WEST, PICKUP, DROP, EAT, REST)
MOVES: dict[str, Cell] = {NORTH: (0, -1), SOUTH: (0, 1), EAST: (1, 0), WEST: (-1, 0)}
ARROWS: dict[str, str] = {NORTH: "↑", SOUTH: "↓", EAST: "→", WEST: "←"}

# Rewards (the list, plus the two this module had to decide: invalid actions and dropping away from home).
DELIVER_REWARD = 25.0
PICKUP_REWARD = 5.0
EAT_HUNGRY_REWARD = 10.0
EAT_SATED_REWARD = 0.0
BUMP_REWARD = -1.0
DEATH_REWARD = -50.0
INVALID_ACTION_REWARD = 0.0
DROP_AWAY_REWARD = -PICKUP_REWARD

# Energy.
START_ENERGY = 100
MAX_ENERGY = 100
STEP_ENERGY_COST = 1
EAT_ENERGY = 30
HUNGRY_THRESHOLD = 50  # an agent with energy below this is hungry

# World generation defaults.
DEFAULT_SIZE = 20
DEFAULT_NUM_AGENTS = 20
DEFAULT_FOOD_DENSITY = 0.08  # share of the free cells holding food at the start (and the level food grows back to)
DEFAULT_WALL_DENSITY = 0.05  # share of the inner cells turned into walls
DEFAULT_FOOD_RESPAWN_RATE = 0.1  # per missing food item and step
MIN_SIZE = 5
MAX_SIZE = 100
VIEW_RADIUS = 5  # food within this Manhattan distance shows in the observation

# Events of a StepOutcome.
EVENT_MOVED = "moved"
EVENT_BUMP = "bump"
EVENT_PICKUP = "pickup"
EVENT_CONTESTED = "contested"
EVENT_DELIVER = "deliver"
EVENT_DROP = "drop"
EVENT_EAT = "eat"
EVENT_REST = "rest"
EVENT_INVALID = "invalid"

SERIAL_VERSION = 1


@dataclass
class Agent:
    """One agent's body and score. Mutable: the world updates it in place (tests may set fields directly)."""

    id: int
    x: int
    y: int
    energy: int = START_ENERGY
    carrying: int = 0  # 0 or 1 food item
    alive: bool = True
    total_reward: float = 0.0
    food_collected: int = 0
    food_delivered: int = 0
    food_eaten: int = 0
    steps_survived: int = 0
    invalid_actions: int = 0
    bumps: int = 0
    died_at: int | None = None  # the world step in which the agent died

    @property
    def position(self) -> Cell:
        return (self.x, self.y)


@dataclass(frozen=True)
class StepOutcome:
    """What one agent's action did in one step."""

    agent_id: int
    action: str
    reward: float
    valid: bool
    event: str
    died: bool
    energy: int
    position: Cell


def fitness(agent: Agent) -> float:
    """The evolution's fitness of one agent (the issue's formula, in one place)."""
    return agent.total_reward + agent.food_collected * 5 + agent.food_delivered * 10 + agent.steps_survived * 0.1


def _arrows(dx: int, dy: int) -> str:
    """Arrows from a cell towards an offset: the longer axis first, vertical first on a tie."""
    vertical = ARROWS[NORTH] if dy < 0 else ARROWS[SOUTH] if dy > 0 else ""
    horizontal = ARROWS[WEST] if dx < 0 else ARROWS[EAST] if dx > 0 else ""
    return horizontal + vertical if abs(dx) > abs(dy) else vertical + horizontal


class World:
    """A square grid world with walls, food, a home base and agents; deterministic under its seed."""

    def __init__(
        self,
        size: int = DEFAULT_SIZE,
        seed: int = 0,
        num_agents: int = DEFAULT_NUM_AGENTS,
        food_density: float = DEFAULT_FOOD_DENSITY,
        wall_density: float = DEFAULT_WALL_DENSITY,
        food_respawn_rate: float = DEFAULT_FOOD_RESPAWN_RATE,
        home_size: int | None = None,
    ) -> None:
        _check_int("size", size, MIN_SIZE, MAX_SIZE)
        _check_int("num_agents", num_agents, 0, 10_000)
        _check_float("food_density", food_density, 0.0, 0.9)
        _check_float("wall_density", wall_density, 0.0, 0.5)
        _check_float("food_respawn_rate", food_respawn_rate, 0.0, 1.0)
        if home_size is None:
            home_size = 2 if size >= 8 else 1
        _check_int("home_size", home_size, 1, size - 2)

        self.size = size
        self.seed = seed
        self.food_respawn_rate = float(food_respawn_rate)
        self.t = 0
        self.rng = random.Random(seed)

        self.walls: frozenset[Cell] = frozenset(
            (x, y) for x in range(size) for y in range(size) if x in (0, size - 1) or y in (0, size - 1)
        )
        start = size // 2 - home_size // 2
        self.home: frozenset[Cell] = frozenset(
            (x, y) for x in range(start, start + home_size) for y in range(start, start + home_size)
        )
        self._place_inner_walls(wall_density)

        free = self._free_cells()  # not wall, not home
        self.food_target = max(1, round(food_density * len(free))) if food_density > 0 and free else 0
        self.food: set[Cell] = set(self.rng.sample(free, min(self.food_target, len(free))))

        spawn = [c for c in self._open_cells() if c not in self.food] or self._open_cells()
        if len(spawn) >= num_agents:
            positions = self.rng.sample(spawn, num_agents)
        else:
            positions = [self.rng.choice(spawn) for _ in range(num_agents)]
        self.agents: list[Agent] = [Agent(id=i, x=x, y=y) for i, (x, y) in enumerate(positions)]
        logger.debug(
            "World size=%d seed=%d: %d inner walls, %d food, %d agents",
            size, seed, len(self.walls) - 4 * (size - 1), len(self.food), num_agents,
        )

    # --- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_layout(
        cls,
        layout: str | Sequence[str],
        agents: Iterable[Cell] = (),
        *,
        seed: int = 0,
        food_respawn_rate: float = 0.0,
        food_target: int | None = None,
    ) -> World:
        """Build a world exactly as drawn: ``#`` wall, ``.`` floor, ``F`` food, ``H`` home; one row per line.

        ``agents`` are the agents' ``(x, y)`` cells in id order. Cells outside the drawing count as walls. Food does
        not grow back unless ``food_respawn_rate`` > 0 (then up to ``food_target``, by default the drawn amount).
        """
        rows = [row.strip() for row in (layout.strip().splitlines() if isinstance(layout, str) else layout)]
        rows = [row for row in rows if row]
        size = len(rows)
        if size < 3 or any(len(row) != size for row in rows):
            raise WorldLayoutError(f"the layout must be a square of at least 3x3 cells, got rows of {[len(r) for r in rows]}")
        walls, food, home = set(), set(), set()
        for y, row in enumerate(rows):
            for x, char in enumerate(row):
                if char == "#":
                    walls.add((x, y))
                elif char == "F":
                    food.add((x, y))
                elif char == "H":
                    home.add((x, y))
                elif char != ".":
                    raise WorldLayoutError(f"unknown cell {char!r} at ({x},{y}); use # . F H")
        if not home:
            raise WorldLayoutError("the layout has no home cell (H)")
        world = cls._blank(size, seed, food_respawn_rate)
        world.walls, world.home, world.food = frozenset(walls), frozenset(home), food
        world.food_target = len(food) if food_target is None else food_target
        for i, (x, y) in enumerate(agents):
            if world.is_wall((x, y)):
                raise WorldLayoutError(f"agent {i} is placed on a wall at ({x},{y})")
            world.agents.append(Agent(id=i, x=x, y=y))
        return world

    @classmethod
    def _blank(cls, size: int, seed: int, food_respawn_rate: float) -> World:
        world = cls.__new__(cls)
        world.size, world.seed, world.food_respawn_rate, world.t = size, seed, float(food_respawn_rate), 0
        world.rng = random.Random(seed)
        world.walls, world.home, world.food, world.food_target, world.agents = frozenset(), frozenset(), set(), 0, []
        return world

    def _place_inner_walls(self, wall_density: float) -> None:
        inner = [
            (x, y) for y in range(1, self.size - 1) for x in range(1, self.size - 1)
            if (x, y) not in self.home and not self._next_to_home((x, y))
        ]
        wanted = round(wall_density * (self.size - 2) ** 2)
        walls = set(self.walls)
        for cell in self.rng.sample(inner, len(inner)):
            if wanted <= 0:
                break
            if _keeps_connected(cell, walls):
                walls.add(cell)
                wanted -= 1
        self.walls = frozenset(walls)

    def _next_to_home(self, cell: Cell) -> bool:
        return any((cell[0] + dx, cell[1] + dy) in self.home for dx, dy in MOVES.values())

    def _open_cells(self) -> list[Cell]:
        return [(x, y) for y in range(self.size) for x in range(self.size) if (x, y) not in self.walls]

    def _free_cells(self) -> list[Cell]:
        return [c for c in self._open_cells() if c not in self.home]

    # --- queries ------------------------------------------------------------------------------------------------

    def is_wall(self, cell: Cell) -> bool:
        x, y = cell
        return cell in self.walls or not (0 <= x < self.size and 0 <= y < self.size)

    def agent(self, agent_id: int) -> Agent:
        try:
            return self.agents[agent_id]
        except IndexError:
            raise InvalidParameterError(f"There is no agent {agent_id} in this world ({len(self.agents)} agents).") from None

    def alive_ids(self) -> list[int]:
        return [a.id for a in self.agents if a.alive]

    @property
    def done(self) -> bool:
        """True when every agent is dead."""
        return not any(a.alive for a in self.agents)

    def valid_actions(self, agent_id: int) -> list[str]:
        """The actions that make sense for this agent now, in ``ACTIONS`` order; empty for a dead agent."""
        agent = self.agent(agent_id)
        if not agent.alive:
            return []
        valid = [NORTH, SOUTH, EAST, WEST]  # bumping is allowed (and punished)
        if not agent.carrying and agent.position in self.food:
            valid.append(PICKUP)
        if agent.carrying:
            valid += [DROP, EAT]
        valid.append(REST)
        return valid

    def observation(self, agent_id: int) -> str:
        """A short text, e.g. ``At (5,3), E80, has food. See: home↑ wall← Action:`` (about 20 tokens)."""
        agent = self.agent(agent_id)
        if not agent.alive:
            return f"At ({agent.x},{agent.y}), dead."
        parts: list[str] = []
        food = self.nearest_food(agent.position, VIEW_RADIUS)
        if food is not None:
            parts.append("food here" if food == agent.position else "food" + _arrows(food[0] - agent.x, food[1] - agent.y))
        if agent.position in self.home:
            parts.append("home here")
        else:
            hx, hy = self.nearest_home(agent.position)
            parts.append("home" + _arrows(hx - agent.x, hy - agent.y))
        walls = "".join(ARROWS[m] for m, (dx, dy) in MOVES.items() if self.is_wall((agent.x + dx, agent.y + dy)))
        if walls:
            parts.append("wall" + walls)
        carry = "has food" if agent.carrying else "no food"
        return f"At ({agent.x},{agent.y}), E{agent.energy}, {carry}. See: {' '.join(parts)} Action:"

    def nearest_food(self, cell: Cell, radius: int | None = None) -> Cell | None:
        """The closest food (Manhattan distance, ties by row then column) within ``radius``, or None."""
        best: tuple[int, int, int] | None = None
        for fx, fy in self.food:
            d = abs(fx - cell[0]) + abs(fy - cell[1])
            if radius is not None and d > radius:
                continue
            key = (d, fy, fx)
            if best is None or key < best:
                best = key
        return None if best is None else (best[2], best[1])

    def nearest_home(self, cell: Cell) -> Cell:
        return min(self.home, key=lambda h: (abs(h[0] - cell[0]) + abs(h[1] - cell[1]), h[1], h[0]))

    def fitnesses(self) -> list[float]:
        return [fitness(a) for a in self.agents]

    # --- dynamics -----------------------------------------------------------------------------------------------

    def step(self, actions: Mapping[int, str]) -> dict[int, StepOutcome]:
        """Apply every living agent's action (ascending id order), then let food grow. Missing agents ``rest``."""
        living = [a for a in self.agents if a.alive]
        valid_before = {a.id: self.valid_actions(a.id) for a in living}
        outcomes: dict[int, StepOutcome] = {}
        for agent in living:
            action = actions.get(agent.id, REST)
            outcomes[agent.id] = self._act(agent, action, action in valid_before[agent.id])
        self._grow_food()
        self.t += 1
        return outcomes

    def _act(self, agent: Agent, action: str, valid: bool) -> StepOutcome:
        reward, event = 0.0, EVENT_REST
        if not valid:
            reward, event = INVALID_ACTION_REWARD, EVENT_INVALID
            agent.invalid_actions += 1
        elif action in MOVES:
            dx, dy = MOVES[action]
            target = (agent.x + dx, agent.y + dy)
            if self.is_wall(target):
                reward, event = BUMP_REWARD, EVENT_BUMP
                agent.bumps += 1
            else:
                agent.x, agent.y = target
                event = EVENT_MOVED
        elif action == PICKUP:
            if agent.position in self.food and not agent.carrying:
                self.food.discard(agent.position)
                agent.carrying = 1
                agent.food_collected += 1
                reward, event = PICKUP_REWARD, EVENT_PICKUP
            else:
                event = EVENT_CONTESTED
        elif action == DROP:
            agent.carrying = 0
            if agent.position in self.home:
                agent.food_delivered += 1
                reward, event = DELIVER_REWARD, EVENT_DELIVER
            else:
                self.food.add(agent.position)
                agent.food_collected -= 1
                reward, event = DROP_AWAY_REWARD, EVENT_DROP
        elif action == EAT:
            hungry = agent.energy < HUNGRY_THRESHOLD
            agent.carrying = 0
            agent.food_eaten += 1
            agent.energy = min(MAX_ENERGY, agent.energy + EAT_ENERGY)
            reward, event = (EAT_HUNGRY_REWARD if hungry else EAT_SATED_REWARD), EVENT_EAT

        agent.energy = max(0, agent.energy - STEP_ENERGY_COST)
        died = agent.energy <= 0
        if died:
            agent.alive = False
            agent.died_at = self.t
            reward += DEATH_REWARD
            if agent.carrying and agent.position not in self.home:
                self.food.add(agent.position)
            agent.carrying = 0
        else:
            agent.steps_survived += 1
        agent.total_reward += reward
        return StepOutcome(agent.id, action, reward, valid, event, died, agent.energy, agent.position)

    def _grow_food(self) -> None:
        missing = self.food_target - len(self.food)
        if missing <= 0 or self.food_respawn_rate <= 0:
            return
        grown = sum(1 for _ in range(missing) if self.rng.random() < self.food_respawn_rate)
        if not grown:
            return
        cells = [c for c in self._free_cells() if c not in self.food]
        for cell in self.rng.sample(cells, min(grown, len(cells))):
            self.food.add(cell)

    # --- checkpoints --------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this world exactly, RNG state included; JSON-serialisable."""
        version, internal, gauss = self.rng.getstate()
        return {
            "version": SERIAL_VERSION,
            "size": self.size,
            "seed": self.seed,
            "t": self.t,
            "food_respawn_rate": self.food_respawn_rate,
            "food_target": self.food_target,
            "walls": sorted([list(c) for c in self.walls]),
            "home": sorted([list(c) for c in self.home]),
            "food": sorted([list(c) for c in self.food]),
            "agents": [asdict(a) for a in self.agents],
            "rng_state": [version, list(internal), gauss],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> World:
        try:
            if data.get("version") != SERIAL_VERSION:
                raise WorldLayoutError(f"unsupported saved world version {data.get('version')!r}")
            world = cls._blank(int(data["size"]), data["seed"], float(data["food_respawn_rate"]))
            world.t = int(data["t"])
            world.food_target = int(data["food_target"])
            world.walls = frozenset((int(x), int(y)) for x, y in data["walls"])
            world.home = frozenset((int(x), int(y)) for x, y in data["home"])
            world.food = {(int(x), int(y)) for x, y in data["food"]}
            world.agents = [Agent(**a) for a in data["agents"]]
            version, internal, gauss = data["rng_state"]
            world.rng.setstate((version, tuple(internal), gauss))
        except WorldLayoutError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise WorldLayoutError(f"the saved world is incomplete or corrupt ({exc!r})") from exc
        return world

    def snapshot(self) -> World:
        """An independent copy (for rendering on another thread while this world keeps stepping)."""
        return World.from_dict(self.to_dict())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, World) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def render_text(self) -> str:
        """The grid as text (``#`` wall, ``F`` food, ``H`` home, ``.`` floor, agent ids mod 10 on top); for logs."""
        grid = [["#" if (x, y) in self.walls else "H" if (x, y) in self.home else "F" if (x, y) in self.food else "."
                 for x in range(self.size)] for y in range(self.size)]
        for a in self.agents:
            if a.alive:
                grid[a.y][a.x] = str(a.id % 10)
        return "\n".join("".join(row) for row in grid)


def _keeps_connected(cell: Cell, walls: set[Cell]) -> bool:
    """Conservative local test: turning ``cell`` into a wall keeps the free cells connected if its free edge
    neighbours are linked to each other through free cells of the 3x3 ring around it."""
    x, y = cell
    ring = [(x - 1, y - 1), (x, y - 1), (x + 1, y - 1), (x + 1, y), (x + 1, y + 1), (x, y + 1), (x - 1, y + 1), (x - 1, y)]
    free = [c not in walls for c in ring]
    edge_positions = [i for i in (1, 3, 5, 7) if free[i]]
    if not edge_positions:
        return False  # an isolated free cell: leave it alone
    # Label the runs of consecutive free ring cells (the ring is circular; consecutive cells are edge-adjacent).
    labels = [-1] * 8
    label = 0
    for start in range(8):
        if free[start] and labels[start] < 0:
            i = start
            while free[i] and labels[i] < 0:
                labels[i] = label
                i = (i + 1) % 8
            i = (start - 1) % 8
            while free[i] and labels[i] < 0:
                labels[i] = label
                i = (i - 1) % 8
            label += 1
    return len({labels[i] for i in edge_positions}) == 1


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidParameterError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")


def _check_float(name: str, value: object, low: float, high: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= float(value) <= high:
        raise InvalidParameterError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}.")
