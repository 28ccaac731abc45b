"""The agent company's runner: walks a configuration's chain of phases for one task and leaves a project folder.

``CompanyRun(task, name, model=...).run()`` creates ``WareHouse/<name>_<org>_<timestamp>/`` and fills it as ChatDev
does: the generated files, ``<name>.prompt``, copies of the three configuration files used, ``meta.txt``,
``requirements.txt``, ``manual.md`` and a ``<timestamp>.log`` with every utterance, code diff, test report and
notice, appended as it happens so that a crash or a cancel leaves a readable log. Every step is reported to
``on_event`` as a ``CompanyEvent``; the run always ends with a quality report (files, lines, whether the program
runs, tests, lint and security findings) and a ``CompanyResult``, also when cancelled or when phases fail.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from src.errors import CompanyError, InvalidParameterError
from src.settings import get_settings
from src.utils.generation import ChatModel
from src.workflows.company.config import (
    CONFIG_FILES,
    CompanyConfig,
    ComposedStep,
    SimpleStep,
    load_company_config,
)
from src.workflows.company.memory import EVENTS_FILE, ExperiencePool
from src.workflows.company.phases import (
    COMPOSED_PHASES,
    PHASES,
    TEST_RUNNER_FILE,
    ChatEnv,
    CompanyEvent,
    ComposedRule,
    PhaseContext,
    RunCancelled,
    shorten,
)
from src.workflows.company.sandbox import (
    RunResult,
    ToolResult,
    nested_repositories,
    require_containment,
    run_analyzer,
    run_git,
    run_program,
    sandbox_description,
)
from src.workflows.company.warehouse import ProjectFolder

logger = logging.getLogger(__name__)

GIT_TIMEOUT_S = 30.0
ANALYSIS_TIMEOUT_S = 120.0  # ruff and bandit on a small project take a second; this only catches a hang
GUI_SENTENCE = "The software should have a graphical user interface, made with a standard GUI toolkit."

__all__ = ["CompanyEvent", "CompanyResult", "CompanyRun"]


@dataclass
class CompanyResult:
    folder: Path
    files: list[str]
    lines: int
    ran_ok: bool | None  # None: never run (no main.py, cancelled)
    run_summary: str
    tests_passed: int
    tests_failed: int
    lint_findings: int  # -1: ruff unavailable
    security_findings: int  # -1: bandit unavailable
    model_calls: int
    prompt_tokens: int
    completion_tokens: int
    utterances: int
    duration_s: float
    cancelled: bool
    summary: str  # a few human lines (also the chat summary card text)


def safe_folder_name(text: str, default: str) -> str:
    """Letters (any script), digits, '-' and '_' only, at most 60 characters: usable on every OS."""
    cleaned = re.sub(r"[^\w-]+", "_", text, flags=re.UNICODE).strip("_-.")[:60].strip("_-.")
    return cleaned or default


DEFAULT_MAX_TOKENS = 512
DISABLED_GIT_NAME = ".git-disabled-by-hearth"


class CompanyRun:
    def __init__(
        self,
        task: str,
        name: str,
        *,
        config: str | Path = "Default",
        org: str = "DefaultOrganization",
        model: ChatModel | Callable[[str], ChatModel],
        warehouse_root: Path | None = None,
        max_turns: int | None = None,
        max_tokens: int | None = None,
        on_event: Callable[[CompanyEvent], None] | None = None,
        cancel: threading.Event | None = None,
        human: Callable[[str], str] | None = None,
        run_timeout_s: float = 10.0,
        git: bool | None = None,
        base_folder: Path | str | None = None,
        allow_unsandboxed: bool = False,
    ) -> None:
        if not task or not task.strip():
            raise InvalidParameterError("The company needs a task: describe the program to write.")
        if max_tokens is not None and max_tokens < 1:
            raise InvalidParameterError("max_tokens must be at least 1.")
        if run_timeout_s <= 0:
            raise InvalidParameterError("run_timeout_s must be positive.")
        self.task = task.strip()
        self.name = safe_folder_name(name, "project")
        self.org = safe_folder_name(org, "DefaultOrganization")
        # Checked now, like the configuration: a run that may not execute its programs is refused before anything
        # is asked of a model or written.
        self.sandbox = require_containment(allow_unsandboxed)
        # Loaded now so that a broken configuration is reported before anything runs or is written.
        self.config: CompanyConfig = load_company_config(config)
        self.config.unsupported_phases = _unsupported_phases(self.config)
        if hasattr(model, "stream"):
            single = model
            self._resolver: Callable[[str], ChatModel] = lambda role: single  # type: ignore[assignment,return-value]
        elif callable(model):
            self._resolver = model
        else:
            raise InvalidParameterError("model must be a chat model or a function from role name to chat model.")
        self._models: dict[str, ChatModel] = {}
        self.warehouse_root = Path(warehouse_root) if warehouse_root is not None else get_settings().warehouse_dir
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.on_event = on_event
        self.cancel = cancel or threading.Event()
        self.human = human
        self.run_timeout_s = run_timeout_s
        self.git = self.config.chain.git_management if git is None else git
        # incremental_develop (ChatDev's --path): the run starts from an existing program's files and improves it.
        # A folder given without that option still means "improve this", so it switches the option on.
        self.base_folder = Path(base_folder).expanduser().resolve() if base_folder is not None else None
        if self.base_folder is not None:
            if not self.base_folder.is_dir():
                raise InvalidParameterError(f"The program to build on is not a folder: {self.base_folder}")
        elif self.config.chain.incremental_develop:
            raise InvalidParameterError(
                f"The configuration {self.config.name} improves an existing program (incremental_develop): "
                "give that program's folder (--path FOLDER)."
            )
        self._git_ok = False
        self._git_dir: Path | None = None  # the repository, outside the project while the run lasts
        self.folder: Path | None = None
        self.log_path: Path | None = None
        self._own_files: dict[str, _OwnFile] = {}  # the log and events.jsonl, by name, while the run lasts
        self._journal: Path | None = None  # where they are kept meanwhile, in the data folder

    # --- plumbing ------------------------------------------------------------------------------------------

    def _model_for(self, role: str) -> ChatModel:
        if role not in self._models:
            self._models[role] = self._resolver(role)
        return self._models[role]

    def _log(self, text: str) -> None:
        if self.log_path is None:
            return
        try:
            # Appended per entry: a crash or a cancel leaves every entry so far complete on disk.
            self._own_file(self.log_path).append(text.rstrip("\n") + "\n\n")
        except OSError as exc:
            logger.warning("Could not write the company log %s: %s", self.log_path, exc)

    def _record(self, item: dict[str, Any]) -> None:
        """One JSON line per event in events.jsonl: what replay and the experience pool read back."""
        if self.folder is None:
            return
        try:
            line = json.dumps({"t": time.time(), **item}, ensure_ascii=False, default=str) + "\n"
            self._own_file(self.folder / EVENTS_FILE).append(line)
        except OSError as exc:
            logger.warning("Could not write the company's events: %s", exc)

    def _own_file(self, path: Path) -> _OwnFile:
        if path.name not in self._own_files:
            if self._journal is None:
                journals = get_settings().data_dir / "company-journal"
                journals.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._journal = Path(tempfile.mkdtemp(prefix=f"{path.parent.name}-", dir=journals))
            self._own_files[path.name] = _OwnFile(path, self._journal / path.name)
        return self._own_files[path.name]

    def _publish_own_files(self, ctx: PhaseContext | None, *, last: bool = False) -> None:
        """Put the log and events.jsonl into the project (again: ``last`` adds what was written since, and lets the
        journal go once every file is in place)."""
        published = True
        for own in self._own_files.values():
            try:
                own.publish()
            except OSError as exc:
                published = False
                logger.warning("Could not put %s into the project: %s", own.path, exc)
                if ctx is not None:
                    ctx.notice("Run", f"{own.path.name} could not be put into the project ({exc}); it is in {own.journal}.")
            if last:
                own.close()
        if last:
            self._own_files.clear()
            if published and self._journal is not None:
                shutil.rmtree(self._journal, ignore_errors=True)
            self._journal = None

    def _emit(self, event: CompanyEvent) -> None:
        self._record(asdict(event))
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if event.kind == "phase":
            where = f" (cycle {event.data['cycle']} of {event.data['composed']})" if event.data.get("composed") else ""
            self._log(f"[{stamp}] ===== Phase {event.phase}{where} =====")
        elif event.kind == "utterance":
            self._log(f"[{stamp}] [{event.phase}] turn {event.turn} | {event.role}:\n{event.text}")
        elif event.kind == "code":
            self._log(f"[{stamp}] [{event.phase}] Code change in {event.data.get('file')}:\n{event.text}")
        elif event.kind == "notice":
            self._log(f"[{stamp}] [{event.phase}] NOTICE: {event.text}")
        elif event.kind == "test":
            self._log(f"[{stamp}] [{event.phase}] Test report:\n{event.text}")
        elif event.kind == "summary":
            self._log(f"[{stamp}] ===== Summary =====\n{event.text}")
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a broken UI callback must not end the company's run
                logger.exception("The company's on_event callback failed on a %s event", event.kind)

    def _make_folder(self) -> tuple[Path, str]:
        stamp = time.strftime("%Y%m%d%H%M%S")
        base = self.warehouse_root / f"{self.name}_{self.org}_{stamp}"
        folder, counter = base, 1
        while folder.exists():  # two runs of the same name in the same second
            counter += 1
            folder = base.with_name(f"{base.name}_{counter}")
        folder.mkdir(parents=True)
        return folder, stamp

    # --- git -------------------------------------------------------------------------------------------------

    def _git(self, *args: str) -> ToolResult:
        if self.folder is None or self._git_dir is None:  # only called once _git_init has made both
            raise RuntimeError("the company run has no repository yet")
        return run_git(list(args), git_dir=self._git_dir, work_tree=self.folder, timeout_s=GIT_TIMEOUT_S, sandbox=self.sandbox)

    def _git_init(self, ctx: PhaseContext) -> None:
        if not self.git or self.folder is None:
            return
        if shutil.which("git") is None:
            ctx.notice("Git", "Git mode is on but git is not installed; the project has no version history.")
            return
        # The repository lives outside the project until the run ends (see sandbox.run_git): the generated program
        # runs in the project and must not be able to write git's configuration or hooks.
        repositories = get_settings().data_dir / "company-git"
        repositories.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._git_dir = Path(tempfile.mkdtemp(prefix=f"{self.folder.name}-", dir=repositories))
        done = self._git("init", "-q")
        self._git_ok = done.exit_code == 0
        if not self._git_ok:
            ctx.notice("Git", f"git init failed: {done.stderr.strip() or 'could not run git'}")

    def _commit(self, ctx: PhaseContext, message: str) -> None:
        if not self._git_ok or self.folder is None:
            return
        nested = nested_repositories(self.folder)
        if nested:
            # git would run inside such a repository, under its configuration (filters, fsmonitor): that is the
            # program's configuration, not ours. Its history stops here rather than run what the program chose.
            ctx.notice(
                "Git",
                f"Not committing {message!r}: the program made a git repository of its own in "
                f"{', '.join(nested)}, whose configuration git would follow. Remove it to record history again.",
            )
            return
        added = self._git("add", "-A")
        done = self._git("commit", "-q", "--no-verify", "--allow-empty", "-m", message) if added.exit_code == 0 else added
        if done.exit_code != 0:
            ctx.notice("Git", f"git commit {message!r} failed: {done.stderr.strip() or 'git did not run'}")
        else:
            self._log(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] git commit: {message}")

    def _hand_over_repository(self, ctx: PhaseContext) -> None:
        """Once nothing of the project runs any more, its history moves into the project as ``.git`` (where
        ChatDev users look for it), replacing whatever ``.git`` the program itself may have left there."""
        if self._git_dir is None or self.folder is None:
            return
        git_dir, self._git_dir = self._git_dir, None
        if not self._git_ok:
            shutil.rmtree(git_dir, ignore_errors=True)
            return
        target = self.folder / ".git"
        try:
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.exists():
                shutil.rmtree(target)
                ctx.notice("Git", "The program had made a .git folder of its own; it was replaced by the history.")
            shutil.move(str(git_dir), target)
        except OSError as exc:
            ctx.notice("Git", f"The project's history stays in {git_dir}: it could not be moved into the project ({exc}).")
            return
        # init recorded where the work tree was; inside the project, git finds it by itself (and the folder can move).
        run_git(["config", "--unset", "core.worktree"], git_dir=target, work_tree=self.folder, timeout_s=GIT_TIMEOUT_S,
                sandbox=self.sandbox)  # fmt: skip

    def _disable_nested_repositories(self, ctx: PhaseContext) -> None:
        """A repository the program made inside the project carries the program's git configuration (a filter or
        fsmonitor command), which a plain ``git status`` in the project runs later, on the user's machine and
        outside any sandbox. Renamed, it is inert (git no longer sees a repository) and nothing is lost."""
        for relative in nested_repositories(self.folder, limit=1000) if self.folder is not None else []:
            nested = self.folder / relative / ".git"
            inert = nested.with_name(DISABLED_GIT_NAME)
            try:
                if inert.exists() or inert.is_symlink():
                    raise FileExistsError(f"{inert} exists")
                nested.rename(inert)
            except OSError as exc:  # never leave it working: without the rename, remove it
                logger.warning("Could not rename %s (%s); removing it", nested, exc)
                if nested.is_dir() and not nested.is_symlink():
                    shutil.rmtree(nested, ignore_errors=True)
                else:
                    nested.unlink(missing_ok=True)
            ctx.notice(
                "Git",
                f"The program left a git repository in {relative}; its .git was renamed to {DISABLED_GIT_NAME} so that "
                "git in the project does not follow the program's configuration.",
            )

    # --- files of the run ------------------------------------------------------------------------------------

    def _write_own(self, project: ProjectFolder, name: str, content: str | bytes) -> None:
        try:
            project.write_file(name, content)
        except CompanyError as exc:
            logger.warning("Could not write %s: %s", name, exc)

    def _meta(self, env: ChatEnv, ctx: PhaseContext, quality: dict[str, str] | None) -> str:
        chain = self.config.chain
        options = {
            "clear_structure": chain.clear_structure, "gui_design": chain.gui_design, "git_management": self.git,
            "web_spider": chain.web_spider, "self_improve": chain.self_improve,
            "incremental_develop": self.base_folder is not None, "with_memory": chain.with_memory,
        }  # fmt: skip
        sections = [
            ("Task", self.task),
            ("Config", "\n".join([f"Name: {self.config.name}", f"Folder: {self.config.folder}"]
                                 + [f"ChatEnvConfig.{key}: {value}" for key, value in options.items()])),
            ("Roster", ", ".join(chain.recruitments)),
            ("Modality", env.modality),
            ("Ideas", env.ideas),
            ("Language", env.language),
            ("Code_Version", f"{float(ctx.code_version):.1f}"),
            ("Proposed_images", "0"),
            ("Incorporated_images", "0"),
        ]  # fmt: skip
        sections += list((quality or {}).items())
        return "".join(f"{key}:\n{value}\n\n" for key, value in sections)

    # --- the run ---------------------------------------------------------------------------------------------

    def run(self) -> CompanyResult:
        try:
            return self._run()
        finally:
            self._publish_own_files(None, last=True)

    def _run(self) -> CompanyResult:
        started = time.monotonic()
        folder, stamp = self._make_folder()
        self.folder = folder
        self.log_path = folder / f"{stamp}.log"
        self._record({"kind": "task", "text": self.task, "data": {"config": str(self.config.name)}})
        project = ProjectFolder(folder)
        prompt_file = f"{self.name}.prompt"
        reserved = {prompt_file, "meta.txt", self.log_path.name, TEST_RUNNER_FILE, EVENTS_FILE, *CONFIG_FILES}
        env = ChatEnv(
            task=self.task,
            background_prompt=self.config.chain.background_prompt,
            gui=GUI_SENTENCE if self.config.chain.gui_design else "",
        )
        ctx = PhaseContext(
            config=self.config,
            env=env,
            project=project,
            model_for_role=self._model_for,
            emit=self._emit,
            cancel=self.cancel,
            # Without an explicit limit each step uses its configured max_tokens (else 512); an explicit limit
            # (--max-tokens, the GUI's reply length) caps every step, since the user asked for shorter calls.
            max_tokens=self.max_tokens or DEFAULT_MAX_TOKENS,
            cap_tokens=self.max_tokens is not None,
            max_turns=self.max_turns,
            run_timeout_s=self.run_timeout_s,
            human=self.human,
            reserved=reserved,
        )
        self._log(
            f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] Hearth agent company: task {self.task!r}, config "
            f"{self.config.name} ({self.config.folder}), inherited files: {', '.join(self.config.inherited_files) or 'none'}"
        )
        self._write_own(project, prompt_file, self.task + "\n")
        for file_name, source in self.config.sources.items():
            try:
                self._write_own(project, file_name, source.read_bytes())
            except OSError as exc:
                ctx.notice("Setup", f"Could not copy {file_name}: {exc}")
        self._write_own(project, "meta.txt", self._meta(env, ctx, None))
        if self.config.chain.with_memory:
            self._load_lessons(ctx)
        self._git_init(ctx)
        if self.base_folder is not None:
            self._import_base_program(ctx, project, reserved)

        cancelled = False
        try:
            self._run_chain(ctx)
        except RunCancelled:
            cancelled = True
        except Exception as exc:  # a bug in the runner itself: still finish with a report
            logger.exception("The company run failed")
            ctx.notice("Run", f"The run stopped on an unexpected error: {exc}")
        cancelled = cancelled or self.cancel.is_set()
        if cancelled:
            ctx.notice("Run", "The run was cancelled; the project folder holds what was done so far.")
        return self._finish(ctx, project, started, cancelled)

    def _load_lessons(self, ctx: PhaseContext) -> None:
        """with_memory: experiences from earlier runs similar to this task, for the coding prompts."""
        try:
            ctx.lessons = ExperiencePool().prompt_for(self.task)
        except Exception as exc:  # a damaged pool must not stop the run: it goes on without lessons
            logger.exception("The experience pool could not be read")
            ctx.notice("Setup", f"The experience pool could not be read ({exc}); no lessons are added.")
            return
        found = "lessons from similar runs added" if ctx.lessons else "nothing similar yet"
        ctx.notice("Setup", f"Experience pool: {found}.")

    def _import_base_program(self, ctx: PhaseContext, project: ProjectFolder, reserved: set[str]) -> None:
        """Copy the existing program's files (not an earlier run's own log, meta, prompt or configs) into the
        project folder, so that every phase sees them as the code so far and the original stays untouched."""
        source = ProjectFolder(self.base_folder)  # type: ignore[arg-type]  # set when this is called
        own_files = {name.lower() for name in reserved}  # meta.txt, events.jsonl, the three configs, ...
        imported: list[str] = []
        for path, text in source.snapshot().items():
            name = path.rsplit("/", 1)[-1]
            if name.lower() in own_files or name.endswith((".log", ".prompt")):
                continue
            try:
                project.write_file(path, text)
            except CompanyError as exc:
                ctx.notice("Setup", f"Not imported from {self.base_folder}: {exc}")
                continue
            imported.append(path)
        ctx.refresh_codes()
        listed = ", ".join(imported[:20]) + (f" and {len(imported) - 20} more" if len(imported) > 20 else "")
        ctx.notice("Setup", f"Incremental development from {self.base_folder}: {listed or 'no files found'}.")
        self._commit(ctx, "Base Version")

    def _run_chain(self, ctx: PhaseContext) -> None:
        unsupported = set(self.config.unsupported_phases)
        for step in self.config.chain.chain:
            ctx.check_cancel()
            if step.phase == "Coding" and self.base_folder is not None:
                # Writing the program from scratch would throw away the one we were asked to improve.
                ctx.notice(step.phase, "Incremental development: the existing code is kept, Coding is skipped.")
                continue
            if step.phase in unsupported:
                ctx.notice(step.phase, f"The phase {step.phase} is not supported by Hearth (no phase class); skipped.")
                continue
            if isinstance(step, ComposedStep):
                self._run_composed(ctx, step, unsupported)
            else:
                self._run_simple(ctx, step)
                if step.phase == "Coding":
                    self._commit(ctx, "Finish Coding")

    def _run_composed(self, ctx: PhaseContext, step: ComposedStep, unsupported: set[str]) -> None:
        rule = COMPOSED_PHASES.get(step.phase, ComposedRule())  # unknown composed phase: all cycle_num cycles
        for cycle in range(1, step.cycle_num + 1):
            ctx.check_cancel()
            ctx.refresh_codes()
            if rule.stop_before_cycle(ctx):
                return
            stop = False
            for inner in step.composition:
                if inner.phase in unsupported:
                    ctx.notice(inner.phase, f"The phase {inner.phase} is not supported by Hearth; skipped.")
                    continue
                self._run_simple(ctx, inner, composed=step.phase, cycle=cycle)
                if rule.stop_after_phase(ctx, inner.phase):
                    stop = True
                    break
            message = rule.commit_message(ctx, cycle)
            if message:
                self._commit(ctx, message)
            if stop:
                return
        ctx.refresh_codes()
        left = rule.unfinished(ctx, step.cycle_num)
        if left:
            ctx.notice(step.phase, left)

    def _run_simple(self, ctx: PhaseContext, step: SimpleStep, *, composed: str = "", cycle: int = 0) -> None:
        ctx.check_cancel()
        ctx.refresh_codes()
        self._emit(CompanyEvent("phase", phase=step.phase, data={"composed": composed, "cycle": cycle}))
        spec = self.config.phases[step.phase]
        phase = PHASES[step.phase](spec, step)
        try:
            outcome = phase.execute(ctx)
        except RunCancelled:
            raise
        except Exception as exc:  # one phase failing (a model error, a bug) must not end the company's run
            logger.exception("Phase %s failed", step.phase)
            ctx.notice(step.phase, f"The phase failed and was skipped: {exc}")
            return
        if outcome.skipped and not outcome.replies:
            logger.info("Phase %s had nothing to do", step.phase)

    # --- the end ---------------------------------------------------------------------------------------------

    def _finish(self, ctx: PhaseContext, project: ProjectFolder, started: float, cancelled: bool) -> CompanyResult:
        if self.folder is None:  # only called once run() has made the folder
            raise RuntimeError("the company run has no project folder yet")
        ctx.refresh_codes()
        files = sorted(ctx.env.codes)
        lines = sum(len(text.splitlines()) for text in ctx.env.codes.values())
        # A run made before the last code change says nothing about the final code: run that again.
        result: RunResult | None = ctx.run_of_current_code()
        if result is None and not cancelled and "main.py" in files:
            try:
                result = run_program(project.root, "main.py", timeout_s=self.run_timeout_s, stdin="")
                ctx.last_run = result
                self._emit(CompanyEvent("test", phase="Quality", text=result.summary(), data={"ok": result.ok}))
            except CompanyError as exc:
                ctx.notice("Quality", str(exc))
        if result is not None:
            ran_ok: bool | None = not result.crashed
            run_summary = result.summary()
        else:
            ran_ok = None
            run_summary = "Not run: " + ("the run was cancelled." if cancelled else "there is no main.py.")
        has_python = any(name.endswith(".py") for name in files)
        lint = _ruff_findings(ctx, project.root, self.sandbox) if has_python else 0
        security = _bandit_findings(ctx, project.root, self.sandbox) if has_python else 0
        duration = time.monotonic() - started
        stats = ctx.stats
        quality = {
            "Quality_Files": f"{len(files)} ({', '.join(files)})" if files else "0",
            "Quality_Lines": str(lines),
            "Quality_Ran": ("yes" if ran_ok else "no" if ran_ok is False else "not run") + f" - {run_summary}",
            "Quality_Tests": f"{ctx.tests_passed} passed, {ctx.tests_failed} failed",
            "Quality_Lint_Findings": str(lint) if lint >= 0 else "ruff unavailable",
            "Quality_Security_Findings": str(security) if security >= 0 else "bandit unavailable",
            "Sandbox": sandbox_description(result.sandbox) if result is not None else "no program was run",
            "Model_Calls": str(stats.model_calls),
            "Tokens": f"{stats.prompt_tokens} prompt, {stats.completion_tokens} completion",
            "Utterances": str(stats.utterances),
            "Duration": f"{duration:.1f} s",
            "Cancelled": str(cancelled),
        }
        self._write_own(project, "meta.txt", self._meta(ctx.env, ctx, quality))
        self._disable_nested_repositories(ctx)  # nothing of the project runs any more; the user's git will
        self._publish_own_files(ctx)  # before the history records them
        if self._git_ok:
            self._commit(ctx, "Final Version")
        self._hand_over_repository(ctx)
        relative = self.folder.name
        summary_lines = [
            f"{'Cancelled: ' if cancelled else ''}{self.name}: {len(files)} file(s), {lines} line(s) in {relative}",
            f"Run: {run_summary}",
            f"Sandbox: {quality['Sandbox']}.",
            (
                f"Tests: {ctx.tests_passed} passed, {ctx.tests_failed} failed. Lint findings: "
                f"{lint if lint >= 0 else 'n/a'}. Security findings: {security if security >= 0 else 'n/a'}."
            ),
            (
                f"Model: {stats.model_calls} call(s), {stats.prompt_tokens} + {stats.completion_tokens} tokens, "
                f"{stats.utterances} utterance(s), {duration:.1f} s."
            ),
        ]
        summary = "\n".join(summary_lines)
        company_result = CompanyResult(
            folder=self.folder,
            files=files,
            lines=lines,
            ran_ok=ran_ok,
            run_summary=run_summary,
            tests_passed=ctx.tests_passed,
            tests_failed=ctx.tests_failed,
            lint_findings=lint,
            security_findings=security,
            model_calls=stats.model_calls,
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            utterances=stats.utterances,
            duration_s=duration,
            cancelled=cancelled,
            summary=summary,
        )
        self._log("Statistics:\n" + "\n".join(f"{key}: {value}" for key, value in quality.items()))
        self._emit(CompanyEvent("summary", text=summary, data={"folder": str(self.folder), **quality}))
        logger.info("Company run finished in %s: %s", self.folder, shorten(summary, 500))
        return company_result


def _unsupported_phases(config: CompanyConfig) -> list[str]:
    """Phases to skip, in chain order: simple phases without a class, and composed phases none of whose inner
    phases can run (ChatDev's Art). A composed phase we have no rule for but whose phases we know runs its
    cycle_num cycles, which is why this is computed here rather than by the loader's known_phase_classes."""
    unsupported: list[str] = []

    def mark(name: str) -> None:
        if name not in unsupported:
            unsupported.append(name)

    for step in config.chain.chain:
        if isinstance(step, ComposedStep):
            missing = [inner.phase for inner in step.composition if inner.phase not in PHASES]
            if step.phase not in COMPOSED_PHASES and len(missing) == len(step.composition):
                mark(step.phase)
            for name in missing:
                mark(name)
        elif step.phase not in PHASES:
            mark(step.phase)
    return unsupported


class _OwnFile:
    """One of the run's own files (the log, events.jsonl), kept in Hearth's data folder while the run lasts and
    published into the project folder (``path``) when nothing of the program runs any more.

    The generated program runs in the project folder: a file of Hearth's there could be replaced by a link to a file
    of the user's (so that Hearth's next line lands in ~/.bashrc) or rewritten (events.jsonl feeds the experience
    pool, hence later runs' prompts). Outside its reach until the end, the journal is only ever written by Hearth;
    publishing replaces whatever the program left at ``path`` (a name: never what a link points to) with a file
    made under a random name. If Hearth stops before the end, the journal stays in the data folder.
    """

    def __init__(self, path: Path, journal: Path) -> None:
        self.path, self.journal = path, journal
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        self._fd: int | None = os.open(journal, flags, 0o600)

    def append(self, text: str) -> None:
        if self._fd is None:
            raise OSError(f"{self.path.name} is closed")
        data = text.encode("utf-8")
        while data:
            data = data[os.write(self._fd, data) :]

    def publish(self) -> None:
        """Copy the journal to ``path``, replacing what is there."""
        content = self.journal.read_bytes()
        fd, temporary = tempfile.mkstemp(prefix=".hearth-", dir=self.path.parent)  # O_EXCL, random: not plantable
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.chmod(temporary, 0o644)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _analysis(ctx: PhaseContext, module: str, args: list[str], folder: Path, sandbox: str) -> str | None:
    """stdout of the analyzer ``module`` run on the project (static analysis only: nothing of it executes)."""
    if find_spec(module) is None:
        ctx.notice("Quality", f"{module} is not installed; its findings are not counted.")
        return None
    done = run_analyzer(module, args, folder, timeout_s=ANALYSIS_TIMEOUT_S, sandbox=sandbox)
    if done.exit_code is None:
        ctx.notice("Quality", f"{module} could not check the project: {done.stderr}")
        return None
    return done.stdout


def _files_to_analyze(folder: Path) -> list[str]:
    """The project's Python files, named one by one: regular files only, of a size Hearth would read. Given the
    folder instead, the analyzers would follow a symbolic link the program left (to ``/dev/zero``, to a file of the
    user's) or hang on a FIFO named ``x.py``."""
    project = ProjectFolder(folder)
    files = [name for name in project.list_files() if name.endswith(".py")][:_MAX_ANALYZED_FILES]
    sizes = {name: (project.root / name).lstat().st_size for name in files}
    return [str(project.root / name) for name in files if sizes[name] <= project.max_file_bytes]


_MAX_ANALYZED_FILES = 500


def _ruff_findings(ctx: PhaseContext, folder: Path, sandbox: str) -> int:
    # --isolated: the project's own rules, not those of a pyproject.toml the WareHouse happens to sit under.
    files = _files_to_analyze(folder)
    if not files:
        return 0
    out = _analysis(ctx, "ruff", ["check", "--isolated", "--output-format", "json", "--no-cache", *files], folder, sandbox)
    if out is None:
        return -1
    try:
        return len(json.loads(out or "[]"))
    except ValueError:
        ctx.notice("Quality", "ruff's report could not be read.")
        return -1


def _bandit_findings(ctx: PhaseContext, folder: Path, sandbox: str) -> int:
    # B101 (assert) is skipped: pytest tests are made of asserts, which are not a security problem there.
    # --ini /dev/null: a .bandit file in the project would otherwise choose bandit's targets, skips and exclusions
    # (the program grading its own report); /dev/null has no [bandit] section, so nothing is taken from it.
    files = _files_to_analyze(folder)
    if not files:
        return 0
    out = _analysis(ctx, "bandit", ["-f", "json", "-q", "--ini", os.devnull, "--skip", "B101", *files], folder, sandbox)
    if out is None:
        return -1
    try:
        return len(json.loads(out).get("results", []))
    except (ValueError, AttributeError):
        ctx.notice("Quality", "bandit's report could not be read.")
        return -1
