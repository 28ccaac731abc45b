"""The phases of the agent company: one class per phase name, registered in ``PHASES``, plus the rules that decide
when a composed phase's cycle stops (``COMPOSED_PHASES``).

A simple phase is a short seminar between two roles of ``PhaseConfig.json``, as in ChatDev: the *user* role
(the instructor) sends the filled phase prompt, the *assistant* role answers. The phase's result is the reply's
last ``<INFO>`` line. The instructor's words are never generated: they are the phase prompt and, when a reply
ends without a conclusion, a short reminder; so a turn costs exactly one model call, which matters on small local
models. What a phase changes in the project is done by its ``update_env``.

Everything a phase needs from the run (models, events, the project folder, the sandbox) comes through a
``PhaseContext`` built by ``runner.CompanyRun``; phases never touch the disk or a model directly.
"""

from __future__ import annotations

import ast
import difflib
import logging
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from src.errors import CompanyError
from src.utils.fences import fenced_blocks, split_lines, unwrapped
from src.utils.generation import ChatMessage, ChatModel, GenerationParams
from src.workflows.company.code_extraction import extract_code_files
from src.workflows.company.config import CompanyConfig, PhaseSpec, SimpleStep, fill_placeholders
from src.workflows.company.context import estimate_tokens, parse_python, select_context
from src.workflows.company.plan import PlanError, PlanTask, parse_plan
from src.workflows.company.sandbox import RunResult, run_program
from src.workflows.company.warehouse import ProjectFolder

logger = logging.getLogger(__name__)

INFO_MARK = "<INFO>"
TEMPERATURE = 0.2  # low: phases want the format followed, not creativity
CODE_BUDGET_TOKENS = 3000  # {codes} above this is cut down to the most relevant chunks (context.select_context)
MAX_SHOWN_CHARS = 20_000  # per log entry and per event: a runaway reply must not make a 50 MB log or UI event
MAX_REPORT_CHARS = 3_000  # of program output put into a prompt: the end of a traceback is what matters
TEST_RUNNER_FILE = "_hearth_run_tests.py"
DOC_FILES = frozenset({"requirements.txt", "manual.md"})

REMINDER = (
    "Your answer has no conclusion line. Answer again, and make its last line start with <INFO> "
    "followed by your conclusion."
)
REFLECTION_PROMPT = (
    "The {assistant_role} and the {user_role} discussed the phase below but did not state its result in the agreed "
    "format.\nWhat was asked:\n{asked}\nWhat was answered:\n{answered}\n"
    "Read it and give their conclusion as one single line that starts with <INFO>, for example: <INFO> Python"
)
REFLECTION_ROLES = ("Chief Executive Officer", "Counselor")  # ChatDev's pair for reflection

# A requirements line: a package name, optional extras and version specifiers.
_REQUIREMENT_RE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[\w,\s-]+\])?\s*((==|>=|<=|~=|!=|>|<)\s*[\w.*+-]+\s*,?\s*)*$"
)
_PLAN_FILE_LINE_RE = re.compile(r"^\s*(?:[-*+]|\d+[.)])?\s*[`*_]*([\w./-]+\.py)[`*_]*\s*[:\u2013-]\s*(.+)$")
_PYTEST_COUNT_RE = re.compile(r"(\d+) (passed|failed|errors?)\b")

_TEST_RUNNER_SOURCE = '''"""Written by Hearth to run the project's tests in its sandbox; deleted after the run."""
import os
import sys

import pytest

# -c devnull / rootdir / confcutdir: only this folder's tests and settings, never a parent project's.
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", ".", "--confcutdir", "."]))
'''


# --- values --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompanyEvent:
    """Streamed to the UI/CLI as the run goes."""

    kind: str  # "phase" (a phase starts), "utterance", "code", "notice", "test", "summary"
    phase: str = ""
    role: str = ""  # speaker for utterances
    turn: int = 0
    text: str = ""  # utterance text / notice / diff / test report / summary
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class PhaseOutcome:
    conclusion: str
    reply: str  # the last reply of the assistant role
    concluded: bool  # an <INFO> line was found (or extracted by reflection)
    replies: list[str] = field(default_factory=list)  # every reply of the phase, in order
    skipped: bool = False  # the phase had nothing to do and called no model


class RunCancelled(Exception):
    """Internal: the run's cancel event was set; unwinds the chain to the final report."""


@dataclass
class RunStats:
    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    utterances: int = 0


@dataclass
class ChatEnv:
    """What the company knows about the project so far; its fields fill the prompts' placeholders."""

    task: str
    background_prompt: str = ""
    description: str = ""
    modality: str = "Application"
    language: str = "Python"
    ideas: str = ""
    codes: dict[str, str] = field(default_factory=dict)  # source files only (not our own docs, logs, configs)
    requirements: str = ""
    manual: str = ""
    test_reports: str = ""
    error_summary: str = ""
    comments: str = ""
    plan: str = ""
    plan_tasks: list[PlanTask] = field(default_factory=list)
    plan_done: set[str] = field(default_factory=set)
    developing: str = ""  # the name of the plan task Implementing works on (AutoCoder)
    unimplemented_file: str = ""
    gui: str = ""
    images: str = ""
    # Flags read by the composed phases' break conditions.
    review_finished: bool = False
    program_ok: bool = False
    human_done: bool = False
    tests_ok: bool = False

    def codes_text(self, query: str = "", budget_tokens: int = CODE_BUDGET_TOKENS) -> str:
        """Every file as "path, fenced code", or, when that is too long for a small model, the chunks most
        relevant to ``query`` within the budget."""
        if not self.codes:
            return "(no code yet)"
        full = "\n\n".join(
            f"{path}\n```{_fence_language(path)}\n{code.rstrip()}\n```" for path, code in self.codes.items()
        )
        if estimate_tokens(full) <= budget_tokens:
            return full
        selected = select_context(self.codes, query or self.task, budget_tokens)
        return selected or "(the code is too long to show)"

    def plan_text(self) -> str:
        lines = []
        for index, task in enumerate(self.plan_tasks, 1):
            where = f" [{task.file}]" if task.file else ""
            after = f" (after: {', '.join(task.depends_on)})" if task.depends_on else ""
            lines.append(f"{index}. {task.name}{where}: {task.description}{after}")
        return "\n".join(lines)

    def next_plan_task(self) -> PlanTask | None:
        return next((t for t in self.plan_tasks if t.name not in self.plan_done), None)

    def placeholder_values(self, query: str = "") -> dict[str, str]:
        return {
            "chatdev_prompt": self.background_prompt,
            "task": self.task,
            "description": self.description,
            "modality": self.modality,
            "language": self.language,
            "ideas": self.ideas,
            "codes": self.codes_text(query),
            "unimplemented_file": self.unimplemented_file,
            "gui": self.gui,
            "images": self.images,
            "comments": self.comments,
            "test_reports": self.test_reports,
            "error_summary": self.error_summary,
            "requirements": self.requirements,
            "plan": self.plan,
        }


def _fence_language(path: str) -> str:
    suffix = Path(path).suffix.lower().lstrip(".")
    return {"py": "python", "js": "javascript", "ts": "typescript", "md": "markdown"}.get(suffix, suffix)


def shorten(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit:,} more characters not shown ...]"


def tail(text: str, limit: int = MAX_REPORT_CHARS) -> str:
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


def find_conclusion(reply: str) -> str | None:
    """The text after the last line that starts with <INFO> (markdown decoration allowed), or None."""
    for line in reversed(reply.splitlines()):
        stripped = line.strip().lstrip("*_`>#- ").strip()
        if stripped.upper().startswith(INFO_MARK):
            return stripped[len(INFO_MARK) :].strip(" :*_`").strip()
    return None


def last_nonempty_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


# --- unimplemented code ----------------------------------------------------------------------------------------


def _is_placeholder_statement(node: ast.stmt) -> bool:
    if isinstance(node, ast.Pass):
        return True
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node.value.value is Ellipsis:
        return True
    if isinstance(node, ast.Raise) and node.exc is not None:
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False


def is_unimplemented(source: str) -> bool:
    """True when a function of ``source`` is only a stub (pass, ..., raise NotImplementedError) or holds a TODO.

    Abstract methods are stubs by design and don't count. A file that does not parse is not "unimplemented":
    review and test phases deal with broken code.
    """
    tree = parse_python(source)
    if tree is None:
        return False
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        decorators = {ast.unparse(d).rsplit(".", 1)[-1] for d in node.decorator_list}
        if "abstractmethod" in decorators or "overload" in decorators:
            continue
        body = list(node.body)
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body = body[1:]  # a docstring alone is not an implementation, and not a stub statement either
        if all(_is_placeholder_statement(stmt) for stmt in body):
            return True
        segment = ast.get_source_segment(source, node) or ""
        if "TODO" in segment:
            return True
    return False


def find_unimplemented(codes: dict[str, str]) -> str:
    """The first Python file (sorted by name) with an unimplemented function, or ""."""
    return next((path for path in sorted(codes) if path.endswith(".py") and is_unimplemented(codes[path])), "")


# --- the run's services for phases -------------------------------------------------------------------------------


# The phases where a lesson from earlier runs can change what gets written.
LESSON_PHASES = {"Coding", "CodeReviewModification", "TestModification", "Implementing", "TestErrorSummary"}


class PhaseContext:
    """What phases use from the run: models by role, events and the log, the project folder, the sandbox."""

    def __init__(
        self,
        *,
        config: CompanyConfig,
        env: ChatEnv,
        project: ProjectFolder,
        model_for_role: Callable[[str], ChatModel],
        emit: Callable[[CompanyEvent], None],
        cancel: threading.Event,
        max_tokens: int,
        max_turns: int | None,
        cap_tokens: bool = False,
        run_timeout_s: float,
        human: Callable[[str], str] | None,
        reserved: set[str],
    ) -> None:
        self.config = config
        self.env = env
        self.lessons = ""  # experiences from earlier runs (chain option with_memory), added to coding prompts
        self.project = project
        self.model_for_role = model_for_role
        self.emit = emit
        self.cancel = cancel
        self.max_tokens = max_tokens
        self.cap_tokens = cap_tokens
        self.max_turns = max_turns
        self.run_timeout_s = run_timeout_s
        self.human = human
        self.reserved = {name.lower() for name in reserved}  # our own files: a model may not overwrite them
        self.stats = RunStats()
        self.last_run: RunResult | None = None
        self.last_run_version = -1  # code_version when last_run was made
        self.tests_passed = 0
        self.tests_failed = 0
        self.code_version = 0  # one more for every reply that changed the code (ChatDev's Code_Version)

    # --- events ------------------------------------------------------------------------------------------------

    def notice(self, phase: str, text: str) -> None:
        logger.info("[%s] %s", phase, text)
        self.emit(CompanyEvent("notice", phase=phase, text=text))

    def utterance(self, phase: str, role: str, turn: int, text: str) -> None:
        self.stats.utterances += 1
        self.emit(CompanyEvent("utterance", phase=phase, role=role, turn=turn, text=shorten(text)))

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise RunCancelled()

    # --- models ------------------------------------------------------------------------------------------------

    def role_prompt(self, role: str, values: dict[str, str]) -> str:
        spec = self.config.roles.get(role)
        if spec is None:
            # AutoCoder's roster has no CEO or Counselor for reflection: the company's background still helps.
            return values.get("chatdev_prompt", "")
        return fill_placeholders(spec.prompt, values)

    def chat(self, phase: str, role: str, messages: list[ChatMessage], max_tokens: int) -> str:
        """One bounded model call for ``role``; raises RunCancelled if the run is cancelled before or during it."""
        self.check_cancel()
        model = self.model_for_role(role)
        params = GenerationParams(max_new_tokens=max(1, int(max_tokens)), temperature=TEMPERATURE)
        self.stats.model_calls += 1
        stream = model.stream(messages, params)
        done = threading.Event()

        def watch() -> None:
            # Cancels a stream that is busy producing its next piece, where the loop below can't look.
            while not done.is_set():
                if self.cancel.wait(0.05):
                    stream.cancel()
                    return

        watcher = threading.Thread(target=watch, name="hearth-company-cancel", daemon=True)
        watcher.start()
        pieces: list[str] = []
        try:
            for piece in stream:
                pieces.append(piece)
                if self.cancel.is_set():
                    stream.cancel()
                    break
        finally:
            done.set()
            stream.close()  # lets the producer run its bookkeeping (sets result) when we stopped early
        result = stream.result
        if result is not None:
            self.stats.prompt_tokens += result.stats.prompt_tokens
            self.stats.completion_tokens += result.stats.completion_tokens
        self.check_cancel()
        return result.text if result is not None and result.text else "".join(pieces)

    # --- project -----------------------------------------------------------------------------------------------

    def refresh_codes(self) -> None:
        snapshot = self.project.snapshot()
        self.env.codes = {
            path: text
            for path, text in snapshot.items()
            if path.lower() not in self.reserved and path not in DOC_FILES and not path.endswith(".log")
        }

    def write(self, phase: str, path: str, content: str) -> bool:
        """Write one file through ProjectFolder, log its diff; refusals become notices. True when it changed."""
        existed = True
        try:
            old = self.project.read_file(path)
        except (CompanyError, OSError):
            old, existed = "", False
        if existed and old == content:
            return False
        try:
            self.project.write_file(path, content)
        except CompanyError as exc:
            self.notice(phase, str(exc))
            return False
        diff = "".join(
            difflib.unified_diff(
                old.splitlines(keepends=True), content.splitlines(keepends=True), f"a/{path}", f"b/{path}"
            )
        )
        added = sum(1 for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))
        removed = sum(1 for line in diff.splitlines() if line.startswith("-") and not line.startswith("---"))
        self.emit(
            CompanyEvent(
                "code",
                phase=phase,
                text=shorten(diff) or f"(new empty file {path})",
                data={"file": path, "added": added, "removed": removed},
            )
        )
        return True

    def apply_code_reply(self, phase: str, reply: str) -> list[str]:
        """Write the files of a reply; returns the paths that changed. Never raises for junk in the reply."""
        language = (self.env.language.split() or ["python"])[0].lower().strip(".,;")
        try:
            files = extract_code_files(reply, default_language=language)
        except Exception as exc:  # a parser bug on junk input must not end the run
            logger.exception("Code extraction failed in %s", phase)
            self.notice(phase, f"Could not read code from the reply: {exc}")
            return []
        written: list[str] = []
        for extracted in files:
            name = extracted.path
            if extracted.name_guessed and name != "main.py":
                self.notice(phase, f"Skipped a code block without a file name (it would have been {name}).")
                continue
            if name.lower() in self.reserved:
                self.notice(phase, f"Refused to overwrite {name}: the company keeps that file itself.")
                continue
            if self.write(phase, name, extracted.content):
                written.append(name)
        if written:
            self.code_version += 1
        self.refresh_codes()
        return written

    def run_main(self, phase: str) -> RunResult | None:
        """Run main.py in the sandbox (stdin empty); None when there is no main.py or it can't be started."""
        self.check_cancel()
        if "main.py" not in self.project.list_files():
            self.notice(phase, "There is no main.py to run.")
            return None
        try:
            result = run_program(self.project.root, "main.py", timeout_s=self.run_timeout_s, stdin="")
        except CompanyError as exc:
            self.notice(phase, str(exc))
            return None
        self.last_run, self.last_run_version = result, self.code_version
        self.emit(
            CompanyEvent(
                "test",
                phase=phase,
                text=run_report(result),
                data={"ok": result.ok, "crashed": result.crashed, "timed_out": result.timed_out},
            )
        )
        return result

    def run_of_current_code(self) -> RunResult | None:
        """The last run of main.py if no reply has changed the code since; else None (it says nothing now)."""
        return self.last_run if self.last_run_version == self.code_version else None

    def run_tests(self, phase: str) -> RunResult | None:
        """Run pytest in the sandbox through a small runner file; records the passed/failed counts."""
        self.check_cancel()
        try:
            self.project.write_file(TEST_RUNNER_FILE, _TEST_RUNNER_SOURCE)
        except CompanyError as exc:
            self.notice(phase, f"Could not prepare the test run: {exc}")
            return None
        try:
            result = run_program(self.project.root, TEST_RUNNER_FILE, timeout_s=max(self.run_timeout_s, 5.0), stdin="")
        except CompanyError as exc:
            self.notice(phase, str(exc))
            return None
        finally:
            # Our helper, not part of the product: it must not show up in the file list or the lint counts.
            (self.project.root / TEST_RUNNER_FILE).unlink(missing_ok=True)
        passed, failed = pytest_counts(result.stdout)
        self.tests_passed, self.tests_failed = passed, failed
        if "pytest" in result.missing_modules:
            self.notice(phase, "pytest is not installed for the interpreter that runs generated programs.")
        self.emit(
            CompanyEvent(
                "test",
                phase=phase,
                text=f"pytest: {passed} passed, {failed} failed.\n" + tail(result.stdout + result.stderr),
                data={"ok": result.exit_code == 0, "passed": passed, "failed": failed, "pytest": True},
            )
        )
        return result


def run_report(result: RunResult) -> str:
    parts = [result.summary()]
    if result.stdout.strip():
        parts.append("Output:\n" + tail(result.stdout))
    if result.stderr.strip():
        parts.append("Errors:\n" + tail(result.stderr))
    return "\n".join(parts)


def pytest_counts(output: str) -> tuple[int, int]:
    """(passed, failed + errors) from pytest's last summary line."""
    summary = next((line for line in reversed(output.splitlines()) if _PYTEST_COUNT_RE.search(line)), "")
    passed = failed = 0
    for number, word in _PYTEST_COUNT_RE.findall(summary):
        if word == "passed":
            passed += int(number)
        else:
            failed += int(number)
    return passed, failed


# --- registry ----------------------------------------------------------------------------------------------------

PHASES: dict[str, type[SimplePhase]] = {}


def register_phase(name: str) -> Callable[[type[SimplePhase]], type[SimplePhase]]:
    def decorate(cls: type[SimplePhase]) -> type[SimplePhase]:
        PHASES[name] = cls
        return cls

    return decorate


class SimplePhase:
    """A seminar: the instructor sends the phase prompt, the assistant answers until an <INFO> line (bounded)."""

    def __init__(self, spec: PhaseSpec, step: SimpleStep) -> None:
        self.spec = spec
        self.step = step

    @property
    def name(self) -> str:
        return self.spec.name

    # Hooks for subclasses.
    def context_query(self, ctx: PhaseContext) -> str:
        """What the code excerpts in {codes} should be relevant to, when the project is too long to show whole."""
        env = ctx.env
        return f"{env.task} {env.comments} {env.error_summary} {env.unimplemented_file}"

    def extra_values(self, ctx: PhaseContext) -> dict[str, str]:
        return {}

    def run(self, ctx: PhaseContext) -> PhaseOutcome:
        return self.chat(ctx)

    def update_env(self, ctx: PhaseContext, outcome: PhaseOutcome) -> None:
        """What the phase's result changes in the project; the base phase changes nothing."""

    def execute(self, ctx: PhaseContext) -> PhaseOutcome:
        outcome = self.run(ctx)
        if not outcome.skipped:
            self.update_env(ctx, outcome)
        return outcome

    def skip(self) -> PhaseOutcome:
        return PhaseOutcome("", "", False, skipped=True)

    # The seminar.
    def values(self, ctx: PhaseContext) -> dict[str, str]:
        values = ctx.env.placeholder_values(self.context_query(ctx))
        values.update(assistant_role=self.spec.assistant_role_name, user_role=self.spec.user_role_name)
        values.update(self.extra_values(ctx))
        return values

    def turn_limit(self, ctx: PhaseContext) -> int:
        return ctx.max_turns if ctx.max_turns is not None and ctx.max_turns > 0 else self.step.turn_limit()

    def max_tokens(self, ctx: PhaseContext) -> int:
        configured = self.step.max_tokens or ctx.max_tokens
        return min(configured, ctx.max_tokens) if ctx.cap_tokens else configured

    def chat(self, ctx: PhaseContext, *, turns: int | None = None) -> PhaseOutcome:
        values = self.values(ctx)
        assistant, instructor = self.spec.assistant_role_name, self.spec.user_role_name
        prompt = fill_placeholders(self.spec.phase_prompt, values)
        if ctx.lessons and self.name in LESSON_PHASES:
            prompt = f"{prompt}\n\n{ctx.lessons}"  # with_memory: what fixed similar problems before
        messages = [ChatMessage("system", ctx.role_prompt(assistant, values)), ChatMessage("user", prompt)]
        limit = turns if turns is not None else self.turn_limit(ctx)
        ctx.utterance(self.name, instructor, 1, prompt)
        replies: list[str] = []
        for turn in range(1, limit + 1):
            reply = ctx.chat(self.name, assistant, messages, self.max_tokens(ctx))
            ctx.utterance(self.name, assistant, turn, reply)
            replies.append(reply)
            conclusion = find_conclusion(reply)
            if conclusion is not None:
                return PhaseOutcome(conclusion, reply, True, replies)
            if turn < limit:
                messages += [ChatMessage("assistant", reply), ChatMessage("user", REMINDER)]
                ctx.utterance(self.name, instructor, turn + 1, REMINDER)
        last = replies[-1] if replies else ""
        if self.step.need_reflect:
            conclusion = self.reflect(ctx, prompt, last, values)
            if conclusion is not None:
                return PhaseOutcome(conclusion, last, True, replies)
        fallback = last_nonempty_line(last)
        ctx.notice(
            self.name,
            f"No <INFO> conclusion after {limit} turn(s)"
            + (" and reflection" if self.step.need_reflect else "")
            + f"; using the last line of the last reply: {shorten(fallback, 200)!r}",
        )
        return PhaseOutcome(fallback, last, False, replies)

    def reflect(self, ctx: PhaseContext, asked: str, answered: str, values: dict[str, str]) -> str | None:
        """ChatDev's reflection: the CEO, prompted by the Counselor, extracts the conclusion in one call."""
        ceo, counselor = REFLECTION_ROLES
        question = fill_placeholders(
            REFLECTION_PROMPT,
            {
                "assistant_role": self.spec.assistant_role_name,
                "user_role": self.spec.user_role_name,
                "asked": shorten(asked, 4000),
                "answered": shorten(answered, 4000),
            },
        )
        ctx.utterance(self.name, counselor, 0, question)
        messages = [ChatMessage("system", ctx.role_prompt(ceo, values)), ChatMessage("user", question)]
        reply = ctx.chat(self.name, ceo, messages, min(self.max_tokens(ctx), 128))
        ctx.utterance(self.name, ceo, 0, reply)
        return find_conclusion(reply)


def _short_answer(conclusion: str, default: str, limit: int = 40) -> str:
    """A one-word-ish answer (a modality, a language) from a conclusion; junk keeps the default."""
    cleaned = conclusion.strip().strip("\"'`*.").strip()
    if not cleaned or len(cleaned) > limit or "\n" in cleaned:
        return default
    return cleaned


@register_phase("DemandAnalysis")
class DemandAnalysis(SimplePhase):
    def update_env(self, ctx: PhaseContext, outcome: PhaseOutcome) -> None:
        ctx.env.modality = _short_answer(outcome.conclusion, ctx.env.modality)


@register_phase("LanguageChoose")
class LanguageChoose(SimplePhase):
    def update_env(self, ctx: PhaseContext, outcome: PhaseOutcome) -> None:
        ctx.env.language = _short_answer(outcome.conclusion, ctx.env.language or "Python")


class CodeWritingPhase(SimplePhase):
    """A phase whose replies carry files: every fenced, named file is written through ProjectFolder."""

    def update_env(self, ctx: PhaseContext, outcome: PhaseOutcome) -> None:
        # All replies, in order: a first reply with code but no <INFO> line still counts; later copies win.
        written = ctx.apply_code_reply(self.name, "\n\n".join(outcome.replies))
        if not written and outcome.replies:
            ctx.notice(self.name, "The reply changed no file.")
        self.after_write(ctx, written)

    def after_write(self, ctx: PhaseContext, written: list[str]) -> None:
        pass


@register_phase("Coding")
class Coding(CodeWritingPhase):
    def after_write(self, ctx: PhaseContext, written: list[str]) -> None:
        if "main.py" not in ctx.env.codes and ctx.env.language.lower().startswith("python"):
            ctx.notice(self.name, "No main.py was written; the program has no entry point to run.")


@register_phase("CodeComplete")
class CodeComplete(CodeWritingPhase):
    def run(self, ctx: PhaseContext) -> PhaseOutcome:
        ctx.env.unimplemented_file = ctx.env.unimplemented_file or find_unimplemented(ctx.env.codes)
        if not ctx.env.unimplemented_file:
            return self.skip()
        return self.chat(ctx)

    def after_write(self, ctx: PhaseContext, written: list[str]) -> None:
        ctx.env.unimplemented_file = find_unimplemented(ctx.env.codes)


@register_phase("CodeReviewComment")
class CodeReviewComment(SimplePhase):
    def update_env(self, ctx: PhaseContext, outcome: PhaseOutcome) -> None:
        ctx.env.review_finished = outcome.concluded and outcome.conclusion.lower().strip(" .!").startswith("finished")
        ctx.env.comments = "" if ctx.env.review_finished else outcome.reply.strip()


@register_phase("CodeReviewModification")
class CodeReviewModification(CodeWritingPhase):
    def run(self, ctx: PhaseContext) -> PhaseOutcome:
        return self.skip() if ctx.env.review_finished else self.chat(ctx)


@register_phase("TestErrorSummary")
class TestErrorSummary(SimplePhase):
    def run(self, ctx: PhaseContext) -> PhaseOutcome:
        result = ctx.run_main(self.name)
        if result is None:
            ctx.env.program_ok = False
            ctx.env.test_reports = "The program could not be started: there is no main.py in the project."
        elif not result.crashed:
            # Exited normally, or still running at the timeout without a traceback (a GUI, a game): nothing to fix.
            ctx.env.program_ok = True
            ctx.env.test_reports = run_report(result)
            ctx.env.error_summary = ""
            return self.skip()
        else:
            ctx.env.program_ok = False
            ctx.env.test_reports = run_report(result)
        return self.chat(ctx)

    def update_env(self, ctx: PhaseContext, outcome: PhaseOutcome) -> None:
        ctx.env.error_summary = outcome.conclusion if outcome.concluded else outcome.reply.strip()


@register_phase("TestModification")
class TestModification(CodeWritingPhase):
    def run(self, ctx: PhaseContext) -> PhaseOutcome:
        return self.skip() if ctx.env.program_ok else self.chat(ctx)


def requirements_from_reply(reply: str) -> str:
    """requirements.txt from a reply: a file named so, else the first fenced block, else requirement-like lines.
    Standard-library names are dropped (small models list tkinter and random; pip can't install them)."""
    text: str | None = None
    for extracted in extract_code_files(reply, default_language="text"):
        if extracted.path.lower().endswith("requirements.txt"):
            text = extracted.content
    if text is None:
        blocks = fenced_blocks(split_lines(reply))
        text = blocks[0].body if blocks else reply
    keep: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.upper().startswith(INFO_MARK) or not _REQUIREMENT_RE.match(stripped):
            continue
        package = re.split(r"[\[<>=!~\s]", stripped, maxsplit=1)[0].lower()
        if package in sys.stdlib_module_names or package in {"none", "n/a", "nothing", "requirements.txt"}:
            continue
        keep.append(stripped)
    return "\n".join(keep) + ("\n" if keep else "")


@register_phase("EnvironmentDoc")
class EnvironmentDoc(SimplePhase):
    def update_env(self, ctx: PhaseContext, outcome: PhaseOutcome) -> None:
        ctx.env.requirements = requirements_from_reply("\n\n".join(outcome.replies))
        ctx.write(self.name, "requirements.txt", ctx.env.requirements)


def manual_from_reply(reply: str) -> str:
    for extracted in extract_code_files(reply, default_language="markdown"):
        if extracted.path.lower().endswith(".md"):
            return extracted.content
    lines = [line for line in reply.splitlines() if not line.strip().upper().startswith(INFO_MARK)]
    text = "\n".join(lines).strip()
    inside = unwrapped(text)
    return (text if inside is None else inside).strip() + "\n"


@register_phase("Manual")
class Manual(SimplePhase):
    def update_env(self, ctx: PhaseContext, outcome: PhaseOutcome) -> None:
        ctx.env.manual = manual_from_reply(outcome.reply)
        ctx.write(self.name, "manual.md", ctx.env.manual)


@register_phase("CodeReviewHuman")
class CodeReviewHuman(CodeWritingPhase):
    def run(self, ctx: PhaseContext) -> PhaseOutcome:
        if ctx.human is None:
            ctx.notice(self.name, "No person is attached to this run; the human review is skipped.")
            ctx.env.human_done = True
            return self.skip()
        question = (
            f"Try the program in {ctx.project.root} (python main.py) and type your comments for the "
            f"{self.spec.assistant_role_name}, or type 'end' to finish."
        )
        try:
            feedback = ctx.human(question)
        except Exception as exc:  # a closed dialog, an EOF on the terminal: the person is gone
            logger.warning("The human callback failed", exc_info=True)
            ctx.notice(self.name, f"Could not get the person's comments ({exc}); the human review ends.")
            ctx.env.human_done = True
            return self.skip()
        ctx.check_cancel()  # Stop answers a waiting question with "end": that is not the person's comment
        feedback = (feedback or "").strip()
        ctx.utterance(self.name, "Human", 0, feedback)
        if feedback.lower() in ("end", ""):
            ctx.env.human_done = True
            return self.skip()
        ctx.env.comments = feedback
        return self.chat(ctx)


# --- AutoCoder ---------------------------------------------------------------------------------------------------


def plan_from_reply(reply: str, conclusion: str, task: str) -> tuple[list[PlanTask], str]:
    """(tasks in dependency order, how they were read). Tries the JSON plan, then "file.py: what it holds" lines,
    then the <INFO> list of files, then one task that writes main.py."""
    try:
        return parse_plan(reply), "json"
    except PlanError as exc:
        logger.info("No JSON plan (%s); trying file lines", exc)
    described: dict[str, str] = {}
    for line in reply.splitlines():
        match = _PLAN_FILE_LINE_RE.match(line)
        if match:
            # "./util.py" and "util.py" are one file; the first description wins. An unsafe name ("../x.py")
            # is kept as written: the write refuses it later, with a notice.
            described.setdefault(match.group(1).removeprefix("./"), match.group(2).strip())
    if not described:
        for name in re.split(r"[,\s]+", conclusion):
            name = name.strip("`*'\"")
            if name.endswith(".py"):
                described.setdefault(name, f"The file {name} of the program.")
    if described:
        # The entry point uses the other files, so it comes last.
        others = tuple(name for name in described if name != "main.py")
        tasks = [PlanTask(name, text, (), name) for name, text in described.items() if name != "main.py"]
        if "main.py" in described:
            tasks.append(PlanTask("main.py", described["main.py"], others, "main.py"))
        return tasks, "files"
    return [PlanTask("main.py", f"The whole program: {task}", (), "main.py")], "fallback"


@register_phase("Planning")
class Planning(SimplePhase):
    def update_env(self, ctx: PhaseContext, outcome: PhaseOutcome) -> None:
        tasks, how = plan_from_reply("\n\n".join(outcome.replies), outcome.conclusion, ctx.env.task)
        if how == "fallback":
            ctx.notice(self.name, "The plan could not be read; falling back to a single task: write main.py.")
        ctx.env.plan_tasks = tasks
        ctx.env.plan_done = set()
        ctx.env.plan = ctx.env.plan_text()


def _task_file(task: PlanTask) -> str:
    if task.file:
        return task.file
    return task.name if re.fullmatch(r"[\w./-]+\.\w+", task.name) else "main.py"


@register_phase("Implementing")
class Implementing(CodeWritingPhase):
    def __init__(self, spec: PhaseSpec, step: SimpleStep) -> None:
        super().__init__(spec, step)
        self.task: PlanTask | None = None

    def run(self, ctx: PhaseContext) -> PhaseOutcome:
        if not ctx.env.plan_tasks:
            ctx.env.plan_tasks = plan_from_reply("", "", ctx.env.task)[0]
            ctx.env.plan = ctx.env.plan_text()
        self.task = ctx.env.next_plan_task()
        if self.task is None:
            return self.skip()
        ctx.env.developing = self.task.name
        ctx.env.unimplemented_file = _task_file(self.task)
        return self.chat(ctx)

    def extra_values(self, ctx: PhaseContext) -> dict[str, str]:
        if self.task is None or not ctx.env.codes:
            return {}
        # Only the code that matters to this task, so the prompt stays small as the project grows.
        query = f"{self.task.name} {self.task.description} {' '.join(self.task.depends_on)}"
        return {"codes": select_context(ctx.env.codes, query, CODE_BUDGET_TOKENS) or "(no code yet)"}

    def after_write(self, ctx: PhaseContext, written: list[str]) -> None:
        if self.task is None:
            return
        target = _task_file(self.task)
        if target not in written and target not in ctx.env.codes:
            ctx.notice(self.name, f"The task {self.task.name!r} did not produce {target}.")
        # Done either way: the loop is bounded by the plan, and Testing gets a chance to fix what is missing.
        ctx.env.plan_done.add(self.task.name)


@register_phase("TestWriting")
class TestWriting(CodeWritingPhase):
    def after_write(self, ctx: PhaseContext, written: list[str]) -> None:
        if not any(Path(name).name.startswith("test_") for name in ctx.env.codes):
            ctx.notice(self.name, "No test file (test_*.py) was written.")


@register_phase("Testing")
class Testing(CodeWritingPhase):
    """Run pytest; while tests fail and turns remain, give the output to the Developer and apply the fix.

    Each fix is written as soon as it is answered (the next pytest run needs it), so ``update_env`` has nothing
    left to do."""

    def run(self, ctx: PhaseContext) -> PhaseOutcome:
        result = ctx.run_tests(self.name)
        replies: list[str] = []
        attempts, limit = 0, self.turn_limit(ctx)  # one model call per fix attempt
        while result is not None and not _tests_pass(ctx, result) and attempts < limit:
            if ctx.tests_passed == 0 and ctx.tests_failed == 0 and result.exit_code == 5:
                ctx.notice(self.name, "pytest found no tests to run.")
                break
            if "pytest" in result.missing_modules:
                break
            ctx.env.test_reports = f"pytest: {ctx.tests_passed} passed, {ctx.tests_failed} failed.\n" + tail(
                result.stdout + result.stderr
            )
            attempts += 1
            outcome = self.chat(ctx, turns=1)
            replies.extend(outcome.replies)
            ctx.apply_code_reply(self.name, "\n\n".join(outcome.replies))
            result = ctx.run_tests(self.name)
        ctx.env.tests_ok = result is not None and _tests_pass(ctx, result)
        if not ctx.env.tests_ok and attempts >= limit:
            ctx.notice(self.name, f"Tests still fail after {attempts} fix attempt(s).")
        conclusion = "Finished" if ctx.env.tests_ok else "Tests fail"
        return PhaseOutcome(conclusion, replies[-1] if replies else "", ctx.env.tests_ok, replies)

    def update_env(self, ctx: PhaseContext, outcome: PhaseOutcome) -> None:
        """Nothing: run() applied every fix before running the tests again."""


def _tests_pass(ctx: PhaseContext, result: RunResult) -> bool:
    return result.exit_code == 0 and ctx.tests_failed == 0


# --- composed phases -------------------------------------------------------------------------------------------


class ComposedRule:
    """When a composed phase stops before its cycle_num: checked before each cycle and after each inner phase.
    Also what git mode commits after a cycle, and what is left undone when all cycles ran without a stop."""

    commit_label = ""  # git mode: "<label> #<cycle> Finished" after every cycle; "" = no commit

    def stop_before_cycle(self, ctx: PhaseContext) -> bool:
        return False

    def stop_after_phase(self, ctx: PhaseContext, phase: str) -> bool:
        return False

    def commit_message(self, ctx: PhaseContext, cycle: int) -> str | None:
        return f"{self.commit_label} #{cycle} Finished" if self.commit_label else None

    def unfinished(self, ctx: PhaseContext, cycles: int) -> str | None:
        """A notice when the phase used all its cycles and its goal is still not met; None when it is."""
        return None


COMPOSED_PHASES: dict[str, ComposedRule] = {}


def register_composed(name: str) -> Callable[[type[ComposedRule]], type[ComposedRule]]:
    def decorate(cls: type[ComposedRule]) -> type[ComposedRule]:
        COMPOSED_PHASES[name] = cls()
        return cls

    return decorate


@register_composed("CodeCompleteAll")
class CodeCompleteAllRule(ComposedRule):
    def stop_before_cycle(self, ctx: PhaseContext) -> bool:
        ctx.env.unimplemented_file = find_unimplemented(ctx.env.codes)
        return not ctx.env.unimplemented_file

    def unfinished(self, ctx: PhaseContext, cycles: int) -> str | None:
        left = find_unimplemented(ctx.env.codes)
        return f"{left} still has unimplemented functions after {cycles} cycle(s); going on." if left else None


@register_composed("CodeReview")
class CodeReviewRule(ComposedRule):
    commit_label = "Review"

    def stop_before_cycle(self, ctx: PhaseContext) -> bool:
        ctx.env.review_finished = False
        return False

    def stop_after_phase(self, ctx: PhaseContext, phase: str) -> bool:
        return ctx.env.review_finished

    def unfinished(self, ctx: PhaseContext, cycles: int) -> str | None:
        return f"The reviewer did not declare the code finished in {cycles} cycle(s); going on with it as it is."


@register_composed("Test")
class TestCycleRule(ComposedRule):
    commit_label = "Test"

    def stop_before_cycle(self, ctx: PhaseContext) -> bool:
        ctx.env.program_ok = False
        return False

    def stop_after_phase(self, ctx: PhaseContext, phase: str) -> bool:
        return ctx.env.program_ok

    def unfinished(self, ctx: PhaseContext, cycles: int) -> str | None:
        return f"The program did not run cleanly in {cycles} test cycle(s); the quality report runs the final code."


@register_composed("HumanAgentInteraction")
class HumanAgentInteractionRule(ComposedRule):
    def stop_before_cycle(self, ctx: PhaseContext) -> bool:
        return ctx.env.human_done

    def stop_after_phase(self, ctx: PhaseContext, phase: str) -> bool:
        return ctx.env.human_done


@register_composed("Developing")
class DevelopingRule(ComposedRule):
    def stop_before_cycle(self, ctx: PhaseContext) -> bool:
        ctx.env.developing = ""  # set again by Implementing if this cycle takes a task
        return bool(ctx.env.plan_tasks) and ctx.env.next_plan_task() is None

    def commit_message(self, ctx: PhaseContext, cycle: int) -> str | None:
        task = ctx.env.developing
        if not task or task not in ctx.env.plan_done:  # the cycle developed nothing (its phase failed)
            return None
        return f"Task #{len(ctx.env.plan_done)} Finished: {' '.join(task.split())[:60]}"

    def unfinished(self, ctx: PhaseContext, cycles: int) -> str | None:
        left = [t.name for t in ctx.env.plan_tasks if t.name not in ctx.env.plan_done]
        if not left:
            return None
        return f"{len(left)} task(s) of the plan were not developed in {cycles} cycle(s): {', '.join(left)}."


def known_phase_names() -> set[str]:
    return set(PHASES) | set(COMPOSED_PHASES)


__all__ = [
    "COMPOSED_PHASES",
    "PHASES",
    "ChatEnv",
    "CompanyEvent",
    "ComposedRule",
    "PhaseContext",
    "PhaseOutcome",
    "RunCancelled",
    "RunStats",
    "SimplePhase",
    "find_conclusion",
    "find_unimplemented",
    "is_unimplemented",
    "register_composed",
    "register_phase",
]
