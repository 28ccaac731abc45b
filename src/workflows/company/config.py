"""Company configurations of the agent software company: typed values and a loader compatible with ChatDev.

A configuration is a folder holding up to three JSON files, with ChatDev's names and keys so that people can bring
their existing ChatDev ``CompanyConfig`` folders unchanged:

- ``ChatChainConfig.json``: the chain of phases (simple or composed) and the company options;
- ``PhaseConfig.json``: for every simple phase, the two roles that talk and the phase prompt;
- ``RoleConfig.json``: for every role, its system prompt.

A file missing from the folder is taken whole from ``assets/company/Default`` (ChatDev's own rule, file by file,
never merged key by key: a folder that ships a PhaseConfig.json means exactly that set of phases).

Prompts hold ``{name}`` placeholders that the runner fills (``fill_placeholders``); they are filled with a regex on
``{identifier}`` rather than ``str.format`` because model output pasted into a prompt (code, JSON) is full of braces.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from src.errors import (
    CompanyConfigError,
    CompanyConfigFileError,
    CompanyConfigNotFoundError,
    UnknownCompanyPhaseError,
    UnknownCompanyRoleError,
)
from src.settings import PROJECT_ROOT

logger = logging.getLogger(__name__)

CHAT_CHAIN_FILE = "ChatChainConfig.json"
PHASE_FILE = "PhaseConfig.json"
ROLE_FILE = "RoleConfig.json"
CONFIG_FILES: tuple[str, ...] = (CHAT_CHAIN_FILE, PHASE_FILE, ROLE_FILE)

DEFAULT_CONFIG_NAME = "Default"
DEFAULT_ASSETS_DIR = PROJECT_ROOT / "assets" / "company"

SIMPLE_PHASE = "SimplePhase"
COMPOSED_PHASE = "ComposedPhase"

# ChatDev gives a step with max_turn_step <= 0 its default of 10 turns; local models are slow, so ours is smaller.
DEFAULT_TURN_LIMIT = 3

# The placeholders a runner is expected to fill, with what goes in them. The first group is every placeholder that
# ChatDev's CompanyConfig files use (Default, Human, Art, Incremental); the rest are Hearth's additions.
KNOWN_PLACEHOLDERS: dict[str, str] = {
    "chatdev_prompt": "the chain's background_prompt (role prompts start with it)",
    "task": "the user's task, as typed",
    "description": "a longer description of the task, when there is one",
    "modality": "the product form agreed in DemandAnalysis (Application, Website, ...)",
    "language": "the programming language agreed in LanguageChoose",
    "ideas": "ideas gathered before coding",
    "codes": "every source file of the project, each under its file name",
    "unimplemented_file": "the name of a file that still has unimplemented functions",
    "gui": "a sentence asking for a graphical interface when gui_design is on, else empty",
    "images": "the pictures made for the GUI, one 'name.png: description' per line (Art)",
    "comments": "the reviewer's (or the human's) comments on the code",
    "test_reports": "the output of running the program or its tests",
    "error_summary": "the summary of the errors found in test_reports",
    "requirements": "the content of requirements.txt",
    "assistant_role": "the name of the role that answers in the phase",
    "user_role": "the name of the role that instructs in the phase (Hearth)",
    "plan": "the plan written in the Planning phase (Hearth's AutoCoder)",
}

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0", ""})

# {identifier} and nothing else: "{ x }", "{'a': 1}", "{}" are not placeholders. A doubled "{{name}}" is not one
# either: in str.format it is an escaped literal, so a ChatDev prompt that used it meant the braces to stay.
_PLACEHOLDER_RE = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")


# --- values --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimpleStep:
    """A chain step that runs one phase of PhaseConfig.json: a short chat between its two roles."""

    phase: str
    phase_type: str = SIMPLE_PHASE
    max_turn_step: int = -1  # <= 0: the runner's default number of turns (ChatDev writes -1)
    need_reflect: bool = False
    max_tokens: int | None = None  # Hearth extension: reply length limit for this step; None = the app's default
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, kept so nothing the user wrote is lost

    def turn_limit(self, default: int = DEFAULT_TURN_LIMIT) -> int:
        return self.max_turn_step if self.max_turn_step > 0 else default


@dataclass(frozen=True)
class ComposedStep:
    """A chain step that repeats its simple phases up to ``cycle_num`` times; its class decides when to stop early."""

    phase: str
    cycle_num: int
    composition: list[SimpleStep]
    phase_type: str = COMPOSED_PHASE
    max_tokens: int | None = None  # given to the steps of the composition that set none themselves
    extra: dict[str, Any] = field(default_factory=dict)


ChainStep: TypeAlias = SimpleStep | ComposedStep


@dataclass(frozen=True)
class ChatChainConfig:
    chain: list[ChainStep]
    recruitments: list[str] = field(default_factory=list)
    clear_structure: bool = True
    # Defaults for keys a file leaves out (ChatDev requires them all): off for everything that costs a small model
    # extra work or needs the network.
    gui_design: bool = False
    git_management: bool = False
    web_spider: bool = False
    self_improve: bool = False
    incremental_develop: bool = False
    with_memory: bool = False
    background_prompt: str = ""
    role_models: dict[str, str] = field(default_factory=dict)  # Hearth extension: role -> model id
    extra: dict[str, Any] = field(default_factory=dict)

    def steps(self) -> Iterator[tuple[ComposedStep | None, SimpleStep]]:
        """Every simple step in chain order, with the composed step it belongs to (None at the top level)."""
        for step in self.chain:
            if isinstance(step, ComposedStep):
                for inner in step.composition:
                    yield step, inner
            else:
                yield None, step

    def phase_names(self) -> set[str]:
        """Names of every phase the chain runs: top-level steps, composed steps and the phases inside them."""
        names: set[str] = set()
        for parent, step in self.steps():
            names.add(step.phase)
            if parent is not None:
                names.add(parent.phase)
        return names


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    assistant_role_name: str
    user_role_name: str
    phase_prompt: str  # the JSON list of lines joined with "\n"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RoleSpec:
    name: str
    prompt: str  # the JSON list of lines joined with "\n"


@dataclass
class CompanyConfig:
    name: str
    folder: Path
    chain: ChatChainConfig
    phases: dict[str, PhaseSpec]
    roles: dict[str, RoleSpec]
    sources: dict[str, Path]  # file name (ChatChainConfig.json, ...) -> the file it was read from
    # Phases the chain names that the app has no class for (only filled when known_phase_classes was given), in chain
    # order: the runner skips them with a notice instead of failing the whole run.
    unsupported_phases: list[str] = field(default_factory=list)

    @property
    def inherited_files(self) -> list[str]:
        """The files that came from the Default configuration because the folder lacks them."""
        return [name for name, path in self.sources.items() if path.parent.resolve() != self.folder.resolve()]

    def is_supported(self, phase: str) -> bool:
        return phase not in self.unsupported_phases

    def model_for(self, role: str) -> str | None:
        """The model id configured for ``role``, or None for the current chat model."""
        return self.chain.role_models.get(role)


# --- placeholders --------------------------------------------------------------------------------------------------


def placeholders(text: str) -> set[str]:
    """The ``{identifier}`` placeholders in ``text``."""
    return set(_PLACEHOLDER_RE.findall(text))


def fill_placeholders(text: str, values: Mapping[str, str]) -> str:
    """Replace the placeholders named in ``values``; leave every other brace as it is. Never raises.

    One regex pass: text inserted for a placeholder is never scanned again, so a model's reply that contains
    ``{task}`` is not expanded.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return str(values[name]) if name in values else match.group(0)

    return _PLACEHOLDER_RE.sub(replace, text)


# --- folders -------------------------------------------------------------------------------------------------------


def available_configs(assets_dir: Path = DEFAULT_ASSETS_DIR) -> list[str]:
    """Names of the configuration folders under ``assets_dir`` (folders with at least one config file)."""
    if not assets_dir.is_dir():
        return []
    return sorted(
        (p.name for p in assets_dir.iterdir() if p.is_dir() and any((p / f).is_file() for f in CONFIG_FILES)),
        key=str.lower,
    )


def _looks_like_path(config: str) -> bool:
    return any(sep in config for sep in ("/", "\\")) or config.startswith((".", "~")) or Path(config).is_absolute()


def resolve_config_folder(config: str | Path, assets_dir: Path = DEFAULT_ASSETS_DIR) -> Path:
    """The folder ``config`` designates: a name under ``assets_dir``, or a folder path used as is."""
    if isinstance(config, Path) or _looks_like_path(config):
        folder = Path(config).expanduser()
        # A user pointing at one of the files (tab completion does that) means its folder.
        if folder.is_file() and folder.name in CONFIG_FILES:
            folder = folder.parent
        if folder.is_dir():
            return folder.resolve()
        raise CompanyConfigNotFoundError(str(config), str(folder), available_configs(assets_dir))

    candidate = assets_dir / config
    if candidate.is_dir():
        return candidate.resolve()
    # Names are typed by hand in a CLI: "default" should find "Default" on case-sensitive file systems too.
    for name in available_configs(assets_dir):
        if name.lower() == config.lower():
            return (assets_dir / name).resolve()
    # A bare folder name relative to the working directory, as ChatDev users sometimes pass.
    if Path(config).is_dir():
        return Path(config).resolve()
    raise CompanyConfigNotFoundError(config, str(candidate), available_configs(assets_dir))


def _read_json(path: Path) -> Any:
    try:
        # utf-8-sig: Windows editors like to add a BOM, which json.loads rejects.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CompanyConfigFileError(str(path), f"it is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise CompanyConfigFileError(str(path), f"it cannot be read ({exc.strerror or exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompanyConfigFileError(str(path), f"invalid JSON ({exc.msg})", exc.lineno, exc.colno) from exc


# --- parsing -------------------------------------------------------------------------------------------------------


def _bad(source: Path, where: str, detail: str) -> CompanyConfigError:
    return CompanyConfigError(f"{source}: {where} {detail}.")


def _as_bool(value: Any, source: Path, where: str) -> bool:
    # ChatDev writes booleans as strings ("True"/"False") and tests them with .lower() == "true"; people editing by
    # hand also write real JSON booleans. Anything else is a typo that must not silently mean False.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise _bad(source, where, f"must be true or false (\"True\"/\"False\" also work), not {value!r}")


def _as_int(value: Any, source: Path, where: str, *, minimum: int | None = None) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if number is None:
        raise _bad(source, where, f"must be a whole number, not {value!r}")
    if minimum is not None and number < minimum:
        raise _bad(source, where, f"must be at least {minimum}, not {number}")
    return number


def _as_text(value: Any, source: Path, where: str) -> str:
    """A prompt: ChatDev writes a list of lines; a single string is accepted too."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        return "\n".join(value)
    raise _bad(source, where, "must be a list of lines (strings) or one string")


def _as_name(value: Any, source: Path, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(source, where, f"must be a non-empty name, not {value!r}")
    return value.strip()


def _phase_type(raw: Mapping[str, Any], source: Path, where: str) -> str:
    value = raw.get("phaseType")
    if value is None:
        # Older or hand-written files leave phaseType out; a Composition list says what the step is.
        return COMPOSED_PHASE if "Composition" in raw else SIMPLE_PHASE
    if isinstance(value, str):
        for known in (SIMPLE_PHASE, COMPOSED_PHASE):
            if value.strip().lower() == known.lower():
                return known
    raise _bad(source, f"{where} phaseType", f"must be {SIMPLE_PHASE!r} or {COMPOSED_PHASE!r}, not {value!r}")


_SIMPLE_KEYS = frozenset({"phase", "phaseType", "max_turn_step", "need_reflect", "max_tokens"})
_COMPOSED_KEYS = frozenset({"phase", "phaseType", "cycleNum", "Composition", "max_tokens"})


def _optional_tokens(raw: Mapping[str, Any], source: Path, where: str) -> int | None:
    if raw.get("max_tokens") is None:
        return None
    return _as_int(raw["max_tokens"], source, f"{where} max_tokens", minimum=1)


def _parse_simple(raw: Mapping[str, Any], source: Path, where: str, inherited_tokens: int | None) -> SimpleStep:
    tokens = _optional_tokens(raw, source, where)
    return SimpleStep(
        phase=_as_name(raw.get("phase"), source, f"{where} phase"),
        phase_type=SIMPLE_PHASE,
        max_turn_step=_as_int(raw.get("max_turn_step", -1), source, f"{where} max_turn_step"),
        need_reflect=_as_bool(raw.get("need_reflect", False), source, f"{where} need_reflect"),
        max_tokens=tokens if tokens is not None else inherited_tokens,
        extra={k: v for k, v in raw.items() if k not in _SIMPLE_KEYS},
    )


def _parse_step(raw: Any, source: Path, where: str) -> ChainStep:
    if not isinstance(raw, dict):
        raise _bad(source, where, "must be an object with a \"phase\" key")
    if _phase_type(raw, source, where) == SIMPLE_PHASE:
        return _parse_simple(raw, source, where, None)

    name = _as_name(raw.get("phase"), source, f"{where} phase")
    tokens = _optional_tokens(raw, source, where)
    composition_raw = raw.get("Composition")
    if not isinstance(composition_raw, list) or not composition_raw:
        raise _bad(source, f"{where} ({name}) Composition", "must be a non-empty list of simple phases")
    composition: list[SimpleStep] = []
    for index, inner in enumerate(composition_raw):
        inner_where = f"{where} ({name}) Composition[{index}]"
        if not isinstance(inner, dict):
            raise _bad(source, inner_where, "must be an object with a \"phase\" key")
        if _phase_type(inner, source, inner_where) != SIMPLE_PHASE:
            # ChatDev's ComposedPhase only runs SimplePhases; nesting would need a loop policy nobody defined.
            raise _bad(source, inner_where, "is a ComposedPhase; a composition may only hold simple phases")
        composition.append(_parse_simple(inner, source, inner_where, tokens))
    return ComposedStep(
        phase=name,
        cycle_num=_as_int(raw.get("cycleNum", 1), source, f"{where} ({name}) cycleNum", minimum=1),
        composition=composition,
        phase_type=COMPOSED_PHASE,
        max_tokens=tokens,
        extra={k: v for k, v in raw.items() if k not in _COMPOSED_KEYS},
    )


_BOOL_OPTIONS = (
    "clear_structure",
    "gui_design",
    "git_management",
    "web_spider",
    "self_improve",
    "incremental_develop",
    "with_memory",
)
_CHAIN_KEYS = frozenset({"chain", "recruitments", "background_prompt", "role_models", *_BOOL_OPTIONS})


def parse_chat_chain(data: Any, source: Path) -> ChatChainConfig:
    """A ChatChainConfig.json's content (already decoded) as a ChatChainConfig; ``source`` is named in errors."""
    if not isinstance(data, dict):
        raise _bad(source, "the file", "must hold a JSON object with a \"chain\" list")
    chain_raw = data.get("chain")
    if not isinstance(chain_raw, list) or not chain_raw:
        raise _bad(source, "\"chain\"", "must be a non-empty list of phases")
    chain = [_parse_step(raw, source, f"chain[{index}]") for index, raw in enumerate(chain_raw)]

    recruitments_raw = data.get("recruitments", [])
    if not isinstance(recruitments_raw, list):
        raise _bad(source, "\"recruitments\"", "must be a list of role names")
    recruitments = [_as_name(r, source, f"recruitments[{i}]") for i, r in enumerate(recruitments_raw)]

    role_models_raw = data.get("role_models") or {}
    if not isinstance(role_models_raw, dict):
        raise _bad(source, "\"role_models\"", "must map role names to model ids")
    role_models = {
        _as_name(role, source, "a role_models key"): _as_name(model, source, f"role_models[{role!r}]")
        for role, model in role_models_raw.items()
    }

    background = data.get("background_prompt", "")
    options = {
        key: _as_bool(data[key], source, f"\"{key}\"") for key in _BOOL_OPTIONS if key in data
    }
    return ChatChainConfig(
        chain=chain,
        recruitments=recruitments,
        background_prompt=_as_text(background, source, "\"background_prompt\""),
        role_models=role_models,
        extra={k: v for k, v in data.items() if k not in _CHAIN_KEYS},
        **options,
    )


def parse_phase_config(data: Any, source: Path) -> dict[str, PhaseSpec]:
    if not isinstance(data, dict):
        raise _bad(source, "the file", "must hold a JSON object mapping phase names to phases")
    phases: dict[str, PhaseSpec] = {}
    for name, raw in data.items():
        where = f"phase {name!r}"
        if not isinstance(raw, dict):
            raise _bad(source, where, "must be an object with assistant_role_name, user_role_name and phase_prompt")
        phases[name] = PhaseSpec(
            name=name,
            assistant_role_name=_as_name(raw.get("assistant_role_name"), source, f"{where} assistant_role_name"),
            user_role_name=_as_name(raw.get("user_role_name"), source, f"{where} user_role_name"),
            phase_prompt=_as_text(raw.get("phase_prompt"), source, f"{where} phase_prompt"),
            extra={k: v for k, v in raw.items() if k not in ("assistant_role_name", "user_role_name", "phase_prompt")},
        )
    return phases


def parse_role_config(data: Any, source: Path) -> dict[str, RoleSpec]:
    if not isinstance(data, dict):
        raise _bad(source, "the file", "must hold a JSON object mapping role names to prompts")
    return {name: RoleSpec(name=name, prompt=_as_text(raw, source, f"role {name!r}")) for name, raw in data.items()}


# --- loading -------------------------------------------------------------------------------------------------------


def _locate_files(folder: Path, default_folder: Path) -> dict[str, Path]:
    own = {name: folder / name for name in CONFIG_FILES if (folder / name).is_file()}
    if not own:
        raise CompanyConfigError(
            f"The folder {folder} holds none of {', '.join(CONFIG_FILES)}; it is not a company configuration."
        )
    sources: dict[str, Path] = {}
    for name in CONFIG_FILES:
        if name in own:
            sources[name] = own[name]
            continue
        fallback = default_folder / name
        if not fallback.is_file():
            raise CompanyConfigError(
                f"{folder} has no {name} and the Default configuration has none to inherit ({fallback} is missing)."
            )
        logger.info("Company config %s has no %s: inheriting %s", folder.name, name, fallback)
        sources[name] = fallback
    return sources


def _check_roles(
    chain: ChatChainConfig, phases: dict[str, PhaseSpec], roles: dict[str, RoleSpec], sources: dict[str, Path]
) -> None:
    role_file = str(sources[ROLE_FILE])
    known = sorted(roles)
    # Every phase of PhaseConfig, used by the chain or not: ChatDev builds them all at start and fails the same way,
    # and a typo in a phase kept for later is better found now than in the middle of a long run.
    for phase in phases.values():
        for role in (phase.assistant_role_name, phase.user_role_name):
            if role not in roles:
                raise UnknownCompanyRoleError(role, f"Phase {phase.name!r} of {sources[PHASE_FILE]}", role_file, known)
    for role in chain.role_models:
        if role not in roles:
            raise UnknownCompanyRoleError(role, f"\"role_models\" in {sources[CHAT_CHAIN_FILE]}", role_file, known)
    for role in chain.recruitments:
        # Only a warning: ChatDev recruits roles no phase uses (Chief Human Resource Officer) and never needs them.
        if role not in roles:
            logger.warning("Recruited role %r is not defined in %s; it takes part in no phase", role, role_file)


def _check_phases(
    chain: ChatChainConfig,
    phases: dict[str, PhaseSpec],
    sources: dict[str, Path],
    known_phase_classes: set[str] | None,
) -> list[str]:
    """Fail on phases nobody defines; return the ones defined in PhaseConfig that the app cannot run."""
    chain_file, phase_file = str(sources[CHAT_CHAIN_FILE]), str(sources[PHASE_FILE])
    unsupported: list[str] = []

    def mark(name: str) -> None:
        if name not in unsupported:
            unsupported.append(name)

    for parent, step in chain.steps():
        implemented = known_phase_classes is None or step.phase in known_phase_classes
        if step.phase not in phases:
            # A simple phase cannot run without its roles and prompt, even when a class of that name exists.
            detail = "no phase class of the app has that name either" if not implemented else "it has no entry there"
            raise UnknownCompanyPhaseError(
                step.phase,
                chain_file,
                f"{phase_file} does not define it ({detail}). Add an entry with assistant_role_name, user_role_name "
                f"and phase_prompt, or fix the name. Defined phases: {', '.join(sorted(phases))}.",
            )
        if parent is not None and known_phase_classes is not None and parent.phase not in known_phase_classes:
            # ChatDev never lists composed phases in PhaseConfig: their composition is what defines them, so an
            # unknown composed class (Art) is skipped as a whole rather than refused.
            mark(parent.phase)
        if not implemented:
            mark(step.phase)
    for name in unsupported:
        logger.info("Phase %s of %s is not implemented by Hearth; it will be skipped", name, chain_file)
    return unsupported


def _warn_unknown_placeholders(phases: dict[str, PhaseSpec], roles: dict[str, RoleSpec]) -> None:
    # Not an error: an unknown placeholder stays visible in the prompt, which a model copes with, and a user's
    # custom phase class may fill names we have never heard of.
    texts = [(f"phase {p.name}", p.phase_prompt) for p in phases.values()]
    texts += [(f"role {r.name}", r.prompt) for r in roles.values()]
    for owner, text in texts:
        unknown = placeholders(text) - KNOWN_PLACEHOLDERS.keys()
        if unknown:
            logger.warning("The prompt of %s uses placeholders no built-in phase fills: %s", owner, sorted(unknown))


def load_company_config(
    config: str | Path,
    *,
    assets_dir: Path = DEFAULT_ASSETS_DIR,
    known_phase_classes: set[str] | None = None,
) -> CompanyConfig:
    """Load a company configuration by name (a folder under ``assets_dir``) or by folder path.

    Files missing from the folder are inherited from ``assets_dir/Default``. With ``known_phase_classes`` (the names
    of the phase classes the app implements), phases defined in PhaseConfig but without a class are listed in
    ``unsupported_phases`` instead of failing. Raises ``CompanyConfigError`` (or a subclass) on any problem.
    """
    folder = resolve_config_folder(config, assets_dir)
    sources = _locate_files(folder, assets_dir / DEFAULT_CONFIG_NAME)

    chain = parse_chat_chain(_read_json(sources[CHAT_CHAIN_FILE]), sources[CHAT_CHAIN_FILE])
    phases = parse_phase_config(_read_json(sources[PHASE_FILE]), sources[PHASE_FILE])
    roles = parse_role_config(_read_json(sources[ROLE_FILE]), sources[ROLE_FILE])

    _check_roles(chain, phases, roles, sources)
    unsupported = _check_phases(chain, phases, sources, known_phase_classes)
    _warn_unknown_placeholders(phases, roles)

    loaded = CompanyConfig(
        name=folder.name,
        folder=folder,
        chain=chain,
        phases=phases,
        roles=roles,
        sources=sources,
        unsupported_phases=unsupported,
    )
    logger.info(
        "Loaded company config %s from %s (%d steps; inherited: %s)",
        loaded.name,
        folder,
        len(chain.chain),
        ", ".join(loaded.inherited_files) or "nothing",
    )
    return loaded
