"""``/build <task>`` in the chat: the agent company's run, streamed into the conversation.

Each utterance is a message with the role's name and initials, phases are headers, code changes are collapsible,
and a summary card ends the run (folder, files, whether it ran, the manual). In Human mode the chat input becomes
the reviewer's comments until the user types ``end``. The run happens on a worker thread; Stop cancels it.
"""

from __future__ import annotations

import queue
import shlex
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import flet as ft

from src.db.database import get_app_setting, set_app_setting
from src.settings import get_settings

if TYPE_CHECKING:
    from src.ui.chat.chat_page import ChatPage

COMMAND = "/build"
REPLAY_COMMAND = "/replay"
_AVATAR_COLORS = (ft.Colors.BLUE, ft.Colors.GREEN, ft.Colors.PURPLE, ft.Colors.ORANGE, ft.Colors.TEAL, ft.Colors.PINK)


def parse_build_command(text: str) -> tuple[str, str] | None:
    """``/build [--config NAME] task`` -> (config, task); None when the text is not a build command."""
    stripped = text.strip()
    if not stripped.lower().startswith(COMMAND):
        return None
    rest = stripped[len(COMMAND) :].strip()
    config = "Default"
    try:
        words = shlex.split(rest)
    except ValueError:
        words = rest.split()
    if len(words) >= 2 and words[0] == "--config":
        config, words = words[1], words[2:]
    return config, " ".join(words).strip()


def _field(event: Any, name: str, default: Any = "") -> Any:
    """Events come live (CompanyEvent) or from a run's events.jsonl (dicts) when replayed."""
    return event.get(name, default) if isinstance(event, dict) else getattr(event, name, default)


def agent_bubble(role: str, text: str) -> ft.Control:
    """An agent's message: its initials in a colored avatar (the same color for the same role), name and text."""
    initials = "".join(word[0] for word in role.split()[:2]).upper() or "?"
    color = _AVATAR_COLORS[sum(map(ord, role)) % len(_AVATAR_COLORS)]
    return ft.Row(
        [
            ft.CircleAvatar(content=ft.Text(initials, size=12), bgcolor=color, radius=16),
            ft.Container(
                content=ft.Column([ft.Text(role, size=12, weight=ft.FontWeight.BOLD), ft.Text(text)], spacing=2),
                bgcolor=ft.Colors.SURFACE_CONTAINER_HIGH,
                border_radius=12,
                padding=10,
                expand=True,
            ),
        ],
        vertical_alignment=ft.CrossAxisAlignment.START,
    )


def render_event(tr: Any, event: Any) -> ft.Control | None:
    kind, text = _field(event, "kind"), _field(event, "text") or ""
    if kind == "phase":
        return ft.Text(f"— {_field(event, 'phase')} —", size=13, weight=ft.FontWeight.BOLD, color=ft.Colors.PRIMARY)
    if kind == "utterance":
        return agent_bubble(_field(event, "role") or "?", text)
    if kind == "code":
        path = (_field(event, "data", {}) or {}).get("file", "")
        return ft.ExpansionTile(
            title=ft.Text(tr("code_change", path=path), size=12),
            controls=[ft.Text(text, font_family="monospace", size=11)],
            dense=True,
        )
    if kind in ("notice", "test", "summary"):
        return ft.Text(text, size=12, italic=kind != "summary", color=ft.Colors.ON_SURFACE_VARIANT)
    if kind == "task":
        return ft.Text(tr("build_started", task=text), weight=ft.FontWeight.W_600)
    return None


def parse_replay_command(text: str) -> str | None:
    """``/replay PATH`` -> the path of a past run (its folder or log); None for other text."""
    stripped = text.strip()
    if not stripped.lower().startswith(REPLAY_COMMAND):
        return None
    return stripped[len(REPLAY_COMMAND) :].strip().strip('"')


UNSANDBOXED_CONSENT_SETTING = "company.run_unsandboxed"  # "yes": the user agreed for good (see README)


class CompanyBuild:
    """One running (or finished) build inside the chat page."""

    def __init__(self, chat: ChatPage, config: str, task: str) -> None:
        self.chat = chat
        self.app = chat.app
        self.tr = chat.tr
        self.config = config
        self.task = task
        self.cancel_event = threading.Event()
        self.human_answers: queue.Queue[str] = queue.Queue()
        self.waiting_for_human = False
        self.chat_id: str | None = None  # the conversation the build belongs to

    # The chat page's Stop button calls this, like a reply's cancel().
    def cancel(self) -> None:
        self.cancel_event.set()
        self.human_answers.put("end")

    def start(self) -> None:
        self.chat.messages.controls.append(
            ft.Text(self.tr("build_started", task=self.task), weight=ft.FontWeight.W_600)
        )
        threading.Thread(target=self._run, name="hearth-company", daemon=True).start()

    def answer(self, text: str) -> None:
        """The user's reviewer comments (Human mode)."""
        self.waiting_for_human = False
        self.chat.input.label = self.tr("message_hint")
        self.human_answers.put(text)

    def _ask_human(self, prompt: str) -> str:
        self.app.call_ui(self._show_human_prompt, prompt)
        return self.human_answers.get()

    def _show_human_prompt(self, prompt: str) -> None:
        self.waiting_for_human = True
        self.chat.messages.controls.append(self._bubble("Reviewer", prompt))
        self.chat.input.label = self.tr("reviewer_hint")
        self.chat.refresh_send_button()

    def _run(self) -> None:
        self.chat.run_workflow(self, self._build_and_run)

    def _build_and_run(self) -> Any:
        from src.errors import UnsandboxedRunRefusedError
        from src.workflows.company.runner import CompanyRun

        name = "_".join(self.task.split()[:3]) or "project"

        def company(allow_unsandboxed: bool) -> CompanyRun:
            return CompanyRun(
                self.task,
                name,
                config=self.config,
                model=self.app.handler.model,
                max_tokens=min(512, get_settings().max_new_tokens),
                on_event=lambda event: self.app.call_ui(self._show_event, event),
                cancel=self.cancel_event,
                human=self._ask_human,
                allow_unsandboxed=allow_unsandboxed,
            )

        try:
            run = company(get_app_setting(UNSANDBOXED_CONSENT_SETTING) == "yes")
        except UnsandboxedRunRefusedError as refused:
            # No sandbox starts on this machine: generated code runs only once the user has said yes, here.
            if not self._ask_consent(refused):
                raise
            run = company(True)
        return run.run()

    def _ask_consent(self, refused: Any) -> bool:
        answers: queue.Queue[bool] = queue.Queue()
        self.app.call_ui(self._show_consent_dialog, refused, answers)
        while not self.cancel_event.is_set():  # the Stop button, or the app closing, is a no
            try:
                return answers.get(timeout=0.2)
            except queue.Empty:
                continue
        return False

    def _show_consent_dialog(self, refused: Any, answers: queue.Queue[bool]) -> None:
        remember = ft.Checkbox(label=self.tr("unsandboxed_remember"), value=False)

        def answer(allowed: bool) -> None:
            if allowed and remember.value:
                set_app_setting(UNSANDBOXED_CONSENT_SETTING, "yes")
            self.app.page.pop_dialog()
            answers.put(allowed)

        self.app.page.show_dialog(
            ft.AlertDialog(
                modal=True,
                title=ft.Text(self.tr("unsandboxed_title")),
                content=ft.Column(
                    [
                        ft.Text(self.tr("weak_sandbox_body" if refused.mode == "landlock" else "unsandboxed_body")),
                        ft.Text(refused.reason, size=12, selectable=True),
                        remember,
                    ],
                    tight=True,
                    width=520,
                ),
                actions=[
                    ft.TextButton(self.tr("cancel"), on_click=lambda e: answer(False)),
                    ft.FilledButton(self.tr("unsandboxed_run"), on_click=lambda e: answer(True)),
                ],
            )
        )

    # --- rendering ---------------------------------------------------------------------------------------------

    def _show_event(self, event: Any) -> None:
        if self.chat.chat_id != self.chat_id:
            return  # the user is looking at another conversation; the run's log keeps everything
        control = render_event(self.tr, event)
        if control is not None:
            self.chat.messages.controls.append(control)

    def _bubble(self, role: str, text: str) -> ft.Control:
        return agent_bubble(role, text)

    def transcript(self, result: Any) -> str:
        """What the conversation keeps (every utterance is in the run's log, replayable)."""
        return result.summary

    def summary_card(self, result: Any) -> ft.Control:
        folder = Path(result.folder)
        manual = folder / "manual.md"

        def view_manual(e: Any) -> None:
            text = manual.read_text(encoding="utf-8") if manual.is_file() else self.tr("no_manual")
            self.app.page.show_dialog(
                ft.AlertDialog(
                    title=ft.Text(self.tr("view_manual")),
                    content=ft.Container(ft.Markdown(text), width=640, height=420),
                    actions=[ft.TextButton(self.tr("dismiss"), on_click=lambda e: self.app.page.pop_dialog())],
                    scrollable=True,
                )
            )

        async def open_folder(e: Any) -> None:
            await ft.UrlLauncher().launch_url(folder.as_uri())

        title = self.tr("build_cancelled") if result.cancelled else self.tr("build_summary")
        return ft.Card(
            content=ft.Container(
                padding=16,
                content=ft.Column(
                    [
                        ft.Text(title, size=16, weight=ft.FontWeight.W_600),
                        ft.Text(result.summary),
                        ft.Text(str(folder), size=12, color=ft.Colors.ON_SURFACE_VARIANT),
                        ft.Row(
                            [
                                ft.OutlinedButton(self.tr("open_folder"), icon=ft.Icons.FOLDER_OPEN, on_click=open_folder),
                                ft.OutlinedButton(self.tr("view_manual"), icon=ft.Icons.MENU_BOOK, on_click=view_manual),
                            ]
                        ),
                    ],
                    spacing=6,
                ),
            )
        )
