"""EvolutionConfig: defaults, environment, .env file, precedence, and errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.errors import EvolutionConfigError, HearthError
from src.workflows.evolution.config import EvolutionConfig


def test_defaults() -> None:
    config = EvolutionConfig.from_env(env={}, env_file=None)
    assert config == EvolutionConfig()
    assert config.model_path == "smollm2-135m" and config.model_type == "transformers"
    assert (config.num_agents, config.world_size, config.elite_ratio) == (20, 20, 0.2)
    assert (config.batch_size, config.train_every, config.lora_rank) == (4, 10, 8)
    assert config.enable_online_learning is True and config.lora_target_modules == ("q_proj", "v_proj")


def test_environment_values_are_parsed() -> None:
    env = {
        "MODEL_PATH": "/models/tiny", "MODEL_TYPE": "HF", "MAX_TOKENS": "12", "TEMPERATURE": "0.5",
        "ENABLE_ONLINE_LEARNING": "off", "LORA_RANK": "4", "LEARNING_RATE": "1e-3", "BATCH_SIZE": "2",
        "MUTATION_RATE": "0.02", "ELITE_RATIO": "0.5", "NUM_AGENTS": "6", "WORLD_SIZE": "12",
        "STEPS_PER_GENERATION": "30", "NUM_GENERATIONS": "3", "SEED": "-7",
        "LORA_TARGET_MODULES": " q_proj , k_proj,", "TRAIN_EVERY": "5", "DECISION_MODE": "free-text",
    }
    c = EvolutionConfig.from_env(env=env, env_file=None)
    assert c.model_path == "/models/tiny" and c.model_type == "transformers" and c.max_tokens == 12
    assert c.temperature == 0.5 and c.enable_online_learning is False and c.lora_rank == 4
    assert c.learning_rate == 1e-3 and c.batch_size == 2 and c.mutation_rate == 0.02 and c.elite_ratio == 0.5
    assert (c.num_agents, c.world_size, c.steps_per_generation, c.num_generations, c.seed) == (6, 12, 30, 3, -7)
    assert c.lora_target_modules == ("q_proj", "k_proj") and c.train_every == 5 and c.decision_mode == "free_text"


def test_env_file_is_read_and_the_environment_and_overrides_win(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# evolution\nNUM_AGENTS=8\nWORLD_SIZE=16\nMODEL_PATH='smollm2-135m'\nexport SEED=3\nELITE_RATIO=0.25\n",
        encoding="utf-8",
    )
    c = EvolutionConfig.from_env(env={"WORLD_SIZE": "10", "SEED": ""}, env_file=env_file, elite_ratio=None)
    assert c.num_agents == 8 and c.world_size == 10 and c.seed == 3 and c.elite_ratio == 0.25
    c = EvolutionConfig.from_env(env={"WORLD_SIZE": "10"}, env_file=env_file, world_size=30, num_agents=2)
    assert c.world_size == 30 and c.num_agents == 2
    assert EvolutionConfig.from_env(env={}, env_file=tmp_path / "missing.env").num_agents == 20


def test_os_environ_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUM_GENERATIONS", "4")
    assert EvolutionConfig.from_env(env_file=None).num_generations == 4


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("ELITE_RATIO", "1.5", "between 0 and 1"),
        ("NUM_AGENTS", "0", "between 1 and 1000"),
        ("NUM_AGENTS", "many", "whole number"),
        ("LORA_RANK", "2.5", "whole number"),
        ("LEARNING_RATE", "0", "greater than 0"),
        ("TEMPERATURE", "nan", "finite"),
        ("MUTATION_RATE", "-0.1", "between 0 and 10"),
        ("ENABLE_ONLINE_LEARNING", "maybe", "true or false"),
        ("WORLD_SIZE", "4", "between 5 and 100"),
        ("MODEL_TYPE", "gguf", "transformers"),
        ("LORA_TARGET_MODULES", " , ", "at least one module"),
        ("DECISION_MODE", "telepathy", "scored"),
    ],
)
def test_bad_values_raise_an_error_naming_the_variable(variable: str, value: str, hint: str) -> None:
    with pytest.raises(EvolutionConfigError) as info:
        EvolutionConfig.from_env(env={variable: value}, env_file=None)
    error = info.value
    assert isinstance(error, HearthError) and isinstance(error, ValueError)
    assert error.variable == variable and variable in str(error) and value in str(error) and hint in str(error)


def test_bad_values_in_the_env_file_and_overrides(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("BATCH_SIZE=zero\n", encoding="utf-8")
    with pytest.raises(EvolutionConfigError, match="BATCH_SIZE"):
        EvolutionConfig.from_env(env={}, env_file=env_file)
    with pytest.raises(EvolutionConfigError, match="NUM_AGENTS"):
        EvolutionConfig.from_env(env={}, env_file=None, num_agents=0)
    with pytest.raises(EvolutionConfigError, match="unknown setting"):
        EvolutionConfig.from_env(env={}, env_file=None, agents=3)
    with pytest.raises(EvolutionConfigError, match="ELITE_RATIO"):
        EvolutionConfig(elite_ratio=2.0)


def test_replace_and_dict_round_trip() -> None:
    config = EvolutionConfig().replace(num_agents=4, seed=None, lora_target_modules="q_proj")
    assert config.num_agents == 4 and config.seed == EvolutionConfig().seed and config.lora_target_modules == ("q_proj",)
    assert EvolutionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(EvolutionConfigError):
        config.replace(num_agents=-1)
