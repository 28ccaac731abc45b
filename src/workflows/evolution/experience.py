"""What an agent lived through: (observation, action, reward, next observation), kept in a bounded buffer per agent.

The buffer is a ring: once ``capacity`` experiences are stored, each new one replaces the oldest. Sampling draws
without replacement from a caller's ``random.Random`` so that a seeded run samples the same batches every time, and
``to_dict``/``from_dict`` round-trip the exact contents and ring position for checkpoints.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from src.errors import InvalidParameterError


@dataclass(frozen=True)
class Experience:
    observation: str
    action: str
    reward: float
    next_observation: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Experience:
        return cls(str(data["observation"]), str(data["action"]), float(data["reward"]), str(data["next_observation"]))


class ExperienceBuffer:
    """A bounded, ordered store of one agent's experiences (oldest first)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise InvalidParameterError(f"An experience buffer needs a capacity of at least 1, not {capacity}.")
        self.capacity = capacity
        self._items: list[Experience] = []
        self._next = 0  # where the next experience goes once the buffer is full

    def add(self, experience: Experience) -> None:
        if len(self._items) < self.capacity:
            self._items.append(experience)
        else:
            self._items[self._next] = experience
            self._next = (self._next + 1) % self.capacity

    def sample(self, batch_size: int, rng: random.Random) -> list[Experience]:
        """Up to ``batch_size`` distinct experiences (all of them if fewer are stored), drawn with ``rng``."""
        if batch_size < 0:
            raise InvalidParameterError(f"A batch size cannot be negative ({batch_size}).")
        if batch_size >= len(self._items):
            return list(self)
        return [self._items[i] for i in rng.sample(range(len(self._items)), batch_size)]

    def clear(self) -> None:
        self._items.clear()
        self._next = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Experience]:
        """Oldest first."""
        yield from self._items[self._next :]
        yield from self._items[: self._next]

    def to_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "next": self._next, "items": [e.to_dict() for e in self._items]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperienceBuffer:
        buffer = cls(int(data["capacity"]))
        buffer._items = [Experience.from_dict(item) for item in data["items"]][: buffer.capacity]
        buffer._next = int(data.get("next", 0)) % buffer.capacity if len(buffer._items) == buffer.capacity else 0
        return buffer
