"""Prometheus metrics, written by hand in the text exposition format (version 0.0.4): no extra dependency.

Exposed at ``GET /metrics``:

- ``hearth_server_requests_total{endpoint,status}``: every answered request (499 = the client left before an
  answer, as nginx counts it); ``hearth_server_errors_total{endpoint,code}``: 4xx/5xx answers and mid-stream errors;
- ``hearth_server_prompt_tokens_total{model}``, ``hearth_server_completion_tokens_total{model}``;
- ``hearth_server_time_to_first_token_seconds`` (from the request's arrival, queue wait included),
  ``hearth_server_tokens_per_second`` (decode speed of each reply), ``hearth_server_queue_wait_seconds``;
- ``hearth_server_model_info{model}`` (1 for the model that served the latest reply: the local engine keeps one
  model loaded), ``hearth_server_queue_length`` (requests waiting), ``hearth_server_active_generations``,
  ``hearth_server_cancelled_total`` (replies stopped because the client disconnected).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SPEED_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class _LabelledValues(_Metric):
    """One number per combination of label values (counters and gauges)."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        return tuple(str(labels[n]) for n in self.label_names)

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [*self.header(), *(f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items)]


class Counter(_LabelledValues):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_LabelledValues):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def replace_all(self, values: Iterable[tuple[tuple[str, ...], float]]) -> None:
        with self._lock:
            self._values = dict(values)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        with self._lock:
            index = next((i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
            self._counts[index] += 1
            self.count += 1
            self.sum += value

    def render(self) -> list[str]:
        with self._lock:
            counts, total, count = list(self._counts), self.sum, self.count
        lines = self.header()
        cumulative = 0
        for bound, n in zip((*self.buckets, math.inf), counts):
            cumulative += n
            lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}')
        lines.append(f"{self.name}_sum {_number(total)}")
        lines.append(f"{self.name}_count {count}")
        return lines


class ServerMetrics:
    def __init__(self) -> None:
        p = "hearth_server_"
        self.requests = Counter(p + "requests_total", "HTTP requests answered, by endpoint and status.", ("endpoint", "status"))
        self.errors = Counter(p + "errors_total", "Error answers and mid-stream errors, by endpoint and code.", ("endpoint", "code"))
        self.prompt_tokens = Counter(p + "prompt_tokens_total", "Prompt tokens processed.", ("model",))
        self.completion_tokens = Counter(p + "completion_tokens_total", "Completion tokens generated.", ("model",))
        self.cancelled = Counter(p + "cancelled_total", "Replies stopped because the client disconnected.")
        self.ttft = Histogram(
            p + "time_to_first_token_seconds", "Time from a request's arrival to its first token (queue included).", TTFT_BUCKETS
        )
        self.tokens_per_s = Histogram(p + "tokens_per_second", "Decode speed of each reply (tokens/s).", SPEED_BUCKETS)
        self.queue_wait = Histogram(p + "queue_wait_seconds", "Time a request waited for the model.", WAIT_BUCKETS)
        self.model_info = Gauge(p + "model_info", "1 for the model that served the latest reply.", ("model",))
        self.queue_length = Gauge(p + "queue_length", "Requests waiting for the model.")
        self.active = Gauge(p + "active_generations", "Replies being generated now.")

    def set_model(self, model: str) -> None:
        self.model_info.replace_all([((model,), 1.0)])

    def render(self) -> str:
        metrics: list[Counter | Gauge | Histogram] = [
            self.requests, self.errors, self.prompt_tokens, self.completion_tokens, self.cancelled,
            self.ttft, self.tokens_per_s, self.queue_wait, self.model_info, self.queue_length, self.active,
        ]  # fmt: skip
        return "\n".join(line for metric in metrics for line in metric.render()) + "\n"
