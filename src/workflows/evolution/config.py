"""Settings of the evolution simulation, from keyword overrides, the environment and a ``.env`` file.

Precedence, highest first: keyword overrides (CLI options, the Python API; ``None`` means "not given"), the process
environment, the ``.env`` file (by default ``<project root>/.env`` when it exists), the defaults below. Variable names
are the seed project's (``MODEL_PATH``, ``LORA_RANK``, ...); the dataclass fields are the same names in lower case.
A value that cannot be used raises ``EvolutionConfigError`` naming the variable.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from src.errors import EvolutionConfigError
from src.settings import DEFAULT_LOCAL_MODEL, PROJECT_ROOT
from src.workflows.evolution import world as _world

logger = logging.getLogger(__name__)

DEFAULT_ENV_FILE = PROJECT_ROOT / ".env"

DEFAULT_MODEL_PATH = DEFAULT_LOCAL_MODEL  # the embedded SmolLM2-135M; any local model id or folder works
DEFAULT_MODEL_TYPE = "transformers"
MODEL_TYPES = ("transformers",)  # peft LoRA needs a transformers model; the aliases below mean the same
MODEL_TYPE_ALIASES = {"hf": "transformers", "huggingface": "transformers", "causal_lm": "transformers",
                      "auto": "transformers", "local": "transformers"}
DEFAULT_MAX_TOKENS = 8  # free-text decisions: one action word needs only a few tokens
DEFAULT_TEMPERATURE = 1.0  # sample from the policy's own distribution (what the policy-gradient update assumes)
DEFAULT_ENABLE_ONLINE_LEARNING = True
DEFAULT_LORA_RANK = 8
DEFAULT_LORA_ALPHA = 16.0
DEFAULT_LORA_TARGET_MODULES = ("q_proj", "v_proj")
DEFAULT_LEARNING_RATE = 5e-4
DEFAULT_BATCH_SIZE = 4
DEFAULT_TRAIN_EVERY = 10  # K: every K world steps each agent takes one optimizer step
DEFAULT_MUTATION_RATE = 0.01  # absolute std of the Gaussian noise (see genetics.mutate)
DEFAULT_ELITE_RATIO = 0.2
DEFAULT_NUM_AGENTS = 20
DEFAULT_WORLD_SIZE = 20
DEFAULT_STEPS_PER_GENERATION = 200
DEFAULT_NUM_GENERATIONS = 10
DEFAULT_SEED = 42
DEFAULT_FOOD_DENSITY = _world.DEFAULT_FOOD_DENSITY
DEFAULT_WALL_DENSITY = _world.DEFAULT_WALL_DENSITY
DECISION_MODES = ("scored", "free_text")  # score the valid actions' log-probabilities, or generate and parse
DEFAULT_DECISION_MODE = "scored"

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


@dataclass(frozen=True)
class EvolutionConfig:
    model_path: str = DEFAULT_MODEL_PATH
    model_type: str = DEFAULT_MODEL_TYPE
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    enable_online_learning: bool = DEFAULT_ENABLE_ONLINE_LEARNING
    lora_rank: int = DEFAULT_LORA_RANK
    lora_alpha: float = DEFAULT_LORA_ALPHA
    lora_target_modules: tuple[str, ...] = DEFAULT_LORA_TARGET_MODULES
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    train_every: int = DEFAULT_TRAIN_EVERY
    mutation_rate: float = DEFAULT_MUTATION_RATE
    elite_ratio: float = DEFAULT_ELITE_RATIO
    num_agents: int = DEFAULT_NUM_AGENTS
    world_size: int = DEFAULT_WORLD_SIZE
    steps_per_generation: int = DEFAULT_STEPS_PER_GENERATION
    num_generations: int = DEFAULT_NUM_GENERATIONS
    seed: int = DEFAULT_SEED
    food_density: float = DEFAULT_FOOD_DENSITY
    wall_density: float = DEFAULT_WALL_DENSITY
    decision_mode: str = DEFAULT_DECISION_MODE

    def __post_init__(self) -> None:
        # Values given directly (EvolutionConfig(num_agents=0)) are checked and normalised like the environment's.
        for f in fields(self):
            object.__setattr__(self, f.name, _PARSERS[f.name](f.name.upper(), getattr(self, f.name)))

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        env_file: str | Path | None = DEFAULT_ENV_FILE,
        **overrides: Any,
    ) -> EvolutionConfig:
        """Read the settings. ``env`` defaults to ``os.environ``; ``env_file=None`` reads no file; a missing file is
        skipped. ``overrides`` use the field names (``num_agents=4``) and win; ``None`` values are ignored."""
        values: dict[str, Any] = {}
        file_values = _read_env_file(env_file)
        environ = os.environ if env is None else env
        known = {f.name for f in fields(cls)}
        for name in known:
            variable = name.upper()
            if variable in environ and str(environ[variable]).strip() != "":
                values[name] = environ[variable]
            elif file_values.get(variable) not in (None, ""):
                values[name] = file_values[variable]
        for name, value in overrides.items():
            if name not in known:
                raise EvolutionConfigError(name, value, f"unknown setting; known: {', '.join(sorted(known))}")
            if value is not None:
                values[name] = value
        return cls(**values)

    def replace(self, **overrides: Any) -> EvolutionConfig:
        """A copy with some fields changed (``None`` values ignored), validated like the original."""
        known = {f.name for f in fields(self)}
        for name, value in overrides.items():
            if name not in known:
                raise EvolutionConfigError(name, value, f"unknown setting; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (for the run folder); ``EvolutionConfig(**d)`` rebuilds it."""
        data = dataclasses.asdict(self)
        data["lora_target_modules"] = list(self.lora_target_modules)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvolutionConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _read_env_file(env_file: str | Path | None) -> dict[str, str | None]:
    if env_file is None:
        return {}
    path = Path(env_file)
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    logger.debug("Reading evolution settings from %s", path)
    return dict(dotenv_values(path))


# --- parsers: (VARIABLE, raw value) -> checked value --------------------------------------------------------------


def _text(variable: str, value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise EvolutionConfigError(variable, value, "it must not be empty")
    return text


def _int(low: int | None = None, high: int | None = None) -> Callable[[str, Any], int]:
    def parse(variable: str, value: Any) -> int:
        if isinstance(value, bool):
            raise EvolutionConfigError(variable, value, "expected a whole number")
        if isinstance(value, float):
            if not value.is_integer():
                raise EvolutionConfigError(variable, value, "expected a whole number")
            number = int(value)
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                raise EvolutionConfigError(variable, value, "expected a whole number") from None
        _check_range(variable, value, number, low, high)
        return number

    return parse


def _float(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> Callable[[str, Any], float]:
    def parse(variable: str, value: Any) -> float:
        if isinstance(value, bool):
            raise EvolutionConfigError(variable, value, "expected a number")
        try:
            number = float(str(value).strip()) if not isinstance(value, int | float) else float(value)
        except ValueError:
            raise EvolutionConfigError(variable, value, "expected a number") from None
        if not math.isfinite(number):
            raise EvolutionConfigError(variable, value, "expected a finite number")
        if low_open and low is not None and number <= low:
            raise EvolutionConfigError(variable, value, f"it must be greater than {low:g}")
        _check_range(variable, value, number, None if low_open else low, high)
        return number

    return parse


def _check_range(variable: str, raw: Any, number: float, low: float | None, high: float | None) -> None:
    if low is not None and high is not None and not low <= number <= high:
        raise EvolutionConfigError(variable, raw, f"it must be between {low:g} and {high:g}")
    if low is not None and number < low:
        raise EvolutionConfigError(variable, raw, f"it must be at least {low:g}")
    if high is not None and number > high:
        raise EvolutionConfigError(variable, raw, f"it must be at most {high:g}")


def _bool(variable: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise EvolutionConfigError(variable, value, "expected true or false (also 1/0, yes/no, on/off)")


def _model_type(variable: str, value: Any) -> str:
    text = _text(variable, value).lower()
    text = MODEL_TYPE_ALIASES.get(text, text)
    if text not in MODEL_TYPES:
        raise EvolutionConfigError(
            variable, value, f"LoRA adapters need one of: {', '.join(MODEL_TYPES + tuple(MODEL_TYPE_ALIASES))}"
        )
    return text


def _modules(variable: str, value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    modules = tuple(str(m).strip() for m in items if str(m).strip())
    if not modules:
        raise EvolutionConfigError(variable, value, "name at least one module, e.g. q_proj,v_proj")
    return modules


def _choice(options: tuple[str, ...]) -> Callable[[str, Any], str]:
    def parse(variable: str, value: Any) -> str:
        text = _text(variable, value).lower().replace("-", "_")
        if text not in options:
            raise EvolutionConfigError(variable, value, f"choose one of: {', '.join(options)}")
        return text

    return parse


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "model_path": _text,
    "model_type": _model_type,
    "max_tokens": _int(1, 4096),
    "temperature": _float(0.0, 10.0),
    "enable_online_learning": _bool,
    "lora_rank": _int(1, 256),
    "lora_alpha": _float(0.0, 10_000.0, low_open=True),
    "lora_target_modules": _modules,
    "learning_rate": _float(0.0, 1.0, low_open=True),
    "batch_size": _int(1, 4096),
    "train_every": _int(1, 1_000_000),
    "mutation_rate": _float(0.0, 10.0),
    "elite_ratio": _float(0.0, 1.0),
    "num_agents": _int(1, 1000),
    "world_size": _int(_world.MIN_SIZE, _world.MAX_SIZE),
    "steps_per_generation": _int(1, 1_000_000),
    "num_generations": _int(1, 100_000),
    "seed": _int(),
    "food_density": _float(0.0, 0.9),
    "wall_density": _float(0.0, 0.5),
    "decision_mode": _choice(DECISION_MODES),
}
