"""Company configurations: ours load, ChatDev's load unchanged (with inheritance), and bad ones fail clearly."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from src.errors import (
    CompanyConfigError,
    CompanyConfigFileError,
    CompanyConfigNotFoundError,
    UnknownCompanyPhaseError,
    UnknownCompanyRoleError,
)
from src.workflows.company.config import (
    CHAT_CHAIN_FILE,
    CONFIG_FILES,
    DEFAULT_ASSETS_DIR,
    KNOWN_PLACEHOLDERS,
    PHASE_FILE,
    ROLE_FILE,
    ComposedStep,
    SimpleStep,
    available_configs,
    fill_placeholders,
    load_company_config,
    placeholders,
)

# ChatDev's configurations are Apache-2.0 test data kept outside the project (../shared/compat); they are only read.
COMPAT_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "compat"
CHATDEV_DIR = COMPAT_DIR / "chatdev-CompanyConfig"
CHATDEV_CONFIGS = ("Default", "Human", "Art", "Incremental")

needs_chatdev = pytest.mark.skipif(not CHATDEV_DIR.is_dir(), reason=f"ChatDev test data not found in {CHATDEV_DIR}")

OUR_CONFIGS = ("Default", "Human", "AutoCoder")


def _our_default_phase_names() -> set[str]:
    return load_company_config("Default").chain.phase_names()


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _minimal_chain(*phases: str, **options: Any) -> dict[str, Any]:
    return {"chain": [{"phase": p, "phaseType": "SimplePhase", "max_turn_step": 1, "need_reflect": "False"} for p in phases],
            **options}


# --- our configurations --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OUR_CONFIGS)
def test_our_configs_load(name: str) -> None:
    config = load_company_config(name)
    assert config.name == name
    assert config.folder == (DEFAULT_ASSETS_DIR / name).resolve()
    assert set(config.sources) == set(CONFIG_FILES)
    assert config.unsupported_phases == []
    for _, step in config.chain.steps():
        assert step.phase in config.phases
        # Small turn limits: local models are slow.
        assert 1 <= step.max_turn_step <= 3
        assert step.max_tokens is not None and step.max_tokens > 0
    for role in config.chain.recruitments:
        assert role in config.roles


def test_our_default_has_the_chatdev_chain_shape() -> None:
    config = load_company_config("Default")
    assert config.inherited_files == []
    steps = config.chain.chain
    assert [s.phase for s in steps] == [
        "DemandAnalysis", "LanguageChoose", "Coding", "CodeCompleteAll", "CodeReview", "Test", "EnvironmentDoc", "Manual",
    ]
    review = steps[4]
    assert isinstance(review, ComposedStep)
    assert [s.phase for s in review.composition] == ["CodeReviewComment", "CodeReviewModification"]
    test = steps[5]
    assert isinstance(test, ComposedStep)
    assert [s.phase for s in test.composition] == ["TestErrorSummary", "TestModification"]
    assert config.chain.gui_design is False and config.chain.clear_structure is True
    assert config.chain.role_models == {} and config.model_for("Programmer") is None
    assert set(config.roles) >= {
        "Chief Executive Officer", "Chief Product Officer", "Chief Technology Officer", "Programmer", "Code Reviewer",
        "Software Test Engineer", "Counselor",
    }


def test_our_human_adds_a_human_review_and_keeps_every_default_phase() -> None:
    default, human = load_company_config("Default"), load_company_config("Human")
    # Files are inherited whole, so Human's own PhaseConfig must keep every phase of Default's.
    assert set(human.phases) == set(default.phases) | {"CodeReviewHuman"}
    assert human.inherited_files == [ROLE_FILE]
    assert human.sources[ROLE_FILE] == default.sources[ROLE_FILE]
    interaction = next(s for s in human.chain.chain if s.phase == "HumanAgentInteraction")
    assert isinstance(interaction, ComposedStep)
    assert [s.phase for s in interaction.composition] == ["CodeReviewHuman"]


def test_autocoder_chain_and_roles() -> None:
    config = load_company_config("AutoCoder")
    assert [s.phase for s in config.chain.chain] == ["Planning", "Developing", "TestWriting", "Testing"]
    developing = config.chain.chain[1]
    assert isinstance(developing, ComposedStep) and developing.cycle_num > 1
    assert set(config.roles) == {"Planner", "Developer", "Tester"}
    assert config.chain.recruitments == ["Planner", "Developer", "Tester"]


@pytest.mark.parametrize("name", OUR_CONFIGS)
def test_our_prompts_end_with_info_and_use_known_placeholders(name: str) -> None:
    config = load_company_config(name)
    for phase in config.phases.values():
        assert "<INFO>" in phase.phase_prompt, phase.name
        assert placeholders(phase.phase_prompt) <= KNOWN_PLACEHOLDERS.keys(), phase.name
    for role in config.roles.values():
        assert placeholders(role.prompt) <= KNOWN_PLACEHOLDERS.keys(), role.name


def test_names_are_found_case_insensitively_and_listed() -> None:
    assert {"AutoCoder", "Default", "Human"} <= set(available_configs())
    assert load_company_config("default").name == "Default"


# --- ChatDev's configurations --------------------------------------------------------------------------------------


@needs_chatdev
@pytest.mark.parametrize("name", CHATDEV_CONFIGS)
def test_chatdev_configs_load_unchanged(name: str) -> None:
    folder = CHATDEV_DIR / name
    config = load_company_config(folder)
    assert config.name == name and config.folder == folder.resolve()
    raw_chain = json.loads((folder / CHAT_CHAIN_FILE).read_text(encoding="utf-8"))
    assert [s.phase for s in config.chain.chain] == [s["phase"] for s in raw_chain["chain"]]
    assert config.chain.background_prompt == raw_chain["background_prompt"]
    assert config.chain.recruitments == raw_chain["recruitments"]

    own = {f for f in CONFIG_FILES if (folder / f).is_file()}
    for file_name in CONFIG_FILES:
        expected = folder / file_name if file_name in own else DEFAULT_ASSETS_DIR / "Default" / file_name
        assert config.sources[file_name].resolve() == expected.resolve()
    assert set(config.inherited_files) == set(CONFIG_FILES) - own


@needs_chatdev
def test_chatdev_default_content_is_parsed_faithfully() -> None:
    folder = CHATDEV_DIR / "Default"
    config = load_company_config(folder)
    assert config.inherited_files == []

    demand = config.chain.chain[0]
    assert isinstance(demand, SimpleStep)
    assert demand.max_turn_step == -1 and demand.turn_limit(default=3) == 3  # -1: "use the default"
    assert demand.need_reflect is True  # from the string "True"
    coding = config.chain.chain[2]
    assert isinstance(coding, SimpleStep) and coding.need_reflect is False and coding.turn_limit() == 1
    complete_all = config.chain.chain[3]
    assert isinstance(complete_all, ComposedStep)
    assert complete_all.cycle_num == 10 and [s.phase for s in complete_all.composition] == ["CodeComplete"]
    assert config.chain.clear_structure is True and config.chain.gui_design is True
    assert config.chain.git_management is False and config.chain.incremental_develop is False
    assert config.chain.extra == {}

    raw_phases = json.loads((folder / PHASE_FILE).read_text(encoding="utf-8"))
    assert set(config.phases) == set(raw_phases)
    coding_phase = config.phases["Coding"]
    assert coding_phase.assistant_role_name == "Programmer"
    assert coding_phase.user_role_name == "Chief Technology Officer"
    assert coding_phase.phase_prompt == "\n".join(raw_phases["Coding"]["phase_prompt"])
    raw_roles = json.loads((folder / ROLE_FILE).read_text(encoding="utf-8"))
    assert config.roles["Programmer"].prompt == "\n".join(raw_roles["Programmer"])


@needs_chatdev
def test_chatdev_incremental_reads_its_option() -> None:
    config = load_company_config(CHATDEV_DIR / "Incremental")
    assert config.chain.incremental_develop is True
    assert "Coding" not in {s.phase for s in config.chain.chain}


@needs_chatdev
def test_chatdev_art_reports_image_phases_as_unsupported(caplog: pytest.LogCaptureFixture) -> None:
    known = _our_default_phase_names()
    with caplog.at_level(logging.INFO, logger="src.workflows.company.config"):
        config = load_company_config(CHATDEV_DIR / "Art", known_phase_classes=known)
    assert config.unsupported_phases == ["Art", "ArtDesign", "ArtIntegration"]
    assert not config.is_supported("ArtDesign") and config.is_supported("Coding")
    # Inheritance is logged so the user knows whose phases and roles ran.
    assert sum("inheriting" in r.getMessage() for r in caplog.records) == 2
    assert any("ArtDesign" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


@needs_chatdev
def test_chatdev_human_interaction_unsupported_without_its_class() -> None:
    known = _our_default_phase_names()
    config = load_company_config(CHATDEV_DIR / "Human", known_phase_classes=known)
    assert config.unsupported_phases == ["HumanAgentInteraction", "CodeReviewHuman"]
    config = load_company_config(
        CHATDEV_DIR / "Human", known_phase_classes=known | {"HumanAgentInteraction", "CodeReviewHuman"}
    )
    assert config.unsupported_phases == []


@needs_chatdev
def test_every_chatdev_placeholder_is_known_and_fillable() -> None:
    found: set[str] = set()
    texts: list[str] = []
    for name in CHATDEV_CONFIGS:
        config = load_company_config(CHATDEV_DIR / name)
        texts += [p.phase_prompt for p in config.phases.values()] + [r.prompt for r in config.roles.values()]
    for text in texts:
        found |= placeholders(text)
    assert found >= {"task", "modality", "language", "codes", "ideas", "test_reports", "error_summary", "comments",
                     "gui", "unimplemented_file", "chatdev_prompt", "assistant_role", "images", "requirements",
                     "description"}
    assert found <= KNOWN_PLACEHOLDERS.keys()

    chatdev = load_company_config(CHATDEV_DIR / "Default")
    prompt = chatdev.phases["CodeComplete"].phase_prompt
    values = {name: f"<{name.upper()}>" for name in placeholders(prompt)}
    filled = fill_placeholders(prompt, values)
    assert placeholders(filled) == set()
    assert '"<UNIMPLEMENTED_FILE>"' in filled and "As the <ASSISTANT_ROLE>," in filled
    role = fill_placeholders(chatdev.roles["Programmer"].prompt, {"chatdev_prompt": "BG", "task": "make a clock"})
    assert role.startswith("BG\n") and "make a clock" in role


# --- placeholders --------------------------------------------------------------------------------------------------


def test_fill_leaves_unknown_placeholders_and_other_braces_intact() -> None:
    text = 'Task: {task}. Keep {unknown}, {"a": 1}, { spaced }, {}, {{task}}, f"{x!r}" and def f(): return {1: 2}'
    filled = fill_placeholders(text, {"task": "T"})
    assert filled == 'Task: T. Keep {unknown}, {"a": 1}, { spaced }, {}, {{task}}, f"{x!r}" and def f(): return {1: 2}'
    assert placeholders(text) == {"task", "unknown"}


def test_fill_does_not_expand_placeholders_inside_values() -> None:
    # A model's code can contain "{task}"; filling it in must not pull the task (or anything else) into it.
    filled = fill_placeholders("Code:\n{codes}\nTask: {task}", {"codes": "print(f'{task}')", "task": "clock"})
    assert filled == "Code:\nprint(f'{task}')\nTask: clock"


def test_fill_never_raises_on_odd_text() -> None:
    for text in ("", "{", "}", "{{", "}{", "{task", "task}", "{0}", "{a.b}", "{a[0]}", "%s {task}"):
        assert isinstance(fill_placeholders(text, {"task": "x"}), str)
    assert fill_placeholders("{task", {"task": "x"}) == "{task"


# --- parsing details -----------------------------------------------------------------------------------------------


def _our_default_copy(tmp_path: Path) -> Path:
    """A private assets dir whose Default is ours, so a test can add broken folders beside it."""
    assets = tmp_path / "company"
    shutil.copytree(DEFAULT_ASSETS_DIR / "Default", assets / "Default")
    return assets


def test_string_and_real_booleans_string_numbers_and_unknown_keys(tmp_path: Path) -> None:
    assets = _our_default_copy(tmp_path)
    chain = {
        "chain": [
            {"phase": "DemandAnalysis", "phaseType": "SimplePhase", "max_turn_step": "2", "need_reflect": "TRUE",
             "colour": "blue"},
            {"phase": "Coding", "max_turn_step": 1, "need_reflect": False},  # phaseType left out
            {"phase": "CodeReview", "phaseType": "composedphase", "cycleNum": "4", "max_tokens": 300, "Composition": [
                {"phase": "CodeReviewComment", "need_reflect": "false"},
                {"phase": "CodeReviewModification", "max_tokens": 900},
            ]},
        ],
        "clear_structure": "false",
        "gui_design": True,
        "with_memory": "False",
        "future_option": {"x": 1},
        "role_models": {"Programmer": "qwen2.5-0.5b"},
    }
    _write_json(assets / "Mine" / CHAT_CHAIN_FILE, chain)
    config = load_company_config("Mine", assets_dir=assets)

    first, second, third = config.chain.chain
    assert isinstance(first, SimpleStep) and first.max_turn_step == 2 and first.need_reflect is True
    assert first.extra == {"colour": "blue"}
    assert isinstance(second, SimpleStep) and second.max_turn_step == 1 and second.need_reflect is False
    assert isinstance(third, ComposedStep) and third.cycle_num == 4
    assert [s.max_tokens for s in third.composition] == [300, 900]  # the composed step's limit is the fallback
    assert third.composition[0].max_turn_step == -1
    assert config.chain.clear_structure is False and config.chain.gui_design is True
    assert config.chain.with_memory is False and config.chain.git_management is False
    assert config.chain.extra == {"future_option": {"x": 1}}
    assert config.model_for("Programmer") == "qwen2.5-0.5b" and config.model_for("Code Reviewer") is None
    assert config.inherited_files == [PHASE_FILE, ROLE_FILE]


def test_bad_boolean_is_an_error(tmp_path: Path) -> None:
    assets = _our_default_copy(tmp_path)
    _write_json(assets / "Mine" / CHAT_CHAIN_FILE, {**_minimal_chain("Coding"), "gui_design": "maybe"})
    with pytest.raises(CompanyConfigError, match=r"gui_design.*'maybe'"):
        load_company_config("Mine", assets_dir=assets)


def test_nested_composed_phase_is_an_error(tmp_path: Path) -> None:
    assets = _our_default_copy(tmp_path)
    inner = {"phase": "Inner", "phaseType": "ComposedPhase", "cycleNum": 1, "Composition": [{"phase": "Coding"}]}
    _write_json(assets / "Mine" / CHAT_CHAIN_FILE,
                {"chain": [{"phase": "Outer", "phaseType": "ComposedPhase", "cycleNum": 1, "Composition": [inner]}]})
    with pytest.raises(CompanyConfigError, match="only hold simple phases"):
        load_company_config("Mine", assets_dir=assets)


# --- errors --------------------------------------------------------------------------------------------------------


def test_missing_folder_lists_available_configs(tmp_path: Path) -> None:
    with pytest.raises(CompanyConfigNotFoundError) as caught:
        load_company_config("NoSuchCompany")
    message = str(caught.value)
    assert "NoSuchCompany" in message
    for name in OUR_CONFIGS:
        assert name in message
    with pytest.raises(CompanyConfigNotFoundError, match="Default"):
        load_company_config(tmp_path / "nowhere")


def test_folder_without_config_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompanyConfigError, match="none of"):
        load_company_config(tmp_path / "empty")


def test_malformed_json_names_the_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "Broken"
    folder.mkdir()
    (folder / PHASE_FILE).write_text('{\n  "Coding": {\n    "assistant_role_name": "Programmer",,\n  }\n}\n')
    with pytest.raises(CompanyConfigFileError) as caught:
        load_company_config(folder)
    assert caught.value.path == str(folder / PHASE_FILE)
    assert caught.value.line == 3
    assert f"{folder / PHASE_FILE}, line 3" in str(caught.value)


def test_unknown_role_in_a_phase(tmp_path: Path) -> None:
    folder = tmp_path / "Roles"
    phases = json.loads((DEFAULT_ASSETS_DIR / "Default" / PHASE_FILE).read_text(encoding="utf-8"))
    phases["Coding"]["assistant_role_name"] = "Wizard"
    _write_json(folder / PHASE_FILE, phases)
    with pytest.raises(UnknownCompanyRoleError) as caught:
        load_company_config(folder)
    message = str(caught.value)
    assert "'Wizard'" in message and "'Coding'" in message and "Programmer" in message
    assert caught.value.role == "Wizard"


def test_unknown_role_in_role_models(tmp_path: Path) -> None:
    _write_json(tmp_path / "M" / CHAT_CHAIN_FILE, {**_minimal_chain("Coding"), "role_models": {"Wizard": "x"}})
    with pytest.raises(UnknownCompanyRoleError, match="role_models"):
        load_company_config(tmp_path / "M")


def test_unknown_phase_is_an_error_with_or_without_known_classes(tmp_path: Path) -> None:
    _write_json(tmp_path / "P" / CHAT_CHAIN_FILE, _minimal_chain("DemandAnalysis", "Dancing"))
    with pytest.raises(UnknownCompanyPhaseError, match="'Dancing'") as caught:
        load_company_config(tmp_path / "P")
    assert "DemandAnalysis" in str(caught.value)  # the defined phases are listed
    with pytest.raises(UnknownCompanyPhaseError, match="no phase class"):
        load_company_config(tmp_path / "P", known_phase_classes=_our_default_phase_names())


def test_simple_phase_without_phase_config_entry_fails_even_if_a_class_exists(tmp_path: Path) -> None:
    # A class alone cannot run a simple phase: its roles and prompt come from PhaseConfig.json.
    _write_json(tmp_path / "P" / CHAT_CHAIN_FILE, _minimal_chain("Coding", "Translate"))
    with pytest.raises(UnknownCompanyPhaseError, match="has no entry"):
        load_company_config(tmp_path / "P", known_phase_classes={"Coding", "Translate"})


# --- own words -----------------------------------------------------------------------------------------------------


def _prompt_lines(folder: Path) -> set[str]:
    lines: set[str] = set()
    for path in folder.rglob("*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if path.name == PHASE_FILE:
            for phase in data.values():
                lines.update(phase["phase_prompt"])
        elif path.name == ROLE_FILE:
            for role in data.values():
                lines.update(role)
        elif path.name == CHAT_CHAIN_FILE:
            lines.add(data.get("background_prompt", ""))
    return {line.strip() for line in lines if len(line.strip()) > 30}


@needs_chatdev
def test_no_prompt_line_of_ours_copies_chatdev() -> None:
    ours, theirs = _prompt_lines(DEFAULT_ASSETS_DIR), _prompt_lines(CHATDEV_DIR)
    assert ours and theirs
    assert ours.isdisjoint(theirs), sorted(ours & theirs)
