"""Every bad value of a HEARTH_* variable is a ConfigError naming the variable, never a raw ValueError."""

from __future__ import annotations

import pytest

from src.errors import ConfigError, InvalidSettingError
from src.settings import Settings


@pytest.mark.parametrize(("variable", "value"), [
    ("HEARTH_MAX_NEW_TOKENS", "abc"), ("HEARTH_MAX_NEW_TOKENS", "0"), ("HEARTH_MAX_NEW_TOKENS", "-5"),
    ("HEARTH_REMOTE_READ_TIMEOUT", "soon"), ("HEARTH_REMOTE_READ_TIMEOUT", "0"), ("HEARTH_REMOTE_READ_TIMEOUT", "nan"),
    ("HEARTH_LEAN_DECODER", "maybe"), ("HEARTH_THREADS", "two"), ("HEARTH_SANDBOX", "docker"),
])  # fmt: skip
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(InvalidSettingError) as raised:
        Settings.from_env({variable: value})
    assert isinstance(raised.value, ConfigError)
    assert (raised.value.variable, raised.value.value) == (variable, value)
    assert variable in str(raised.value) and repr(value) in str(raised.value)


def test_good_values_are_read() -> None:
    settings = Settings.from_env({"HEARTH_MAX_NEW_TOKENS": " 64 ", "HEARTH_REMOTE_READ_TIMEOUT": "2.5",
                                  "HEARTH_LEAN_DECODER": "off", "HEARTH_THREADS": "auto"})  # fmt: skip
    assert (settings.max_new_tokens, settings.remote_read_timeout_s, settings.lean_decoder, settings.threads) == (64, 2.5, False, None)
    assert Settings.from_env({}).lean_decoder is True
