"""Leaving out old turns to fit the context window: the same choice as trying every possibility, in a few encodes.

The encoder here is a fake (a word is a token, each message costs 3 more, the generation prompt 2): trimming only
needs token counts. The real engine runs it on the embedded model in tests/test_engine.py."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from src.errors import EngineStoppedError
from src.utils.context_trimming import fit_to_window
from src.utils.generation import ChatMessage


class CountingEncoder:
    def __init__(self) -> None:
        self.calls = 0
        self.encoded_messages = 0

    def __call__(self, messages: Sequence[ChatMessage]) -> list[int]:
        self.calls += 1
        self.encoded_messages += len(messages)
        tokens = 2 + sum(3 + len(message.content.split()) for message in messages)
        return list(range(tokens))


def conversation(turns: int, *, words: int = 5, system: bool = True) -> list[ChatMessage]:
    chat = [ChatMessage("system", "be brief")] if system else []
    for turn in range(turns):
        chat.append(ChatMessage("user", " ".join(["question"] * words) + f" {turn}"))
        chat.append(ChatMessage("assistant", " ".join(["answer"] * words)))
    chat.append(ChatMessage("user", "and now?"))
    return chat


def smallest_that_fits(chat: list[ChatMessage], budget: int) -> int | None:
    """What trimming must choose, by trying every number of old turns to leave out (the oracle)."""
    encode = CountingEncoder()
    old = [i for i in range(len(chat) - 1) if chat[i].role != "system"]
    for dropped in range(len(old) + 1):
        cut = set(old[:dropped])
        kept = [m for i, m in enumerate(chat) if i not in cut]
        opens_on_reply = dropped and dropped < len(old) and chat[old[dropped]].role == "assistant"
        if not opens_on_reply and len(encode(kept)) <= budget:
            return dropped
    return None


@pytest.mark.parametrize("seed", range(30))
def test_it_leaves_out_exactly_what_trying_everything_would(seed: int) -> None:
    rng = random.Random(seed)
    chat = [ChatMessage("system", "rules")] if rng.random() < 0.7 else []
    for _ in range(rng.randint(0, 40)):
        chat.append(ChatMessage(rng.choice(["user", "assistant", "assistant", "system"]), "w " * rng.randint(0, 30)))
    chat.append(ChatMessage(rng.choice(["user", "system"]), "last " * rng.randint(0, 10)))
    budget = rng.randint(5, 400)
    fitted = fit_to_window(chat, CountingEncoder(), prompt_budget=budget)
    expected = smallest_that_fits(chat, budget)
    if expected is None:
        assert not fitted.fits
    else:
        assert fitted.fits and fitted.dropped_messages == expected and len(fitted.token_ids) <= budget


def test_what_is_kept_opens_on_a_question_and_keeps_the_system_prompt_and_the_last_message() -> None:
    chat = conversation(turns=50)
    kept: list[Sequence[ChatMessage]] = []

    def encode(messages: Sequence[ChatMessage]) -> list[int]:
        kept.append(messages)
        return CountingEncoder()(messages)

    fitted = fit_to_window(chat, encode, prompt_budget=100)
    assert fitted.fits and fitted.dropped_messages > 0 and fitted.dropped_messages % 2 == 0
    final = next(messages for messages in kept if len(encode(messages)) == len(fitted.token_ids))
    assert final[0] == chat[0] and final[1].role == "user" and final[-1] == chat[-1]


def test_a_hundred_thousand_messages_take_a_few_encodes_of_what_is_kept() -> None:
    chat = conversation(turns=50_000)  # 100,002 messages
    encode = CountingEncoder()
    fitted = fit_to_window(chat, encode, prompt_budget=2048)
    assert fitted.fits and len(fitted.token_ids) <= 2048
    one_turn_more = [chat[0], *chat[1 + fitted.dropped_messages - 2 :]]  # the previous question and answer kept too
    assert len(CountingEncoder()(one_turn_more)) > 2048  # nothing more was left out than needed
    # Re-encoding after each dropped message took ~100,000 encodes of ~100,000 messages each.
    assert encode.calls <= 2 * math.log2(len(chat)) + 3
    assert encode.encoded_messages <= 4 * 2048  # each encode holds about a window's worth, never the whole chat


def test_a_short_chat_that_fits_is_encoded_once() -> None:
    encode = CountingEncoder()
    fitted = fit_to_window(conversation(turns=3), encode, prompt_budget=2048)
    assert fitted.fits and fitted.dropped_messages == 0 and encode.calls == 1


def test_when_nothing_fits_it_keeps_the_least_and_says_so() -> None:
    chat = conversation(turns=5, words=100)
    fitted = fit_to_window(chat, CountingEncoder(), prompt_budget=10)  # system + last alone: 12
    assert not fitted.fits and fitted.dropped_messages == 10  # every old turn left out: system + last remain


def test_shutdown_stops_the_search() -> None:
    def stopping() -> None:
        raise EngineStoppedError()

    with pytest.raises(EngineStoppedError):
        fit_to_window(conversation(turns=10), CountingEncoder(), prompt_budget=30, check_stop=stopping)
