"""The agent company's runner: orchestration only (phase order, cycles, files, notices, cancel, role mapping).

The model is a scripted fake (``PhaseScriptedFakeModel``) that answers by recognising the phase from the prompt
it is sent; the programs it "writes" are tiny and really run in the sandbox. Model quality is not tested here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from src.errors import InvalidParameterError
from src.utils.generation import (
    FINISH_CANCELLED,
    FINISH_STOP,
    ChatMessage,
    GenerationParams,
    GenerationStats,
    TextStream,
)
from src.workflows.company.config import load_company_config
from src.workflows.company.phases import (
    COMPOSED_PHASES,
    PHASES,
    find_conclusion,
    find_unimplemented,
    is_unimplemented,
    plan_from_reply,
    pytest_counts,
    requirements_from_reply,
)
from src.workflows.company.runner import CompanyEvent, CompanyResult, CompanyRun

REPO = Path(__file__).resolve().parents[2]
CHATDEV_CONFIGS = REPO.parent / "shared" / "compat" / "chatdev-CompanyConfig"
TASK = "Write a program that prints hello."

# (phase, markers): the first phase with a marker found in the prompt. Our prompts and ChatDev's both covered;
# the order matters where one prompt contains another's words (Manual mentions requirements).
PHASE_MARKERS: list[tuple[str, tuple[str, ...]]] = [
    ("Reflection", ("did not state its result",)),
    ("Reminder", ("has no conclusion line",)),
    ("Manual", ("manual.md",)),
    ("EnvironmentDoc", ("requirements.txt",)),
    ("CodeComplete", ("is not finished yet", "Unimplemented File:")),
    ("TestModification", ("Make the program start without errors", "Error Summary of Test Reports")),
    ("TestErrorSummary", ("failed when it was started", "summarize the bugs")),
    ("CodeReviewModification", ("Fix the code as the review asks", "Comments on Codes")),
    ("CodeReviewHuman", ("A person tried the program",)),
    ("CodeReviewComment", ("Read the code below", "highest priority")),
    ("Coding", ("first complete version", 'start with the "main" file')),
    ("LanguageChoose", ("Choose the programming language", "concrete programming language")),
    ("DemandAnalysis", ("kind of product", "product modality")),
    ("Planning", ("Plan a small Python program",)),
    ("Implementing", ("Write one file of the plan",)),
    ("TestWriting", ("Write automated tests",)),
    ("Testing", ("The tests failed",)),
]

HELLO = 'main.py\n```python\nprint("hello")\n```\n<INFO> Finished'
DEFAULT_REPLIES: dict[str, str | list[str]] = {
    "DemandAnalysis": "A small command line program is enough.\n<INFO> Application",
    "LanguageChoose": "Python has everything needed.\n<INFO> Python",
    "Coding": HELLO,
    "CodeComplete": HELLO,
    "CodeReviewComment": "<INFO> Finished",
    "CodeReviewModification": HELLO,
    "TestErrorSummary": "main.py fails.\n<INFO> main.py fails at start",
    "TestModification": HELLO,
    "EnvironmentDoc": "requirements.txt\n```text\nrandom\n```\n<INFO> Finished",
    "Manual": "manual.md\n```markdown\n# Hello\n\nRun it:\n\n    python main.py\n```\n<INFO> Finished",
    "CodeReviewHuman": HELLO,
    "Reflection": "<INFO> Application",
    "Reminder": "<INFO> Finished",
}


def detect_phase(messages: Sequence[ChatMessage]) -> str:
    last = messages[-1].content
    for phase, markers in PHASE_MARKERS:
        if any(marker in last for marker in markers):
            return phase
    return "Unknown"


class PhaseScriptedFakeModel:
    """A ChatModel fake that answers with scripted replies chosen by the phase recognised in the last prompt.

    A list of replies is used in order, its last one repeated; a callable gets the messages. Replies are streamed
    in large pieces so that a 50 MB reply is cheap, and the stream honours cancel() like a real one.
    """

    def __init__(
        self,
        replies: dict[str, str | list[str] | Callable[[Sequence[ChatMessage]], str]] | None = None,
        *,
        name: str = "phase-fake",
        on_piece: Callable[[int], None] | None = None,
        endless: bool = False,
    ) -> None:
        self.replies: dict[str, str | list[str] | Callable[[Sequence[ChatMessage]], str]] = dict(DEFAULT_REPLIES)
        self.replies.update(replies or {})
        self.name = name
        self.calls: list[tuple[str, list[ChatMessage], GenerationParams]] = []
        self.on_piece = on_piece
        self.endless = endless

    @property
    def model_name(self) -> str:
        return self.name

    def phases_called(self) -> list[str]:
        return [phase for phase, _, _ in self.calls]

    def prompts(self, phase: str) -> list[str]:
        return [messages[-1].content for called, messages, _ in self.calls if called == phase]

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams) -> TextStream:
        phase = detect_phase(messages)
        self.calls.append((phase, list(messages), params))
        script = self.replies.get(phase, "I have nothing to add.")
        if callable(script):
            reply = script(messages)
        elif isinstance(script, list):
            reply = script.pop(0) if len(script) > 1 else script[0]
        else:
            reply = script
        stream = TextStream()
        prompt_tokens = sum(len(m.content) for m in messages) // 4 + 1
        return stream.start(self._pieces(stream, reply, prompt_tokens))

    def _pieces(self, stream: TextStream, reply: str, prompt_tokens: int) -> Iterator[str]:
        sent: list[str] = []
        finish = FINISH_STOP
        try:
            index = 0
            while True:
                if stream.cancelled.is_set():
                    finish = FINISH_CANCELLED
                    return
                if self.endless:
                    piece = "more "
                    time.sleep(0.01)
                else:
                    piece = reply[index : index + (1 << 20)]
                    if not piece:
                        return
                    index += len(piece)
                sent.append(piece)
                if self.on_piece is not None:
                    self.on_piece(len(sent))
                yield piece
        finally:
            completion_tokens = len("".join(sent)) // 4
            stream.finish(self.name, finish, GenerationStats(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))


def start(model: object, tmp_path: Path, **kwargs: object) -> tuple[CompanyResult, list[CompanyEvent]]:
    events: list[CompanyEvent] = []
    options: dict[str, object] = {"warehouse_root": tmp_path / "WareHouse", "run_timeout_s": 3.0, "git": False}
    options.update(kwargs)
    run = CompanyRun(TASK, "Hello", model=model, on_event=events.append, **options)  # type: ignore[arg-type]
    result = run.run()
    return result, events


def phase_starts(events: list[CompanyEvent]) -> list[str]:
    return [event.phase for event in events if event.kind == "phase"]


def notices(events: list[CompanyEvent]) -> list[str]:
    return [event.text for event in events if event.kind == "notice"]


def write_chain(folder: Path, chain: list[dict[str, object]], **options: object) -> Path:
    folder.mkdir(parents=True)
    data = {"chain": chain, "recruitments": ["Chief Executive Officer", "Counselor", "Programmer"], **options}
    (folder / "ChatChainConfig.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def simple(phase: str, turns: int = 1, reflect: bool = False) -> dict[str, object]:
    return {"phase": phase, "phaseType": "SimplePhase", "max_turn_step": turns, "need_reflect": str(reflect)}


# --- small pieces ------------------------------------------------------------------------------------------------


def test_conclusion_is_the_last_info_line() -> None:
    assert find_conclusion("thinking\n<INFO> Python\n") == "Python"
    assert find_conclusion("<INFO> Web\nmore\n**<INFO> Application**") == "Application"
    assert find_conclusion("no conclusion here") is None


def test_unimplemented_files_are_found_with_ast() -> None:
    assert is_unimplemented("def f():\n    pass\n")
    assert is_unimplemented('def f():\n    """Doc."""\n    ...\n')
    assert is_unimplemented("def f():\n    raise NotImplementedError()\n")
    assert is_unimplemented("def f():\n    x = 1  # TODO finish\n    return x\n")
    assert not is_unimplemented("def f():\n    return 1\n")
    assert not is_unimplemented(
        "from abc import abstractmethod\nclass A:\n    @abstractmethod\n    def f(self):\n        pass\n"
    )
    assert not is_unimplemented("def broken(:\n")
    assert find_unimplemented({"a.py": "def f():\n    return 1\n", "b.py": "def g():\n    pass\n"}) == "b.py"


def test_requirements_and_plan_and_pytest_parsing() -> None:
    assert requirements_from_reply("requirements.txt\n```\nnumpy==1.26.4\ntkinter\nrandom\n```\n<INFO> Finished") == (
        "numpy==1.26.4\n"
    )
    tasks, how = plan_from_reply("main.py: the entry point\nutil.py: helpers\n<INFO> main.py, util.py", "", "t")
    assert how == "files" and [t.name for t in tasks] == ["util.py", "main.py"]
    assert plan_from_reply("no plan at all", "", "t")[1] == "fallback"
    assert pytest_counts("....\n1 failed, 3 passed in 0.1s\n") == (3, 1)
    assert pytest_counts("2 passed, 1 error in 0.2s") == (2, 1)


def test_every_phase_of_our_configs_and_chatdev_default_is_registered() -> None:
    known = set(PHASES) | set(COMPOSED_PHASES)
    for name in ("Default", "Human", "AutoCoder"):
        assert load_company_config(name).chain.phase_names() <= known, name
    if (CHATDEV_CONFIGS / "Default").is_dir():
        assert load_company_config(CHATDEV_CONFIGS / "Default").chain.phase_names() <= known


# --- the Default chain -------------------------------------------------------------------------------------------


def test_default_chain_end_to_end(tmp_path: Path) -> None:
    fake = PhaseScriptedFakeModel()
    has_git = shutil.which("git") is not None
    result, events = start(fake, tmp_path, git=True)

    assert phase_starts(events) == [
        "DemandAnalysis", "LanguageChoose", "Coding",  # CodeCompleteAll: nothing unimplemented, no cycle
        "CodeReviewComment",  # "<INFO> Finished": the review cycle breaks before the modification
        "TestErrorSummary",  # the program runs: the test cycle breaks without a model call
        "EnvironmentDoc", "Manual",
    ]  # fmt: skip
    assert fake.phases_called() == [
        "DemandAnalysis", "LanguageChoose", "Coding", "CodeReviewComment", "EnvironmentDoc", "Manual",
    ]  # fmt: skip
    coding_prompt = fake.prompts("Coding")[0]
    assert (
        TASK in coding_prompt and "Language: Python" in coding_prompt and "Product form: Application" in coding_prompt
    )
    for _, messages, params in fake.calls:
        assert params.temperature == 0.2 and params.max_new_tokens >= 1
        for message in messages:
            assert "{task}" not in message.content and "{chatdev_prompt}" not in message.content
    coding_system = next(m for p, m, _ in fake.calls if p == "Coding")[0]
    assert coding_system.role == "system" and "You are the Programmer" in coding_system.content

    folder = result.folder
    assert folder.parent == tmp_path / "WareHouse" and folder.name.startswith("Hello_DefaultOrganization_")
    assert (folder / "main.py").read_text() == 'print("hello")\n'
    assert result.ran_ok is True and "exited normally" in result.run_summary
    assert result.files == ["main.py"] and result.lines == 1
    assert (folder / "requirements.txt").read_text() == ""  # "random" is the standard library
    assert "python main.py" in (folder / "manual.md").read_text()
    assert (folder / "Hello.prompt").read_text().strip() == TASK
    for name in ("ChatChainConfig.json", "PhaseConfig.json", "RoleConfig.json"):
        assert (folder / name).read_bytes() == (REPO / "assets" / "company" / "Default" / name).read_bytes()
    meta = (folder / "meta.txt").read_text()
    for line in ("Task:\n" + TASK, "Config:", "Roster:", "Modality:\nApplication", "Language:\nPython",
                 "Code_Version:", "Proposed_images:\n0", "Quality_Files:", "Quality_Lines:\n1",
                 "Quality_Ran:\nyes", "Quality_Lint_Findings:", "Quality_Security_Findings:"):  # fmt: skip
        assert line in meta, line
    logs = list(folder.glob("*.log"))
    assert len(logs) == 1
    log = logs[0].read_text(encoding="utf-8")
    assert "[Coding] turn 1 | Programmer:" in log and "[Coding] turn 1 | Chief Technology Officer:" in log
    assert "--- a/main.py" in log and '+print("hello")' in log and "===== Summary =====" in log

    assert result.model_calls == len(fake.calls) == 6 and result.prompt_tokens > 0 and result.completion_tokens > 0
    assert result.utterances == 12 and not result.cancelled and result.lint_findings == 0
    assert result.security_findings == 0 and result.summary and events[-1].kind == "summary"
    assert any(e.kind == "code" and e.data["file"] == "main.py" for e in events)
    assert any(e.kind == "test" and e.data.get("ok") for e in events)

    if has_git:
        history = subprocess.run(
            ["git", "log", "--format=%s"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        assert history == ["Final Version", "Test #1 Finished", "Review #1 Finished", "Finish Coding"]


def test_completion_review_and_test_cycles(tmp_path: Path) -> None:
    stub = "main.py\n```python\ndef greet():\n    pass\n\ngreet()\n```\n<INFO> Finished"
    crashing = 'main.py\n```python\ndef greet():\n    raise RuntimeError("boom")\n\ngreet()\n```\n<INFO> Finished'
    fake = PhaseScriptedFakeModel(
        {
            "Coding": stub,
            "CodeComplete": crashing,
            "CodeReviewComment": ["greet() raises.\n<INFO> greet must print", "<INFO> Finished"],
            "CodeReviewModification": crashing,  # the fix does not fix: the test cycle has to
            "TestModification": 'main.py\n```python\ndef greet():\n    print("hello")\n\ngreet()\n```\n<INFO> Finished',
        }
    )
    result, events = start(fake, tmp_path)
    assert phase_starts(events) == [
        "DemandAnalysis", "LanguageChoose", "Coding",
        "CodeComplete",  # one cycle: the stub is written in full, nothing left unimplemented
        "CodeReviewComment", "CodeReviewModification", "CodeReviewComment",  # cycle 2 breaks on Finished
        "TestErrorSummary", "TestModification", "TestErrorSummary",  # cycle 2 breaks: the program runs
        "EnvironmentDoc", "Manual",
    ]  # fmt: skip
    assert "main.py" in fake.prompts("CodeComplete")[0]
    assert (
        "greet must print" in fake.prompts("CodeReviewModification")[0]
        or "greet() raises" in fake.prompts("CodeReviewModification")[0]
    )
    assert "RuntimeError" in fake.prompts("TestErrorSummary")[0]
    assert "main.py fails at start" in fake.prompts("TestModification")[0]
    assert result.ran_ok is True and "hello" in (result.folder / "main.py").read_text()


def test_a_phase_that_never_concludes_stops_at_its_turn_limit(tmp_path: Path) -> None:
    fake = PhaseScriptedFakeModel({"DemandAnalysis": "Let me think about it some more.", "Reminder": "Still thinking."})
    result, events = start(fake, tmp_path)
    # Default's DemandAnalysis has max_turn_step 2: the prompt, one reminder, then the fallback.
    assert fake.phases_called()[:2] == ["DemandAnalysis", "Reminder"]
    assert any("No <INFO> conclusion after 2 turn(s)" in text for text in notices(events))
    assert result.ran_ok is True and not result.cancelled and result.summary


def test_reflection_extracts_the_conclusion_when_asked(tmp_path: Path) -> None:
    config = write_chain(tmp_path / "cfg", [simple("DemandAnalysis", 1, reflect=True), simple("Coding")])
    fake = PhaseScriptedFakeModel({"DemandAnalysis": "A web page would be nice.", "Reflection": "<INFO> Website"})
    result, events = start(fake, tmp_path, config=config)
    assert fake.phases_called() == ["DemandAnalysis", "Reflection", "Coding"]
    reflection = next(m for p, m, _ in fake.calls if p == "Reflection")
    assert "Chief Executive Officer" in reflection[0].content and "A web page would be nice." in reflection[-1].content
    roles = {(e.phase, e.role) for e in events if e.kind == "utterance"}
    assert ("DemandAnalysis", "Counselor") in roles and ("DemandAnalysis", "Chief Executive Officer") in roles
    assert "Modality:\nWebsite" in (result.folder / "meta.txt").read_text()
    assert not any("No <INFO>" in text for text in notices(events))


def test_max_turns_overrides_every_step(tmp_path: Path) -> None:
    fake = PhaseScriptedFakeModel({"DemandAnalysis": "Hmm.", "Reminder": "Hmm again."})
    start(fake, tmp_path, max_turns=4, config=write_chain(tmp_path / "cfg", [simple("DemandAnalysis", 1)]))
    assert fake.phases_called() == ["DemandAnalysis", "Reminder", "Reminder", "Reminder"]


# --- safety ------------------------------------------------------------------------------------------------------


def test_hostile_file_names_huge_files_and_endless_programs(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    huge = 'data = "' + "a" * (50 * 1024 * 1024) + '"\n'
    reply = (
        "../../evil.py\n```python\nprint('escaped')\n```\n"
        f"{outside / 'abs_evil.py'}\n```python\nprint('absolute')\n```\n"
        f"big.py\n```python\n{huge}```\n"
        "meta.txt\n```text\nTask: overwritten\n```\n"
        "main.py\n```python\nwhile True:\n    pass\n```\n<INFO> Finished"
    )
    fake = PhaseScriptedFakeModel({"Coding": reply})
    started = time.monotonic()
    result, events = start(fake, tmp_path, run_timeout_s=2.0)
    elapsed = time.monotonic() - started

    texts = "\n".join(notices(events))
    assert "'../../evil.py'" in texts and "abs_evil.py" in texts and "big.py" in texts and "meta.txt" in texts
    assert not (tmp_path / "evil.py").exists() and not (tmp_path / "WareHouse" / "evil.py").exists()
    assert list(outside.iterdir()) == []
    assert not (result.folder / "big.py").exists()
    assert "Task:\n" + TASK in (result.folder / "meta.txt").read_text()
    assert result.files == ["main.py"]
    # A program still running at the timeout without a traceback "ran without crashing": the test cycle ends.
    assert result.ran_ok is True and "ran without crashing for" in result.run_summary
    assert phase_starts(events).count("TestErrorSummary") == 1
    log = next(result.folder.glob("*.log"))
    assert log.stat().st_size < 1024 * 1024  # the 50 MB reply is cut in the log
    assert elapsed < 40


def test_quality_counts_lint_and_security_findings(tmp_path: Path) -> None:
    risky = 'main.py\n```python\nimport os\n\nprint(eval("1 + 1"))\n```\n<INFO> Finished'
    result, _ = start(PhaseScriptedFakeModel({"Coding": risky}), tmp_path)
    assert result.lint_findings == 1  # F401: os imported but unused
    assert result.security_findings == 1  # B307: eval
    meta = (result.folder / "meta.txt").read_text()
    assert "Quality_Lint_Findings:\n1" in meta and "Quality_Security_Findings:\n1" in meta


def test_a_failing_phase_is_a_notice_and_the_run_goes_on(tmp_path: Path) -> None:
    def explode(messages: Sequence[ChatMessage]) -> str:
        raise RuntimeError("the model broke")

    fake = PhaseScriptedFakeModel({"LanguageChoose": explode})
    result, events = start(fake, tmp_path)
    assert any("the model broke" in text for text in notices(events))
    assert "Coding" in phase_starts(events) and result.ran_ok is True


# --- AutoCoder ---------------------------------------------------------------------------------------------------

PLAN = json.dumps(
    [
        {"name": "entry", "description": "print the sum", "depends_on": ["helpers"], "file": "main.py"},
        {"name": "helpers", "description": "add two numbers", "file": "util.py"},
    ]
)
UTIL = "util.py\n```python\ndef add(a, b):\n    return a + b\n```\n<INFO> Finished"
MAIN = "main.py\n```python\nfrom util import add\n\nprint(add(1, 2))\n```\n<INFO> Finished"
TESTS_ONE_FAILING = (
    "test_main.py\n```python\nfrom util import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n\n\n"
    "def test_wrong():\n    assert add(1, 1) == 3\n```\n<INFO> Finished"
)
TESTS_FIXED = TESTS_ONE_FAILING.replace("add(1, 1) == 3", "add(1, 1) == 2")


def implementing(messages: Sequence[ChatMessage]) -> str:
    return UTIL if "Write the whole file util.py" in messages[-1].content else MAIN


def test_autocoder_plans_implements_in_order_and_fixes_failing_tests(tmp_path: Path) -> None:
    fake = PhaseScriptedFakeModel(
        {
            "Planning": f"```json\n{PLAN}\n```\n<INFO> main.py, util.py",
            "Implementing": implementing,
            "TestWriting": TESTS_ONE_FAILING,
            "Testing": ["I looked at it.\n<INFO> Finished", TESTS_FIXED],  # the first answer fixes nothing
        }
    )
    result, events = start(fake, tmp_path, config="AutoCoder")
    implementing_prompts = fake.prompts("Implementing")
    assert len(implementing_prompts) == 2  # Developing stops once the plan is done (cycleNum is 5)
    assert "Write the whole file util.py" in implementing_prompts[0]
    assert "Write the whole file main.py" in implementing_prompts[1] and "def add" in implementing_prompts[1]
    testing_prompts = fake.prompts("Testing")
    assert len(testing_prompts) == 2 and "1 failed" in testing_prompts[0]
    assert (result.tests_passed, result.tests_failed) == (2, 0)
    assert result.files == ["main.py", "test_main.py", "util.py"] and result.ran_ok is True
    assert not (result.folder / "_hearth_run_tests.py").exists()
    pytest_reports = [e for e in events if e.kind == "test" and e.data.get("pytest")]
    assert [(e.data["passed"], e.data["failed"]) for e in pytest_reports] == [(1, 1), (1, 1), (2, 0)]


def test_autocoder_fix_loop_is_bounded(tmp_path: Path) -> None:
    fake = PhaseScriptedFakeModel(
        {
            "Planning": "main.py: the whole program\nutil.py: the helpers\n<INFO> main.py, util.py",
            "Implementing": implementing,
            "TestWriting": TESTS_ONE_FAILING,
            "Testing": "Nothing to change.\n<INFO> Finished",
        }
    )
    result, events = start(fake, tmp_path, config="AutoCoder")
    assert [e.data.get("file") for e in events if e.kind == "code"][:2] == ["util.py", "main.py"]
    assert len(fake.prompts("Testing")) == 3  # Testing's max_turn_step
    assert (result.tests_passed, result.tests_failed) == (1, 1)
    assert any("Tests still fail after 3" in text for text in notices(events))


def test_autocoder_bad_plan_falls_back_to_one_task(tmp_path: Path) -> None:
    standalone = MAIN.replace("from util import add\n\n", "def add(a, b):\n    return a + b\n\n\n")
    fake = PhaseScriptedFakeModel(
        {
            "Planning": "I would rather not plan.\n<INFO> nothing",
            "Implementing": standalone,
            "TestWriting": "No tests.\n<INFO> Finished",
        }
    )
    result, events = start(fake, tmp_path, config="AutoCoder")
    assert any("single task" in text for text in notices(events))
    assert len(fake.prompts("Implementing")) == 1 and result.ran_ok is True


# --- ChatDev's configurations ----------------------------------------------------------------------------------

chatdev = pytest.mark.skipif(not CHATDEV_CONFIGS.is_dir(), reason="ChatDev's CompanyConfig is not available")


@chatdev
def test_chatdev_default_config_runs(tmp_path: Path) -> None:
    fake = PhaseScriptedFakeModel()
    result, events = start(fake, tmp_path, config=CHATDEV_CONFIGS / "Default")
    assert "Unknown" not in fake.phases_called()
    assert phase_starts(events)[:3] == ["DemandAnalysis", "LanguageChoose", "Coding"]
    assert result.ran_ok is True and (result.folder / "manual.md").exists()
    assert (result.folder / "PhaseConfig.json").read_bytes() == (
        CHATDEV_CONFIGS / "Default" / "PhaseConfig.json"
    ).read_bytes()
    assert not any("not supported" in text for text in notices(events))


@chatdev
def test_chatdev_art_phases_are_skipped_with_a_notice(tmp_path: Path) -> None:
    fake = PhaseScriptedFakeModel()
    result, events = start(fake, tmp_path, config=CHATDEV_CONFIGS / "Art")
    assert any(e.kind == "notice" and e.phase == "Art" and "not supported" in e.text for e in events)
    assert "ArtDesign" not in phase_starts(events) and "Coding" in phase_starts(events)
    assert result.ran_ok is True


# --- human, cancel, role mapping -------------------------------------------------------------------------------


def test_human_comments_go_to_the_programmer_until_end(tmp_path: Path) -> None:
    answers = ["Please greet the world.", "end"]
    asked: list[str] = []

    def human(question: str) -> str:
        asked.append(question)
        return answers.pop(0)

    fake = PhaseScriptedFakeModel()
    _, events = start(fake, tmp_path, config="Human", human=human)
    assert len(asked) == 2 and "end" in asked[0]
    assert "Please greet the world." in fake.prompts("CodeReviewHuman")[0]
    assert phase_starts(events).count("CodeReviewHuman") == 2

    fake = PhaseScriptedFakeModel()
    _, events = start(fake, tmp_path, config="Human")
    assert any(e.phase == "CodeReviewHuman" and "skipped" in e.text for e in events if e.kind == "notice")
    assert phase_starts(events).count("CodeReviewHuman") == 1


def test_cancel_at_the_second_phase(tmp_path: Path) -> None:
    cancel = threading.Event()
    fake = PhaseScriptedFakeModel()
    seen: list[CompanyEvent] = []

    def on_event(event: CompanyEvent) -> None:
        seen.append(event)
        if event.kind == "phase" and len([e for e in seen if e.kind == "phase"]) == 2:
            cancel.set()

    run = CompanyRun(TASK, "Hello", model=fake, warehouse_root=tmp_path / "wh", on_event=on_event, cancel=cancel)
    result = run.run()
    assert result.cancelled and fake.phases_called() == ["DemandAnalysis"]
    assert result.ran_ok is None and "cancelled" in result.run_summary and "Cancelled" in result.summary
    assert seen[-1].kind == "summary"
    log = next(result.folder.glob("*.log")).read_text(encoding="utf-8")
    assert log.endswith("\n\n") and "===== Summary =====" in log and "cancelled" in log
    assert "Cancelled:\nTrue" in (result.folder / "meta.txt").read_text()


def test_cancel_stops_a_model_call_in_progress(tmp_path: Path) -> None:
    cancel = threading.Event()

    def on_piece(count: int) -> None:
        if count == 3:
            threading.Timer(0.05, cancel.set).start()  # from another thread, as a UI's Stop button would

    fake = PhaseScriptedFakeModel(endless=True, on_piece=on_piece)
    started = time.monotonic()
    result = CompanyRun(TASK, "Hello", model=fake, warehouse_root=tmp_path / "wh", cancel=cancel).run()
    assert result.cancelled and time.monotonic() - started < 20
    assert result.model_calls == 1


def test_models_are_chosen_by_role(tmp_path: Path) -> None:
    programmer = PhaseScriptedFakeModel(name="programmer-fake")
    ceo = PhaseScriptedFakeModel({"DemandAnalysis": "Hmm.", "Reflection": "<INFO> Application"}, name="ceo-fake")
    others = PhaseScriptedFakeModel({"DemandAnalysis": "Hmm."}, name="others-fake")
    asked: list[str] = []

    def model_for(role: str) -> PhaseScriptedFakeModel:
        asked.append(role)
        return {"Programmer": programmer, "Chief Executive Officer": ceo}.get(role, others)

    config = write_chain(tmp_path / "cfg", [simple("DemandAnalysis", 1, reflect=True), simple("Coding")])
    result, _ = start(model_for, tmp_path, config=config)
    assert set(asked) == {"Chief Product Officer", "Chief Executive Officer", "Programmer"}
    assert programmer.phases_called() == ["Coding"] and ceo.phases_called() == ["Reflection"]
    assert others.phases_called() == ["DemandAnalysis"]
    assert all("You are the Programmer" in messages[0].content for _, messages, _ in programmer.calls)
    assert result.ran_ok is True


# --- review fixes: junk that must not end the chain, stale runs, commits per task, cycles used up ----------------


def composed(phase: str, cycles: int, *inner: dict[str, object]) -> dict[str, object]:
    return {"phase": phase, "phaseType": "ComposedPhase", "cycleNum": cycles, "Composition": list(inner)}


def autocoder_chain(folder: Path, chain: list[dict[str, object]]) -> Path:
    """A config folder with its own chain and AutoCoder's phases and roles."""
    write_chain(folder, chain, recruitments=["Planner", "Developer", "Tester"])
    for name in ("PhaseConfig.json", "RoleConfig.json"):
        shutil.copy(REPO / "assets" / "company" / "AutoCoder" / name, folder / name)
    return folder


def git_history(folder: Path) -> list[str]:
    return subprocess.run(
        ["git", "log", "--format=%s"], cwd=folder, capture_output=True, text=True, check=True
    ).stdout.splitlines()


def test_code_the_python_parser_chokes_on_does_not_end_the_chain(tmp_path: Path) -> None:
    # ast.parse raises RecursionError on this: the CodeCompleteAll check and the {codes} context must survive it.
    junk = "x = 1" + "+1" * 200_000
    reply = f'main.py\n```python\nprint("hello")\n```\njunk.py\n```python\n{junk}\n```\n<INFO> Finished'
    fake = PhaseScriptedFakeModel({"Coding": reply})
    result, events = start(fake, tmp_path)
    assert phase_starts(events)[3:] == ["CodeReviewComment", "TestErrorSummary", "EnvironmentDoc", "Manual"]
    assert not any("unexpected error" in text or "phase failed" in text for text in notices(events))
    assert result.ran_ok is True and (result.folder / "manual.md").exists()


def test_the_quality_report_runs_the_code_changed_after_the_last_test_run(tmp_path: Path) -> None:
    crashing = 'main.py\n```python\nraise RuntimeError("boom")\n```\n<INFO> Finished'
    config = write_chain(
        tmp_path / "cfg",
        [simple("Coding"), composed("Test", 1, simple("TestErrorSummary"), simple("TestModification"))],
    )
    fake = PhaseScriptedFakeModel({"Coding": crashing})  # TestModification's default reply fixes it
    result, events = start(fake, tmp_path, config=config)
    assert fake.phases_called() == ["Coding", "TestErrorSummary", "TestModification"]
    assert result.ran_ok is True and "exited normally" in result.run_summary
    assert "Quality_Ran:\nyes" in (result.folder / "meta.txt").read_text()
    assert any(e.phase == "Test" and "1 test cycle(s)" in e.text for e in events if e.kind == "notice")


def test_developing_reports_the_tasks_its_cycles_did_not_reach(tmp_path: Path) -> None:
    config = autocoder_chain(
        tmp_path / "cfg", [simple("Planning"), composed("Developing", 1, simple("Implementing"))]
    )
    fake = PhaseScriptedFakeModel({"Planning": f"```json\n{PLAN}\n```\n<INFO> main.py, util.py", "Implementing": implementing})
    _, events = start(fake, tmp_path, config=config)
    assert len(fake.prompts("Implementing")) == 1
    assert any(
        e.phase == "Developing" and "1 task(s) of the plan were not developed in 1 cycle(s): entry" in e.text
        for e in events
        if e.kind == "notice"
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_autocoder_commits_every_developed_task_in_git_mode(tmp_path: Path) -> None:
    fake = PhaseScriptedFakeModel(
        {
            "Planning": f"```json\n{PLAN}\n```\n<INFO> main.py, util.py",
            "Implementing": implementing,
            "TestWriting": TESTS_FIXED,
        }
    )
    result, _ = start(fake, tmp_path, config="AutoCoder", git=True)
    assert git_history(result.folder) == ["Final Version", "Task #2 Finished: entry", "Task #1 Finished: helpers"]
    shown = subprocess.run(
        ["git", "show", "--name-only", "--format=", "HEAD~2"], cwd=result.folder, capture_output=True, text=True,
        check=True,
    ).stdout.split()
    assert "util.py" in shown and "main.py" not in shown


def test_a_damaged_experience_pool_does_not_stop_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from src.workflows.company import memory

    def broken(self: object, text: str, k: int = 3) -> str:
        raise KeyError("task")

    monkeypatch.setattr(memory.ExperiencePool, "prompt_for", broken)
    monkeypatch.setattr(memory, "default_pool_path", lambda: tmp_path / "pool.json")
    config = write_chain(tmp_path / "cfg", [simple("Coding")], with_memory="True")
    result, events = start(PhaseScriptedFakeModel(), tmp_path, config=config)
    assert any("experience pool could not be read" in text for text in notices(events))
    assert result.ran_ok is True and events[-1].kind == "summary"


def test_stop_while_the_person_is_asked_is_a_cancel_not_their_comment(tmp_path: Path) -> None:
    cancel = threading.Event()

    def human(question: str) -> str:
        cancel.set()  # what the chat's Stop button does: set the event and answer the waiting question
        return "end"

    fake = PhaseScriptedFakeModel()
    result, events = start(fake, tmp_path, config="Human", human=human, cancel=cancel)
    assert result.cancelled and events[-1].kind == "summary"
    assert not any(e.kind == "utterance" and e.role == "Human" for e in events)


def test_plan_reading_survives_junk_json_and_names_a_file_once() -> None:
    tasks, how = plan_from_reply('[{"name": "a", "depends_on": 3}]\nmain.py: the entry point', "", "t")
    assert how == "files" and [t.name for t in tasks] == ["main.py"]
    tasks, how = plan_from_reply("util.py: the helpers\n./util.py: something else\nmain.py: the entry", "", "t")
    assert [(t.name, t.description) for t in tasks] == [("util.py", "the helpers"), ("main.py", "the entry")]


def test_a_program_that_links_the_log_outside_cannot_make_the_run_write_there(tmp_path: Path) -> None:
    outside = tmp_path / "bashrc"
    outside.write_text("# mine\n")
    linker = (
        "main.py\n```python\nimport glob\nimport os\n\n"
        f"for name in glob.glob('*.log') + ['events.jsonl']:\n    os.remove(name)\n    os.symlink({str(outside)!r}, name)\n"
        "```\n<INFO> Finished"
    )
    _, events = start(PhaseScriptedFakeModel({"Coding": linker}), tmp_path)
    assert "TestErrorSummary" in phase_starts(events) and events[-1].kind == "summary"
    assert outside.read_text() == "# mine\n"


# --- incremental development ------------------------------------------------------------------------------------


def write_base_program(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "main.py").write_text("print('version one')\n", encoding="utf-8")
    (folder / "lib").mkdir()
    (folder / "lib" / "helpers.py").write_text("def helper():\n    return 1\n", encoding="utf-8")
    (folder / "meta.txt").write_text("Task:\nan earlier run\n", encoding="utf-8")  # an earlier run's own file
    (folder / "20250101000000.log").write_text("old log\n", encoding="utf-8")
    return folder


@chatdev
def test_chatdev_incremental_config_improves_an_existing_program(tmp_path: Path) -> None:
    base = write_base_program(tmp_path / "base")
    before = {p.name: p.read_bytes() for p in base.rglob("*") if p.is_file()}
    fake = PhaseScriptedFakeModel()
    result, events = start(fake, tmp_path, config=CHATDEV_CONFIGS / "Incremental", base_folder=base)
    assert "Coding" not in phase_starts(events)
    assert (result.folder / "lib" / "helpers.py").read_text() == "def helper():\n    return 1\n"
    assert "20250101000000.log" not in {p.name for p in result.folder.iterdir()}
    assert "an earlier run" not in (result.folder / "meta.txt").read_text()
    assert "ChatEnvConfig.incremental_develop: True" in (result.folder / "meta.txt").read_text()
    assert any("Incremental development from" in text and "lib/helpers.py" in text for text in notices(events))
    assert {p.name: p.read_bytes() for p in base.rglob("*") if p.is_file()} == before  # the original is untouched


def test_default_config_with_a_base_folder_skips_coding(tmp_path: Path) -> None:
    base = write_base_program(tmp_path / "base")
    result, events = start(PhaseScriptedFakeModel(), tmp_path, base_folder=base)
    assert "Coding" not in phase_starts(events)
    assert any(e.phase == "Coding" and "Coding is skipped" in e.text for e in events if e.kind == "notice")
    assert (result.folder / "lib" / "helpers.py").exists()


@chatdev
def test_incremental_config_without_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="--path"):
        start(PhaseScriptedFakeModel(), tmp_path, config=CHATDEV_CONFIGS / "Incremental")
    with pytest.raises(InvalidParameterError, match="not a folder"):
        start(PhaseScriptedFakeModel(), tmp_path, base_folder=tmp_path / "missing")
    assert not (tmp_path / "WareHouse").exists()  # nothing was written
