"""The reply pump batches UI updates (no browser needed: a fake clock drives it)."""

from __future__ import annotations

from src.ui.streaming import ReplyPump


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_updates_are_batched_to_the_rate_and_the_last_text_always_arrives() -> None:
    clock = FakeClock()

    def pieces():
        for i in range(300):  # 300 tokens, one every 5 ms = 1.5 s
            clock.now = i * 0.005
            yield f"w{i} "

    shown: list[str] = []
    done: list[object] = []
    pump = ReplyPump(pieces(), shown.append, lambda result, error: done.append((result, error)), max_rate=30, clock=clock)
    pump.start().thread.join(5)
    assert shown[-1] == "".join(f"w{i} " for i in range(300))
    assert len(shown) <= 1.5 * 30 + 2
    assert len(shown) >= 30
    assert all(b.startswith(a) for a, b in zip(shown, shown[1:])), "each update extends the previous one"
    assert done == [(None, None)]


def test_an_error_is_reported_with_the_text_so_far() -> None:
    def pieces():
        yield "partial "
        raise RuntimeError("server went away")

    shown: list[str] = []
    done: list[tuple[object, BaseException | None]] = []
    ReplyPump(pieces(), shown.append, lambda r, e: done.append((r, e))).start().thread.join(5)
    assert shown[-1] == "partial "
    assert isinstance(done[0][1], RuntimeError)
