"""The per-agent experience buffer: bounded, ordered, seeded sampling, exact round trip for checkpoints."""

from __future__ import annotations

import json
import random

import pytest

from src.errors import InvalidParameterError
from src.workflows.evolution.experience import Experience, ExperienceBuffer


def _exp(i: int) -> Experience:
    return Experience(f"obs {i}", "north", float(i), f"next {i}")


def test_the_buffer_keeps_the_newest_experiences_in_order() -> None:
    buffer = ExperienceBuffer(3)
    for i in range(5):
        buffer.add(_exp(i))
    assert len(buffer) == 3
    assert [e.reward for e in buffer] == [2.0, 3.0, 4.0]
    with pytest.raises(InvalidParameterError):
        ExperienceBuffer(0)


def test_sampling_is_seeded_distinct_and_capped() -> None:
    buffer = ExperienceBuffer(10)
    for i in range(8):
        buffer.add(_exp(i))
    a = buffer.sample(4, random.Random(1))
    assert a == buffer.sample(4, random.Random(1))
    assert len(set(a)) == 4 and all(e in list(buffer) for e in a)
    assert len(buffer.sample(50, random.Random(1))) == 8
    assert ExperienceBuffer(2).sample(4, random.Random(0)) == []


def test_round_trip_through_json_keeps_contents_and_future_sampling() -> None:
    buffer = ExperienceBuffer(4)
    for i in range(6):
        buffer.add(_exp(i))
    copy = ExperienceBuffer.from_dict(json.loads(json.dumps(buffer.to_dict())))
    assert list(copy) == list(buffer)
    assert copy.sample(3, random.Random(5)) == buffer.sample(3, random.Random(5))
    buffer.add(_exp(9))
    copy.add(_exp(9))
    assert list(copy) == list(buffer)
