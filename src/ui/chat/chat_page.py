"""The chat page: conversations on the left; messages, the model picker and the input on the right."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flet as ft

from src.db.chats import ChatStore, StoredChat, StoredMessage
from src.db.database import get_app_setting, set_app_setting
from src.errors import HearthError
from src.ui.chat.message_view import assistant_body, markdown
from src.ui.streaming import ReplyPump
from src.ui.workflows.company_view import CompanyBuild, parse_build_command, parse_replay_command, render_event
from src.ui.workflows.evolution_view import COMMAND as EVOLVE_COMMAND
from src.ui.workflows.evolution_view import EvolutionChatRun, parse_evolve_command
from src.utils.generation import FINISH_CANCELLED, GenerationResult
from src.utils.ModelManager import STATUS_EMBEDDED, STATUS_READY
from src.utils.providers import PROVIDER_LOCAL, PROVIDER_OPENAI_COMPATIBLE
from src.utils.shutdown import stops_at_shutdown

if TYPE_CHECKING:
    from src.ui.app import HearthApp

logger = logging.getLogger(__name__)

LAST_CHAT_SETTING = "last_chat_id"


class _PendingReply:
    """Stands in for a reply while the model accepts the request, so Stop works from the first moment."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


class ChatPage:
    def __init__(self, app: HearthApp) -> None:
        self.app = app
        self.tr = app.tr
        self.chats = ChatStore()
        self.chat_id: str | None = get_app_setting(LAST_CHAT_SETTING)
        if self.chat_id and self.chats.get_chat(self.chat_id) is None:
            self.chat_id = None
        self.reply = None  # the ChatReply being streamed, if any
        self.pump: ReplyPump | None = None
        self.sent_at: float | None = None
        tr = self.tr

        self.search = ft.TextField(
            label=tr("search_chats"), prefix_icon=ft.Icons.SEARCH, dense=True, on_change=lambda e: self.refresh_list()
        )
        self.chat_list = ft.ListView(expand=True, spacing=2)
        sidebar = ft.Container(
            width=260,
            padding=12,
            content=ft.Column(
                [
                    ft.FilledButton(tr("new_chat"), icon=ft.Icons.ADD, on_click=lambda e: self.new_chat()),
                    self.search,
                    self.chat_list,
                ],
                expand=True,
            ),
        )
        self.title = ft.Text(size=18, weight=ft.FontWeight.W_600, expand=True, no_wrap=True, overflow=ft.TextOverflow.ELLIPSIS)
        self.model_picker = ft.Dropdown(label=tr("model"), width=260, dense=True, on_select=self._pick_model)
        self.model_status = ft.Text(size=12, color=ft.Colors.ON_SURFACE_VARIANT)
        header = ft.Container(
            padding=ft.Padding.symmetric(horizontal=16, vertical=8),
            content=ft.Row(
                [
                    self.title,
                    ft.IconButton(ft.Icons.EDIT_OUTLINED, tooltip=tr("rename"), on_click=lambda e: self.ask_rename()),
                    ft.IconButton(ft.Icons.DELETE_OUTLINE, tooltip=tr("delete"), on_click=lambda e: self.ask_delete()),
                    ft.IconButton(
                        ft.Icons.TUNE, tooltip=tr("system_prompt"), on_click=lambda e: self.ask_system_prompt()
                    ),
                    ft.Column([ft.Semantics(label=tr("model"), content=self.model_picker), self.model_status], spacing=2),
                ]
            ),
        )
        self.messages = ft.ListView(expand=True, spacing=12, auto_scroll=True, padding=16)
        self.input = ft.TextField(
            label=tr("message_hint"),
            multiline=True,
            shift_enter=True,
            min_lines=1,
            max_lines=8,
            expand=True,
            autofocus=True,
            on_submit=lambda e: self.send_or_stop(from_enter=True),
            on_change=lambda e: self.refresh_send_button(),
        )
        self.send_button = ft.FilledButton(tr("send"), icon=ft.Icons.SEND, on_click=lambda e: self.send_or_stop())
        composer = ft.Container(
            padding=ft.Padding.only(left=16, right=16, bottom=16, top=4),
            content=ft.Row([self.input, self.send_button], vertical_alignment=ft.CrossAxisAlignment.END),
        )
        self.view = ft.Row(
            [
                sidebar,
                ft.VerticalDivider(width=1),
                ft.Column([header, ft.Divider(height=1), self.messages, composer], expand=True, spacing=0),
            ],
            expand=True,
            spacing=0,
        )
        self.refresh_send_button()
        app.in_background(self._warm_up)

    # --- model ---------------------------------------------------------------------------------------------------

    def _warm_up(self) -> None:
        """Load the local model in the background so the window is usable at once and the first reply is quick."""
        model = self.app.handler.model
        engine = getattr(model, "_engine", None)
        if engine is None:
            return
        name = model.model_name
        self.app.call_ui(self._set_model_status, self.tr("model_loading", model=name))
        engine.load_model(name)
        self.app.call_ui(self._set_model_status, self.tr("model_ready", model=name))

    def _set_model_status(self, text: str) -> None:
        self.model_status.value = text

    def model_changed(self) -> None:
        self.refresh_model_picker()
        self.app.in_background(self._warm_up)
        self.app.page.update()

    def refresh_model_picker(self) -> None:
        """The picker's choices: downloaded models and saved servers (``HearthApp.models_changed`` calls it)."""
        options: list[ft.DropdownOption] = []
        for info in self.app.models.list_models():
            if info.status in (STATUS_EMBEDDED, STATUS_READY):
                name = info.entry.names.get(self.tr.language) or info.entry.id
                options.append(ft.DropdownOption(key=f"local:{info.entry.id}", text=name))
        for config in self.app.configs.list_configs():
            if config.provider == PROVIDER_OPENAI_COMPATIBLE:
                host = (config.base_url or "").split("://")[-1].split("/")[0]
                options.append(ft.DropdownOption(key=f"config:{config.id}", text=f"{config.model} @ {host}"))
        self.model_picker.options = options
        current = self.app.configs.get_current_config()
        if current is None or current.provider == PROVIDER_LOCAL:
            self.model_picker.value = f"local:{current.model if current else 'smollm2-135m'}"
        else:
            self.model_picker.value = f"config:{current.id}"

    def _pick_model(self, e: Any) -> None:
        kind, _, value = (self.model_picker.value or "").partition(":")
        if kind == "local":
            self.app.use_local_model(value)
        elif kind == "config":
            self.app.configs.set_current_config(int(value))
            self.app.config_changed()

    # --- conversations -------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        self.refresh_model_picker()
        self.refresh_list()
        self.show_chat()

    def refresh_list(self) -> None:
        query = (self.search.value or "").strip()
        chats = self.chats.search(query) if query else self.chats.list_chats()
        self.chat_list.controls = [self._chat_row(chat) for chat in chats] or [
            ft.Text(self.tr("no_chats"), color=ft.Colors.ON_SURFACE_VARIANT)
        ]

    def _chat_row(self, chat: StoredChat) -> ft.Control:
        selected = chat.id == self.chat_id
        return ft.ListTile(
            title=ft.Text(chat.title or self.tr("untitled"), no_wrap=True),
            dense=True,
            selected=selected,
            on_click=lambda e, chat_id=chat.id: self.open_chat(chat_id),
        )

    def open_chat(self, chat_id: str | None) -> None:
        # A reply still streaming goes on in the background and is saved to its own conversation.
        self.chat_id = chat_id
        set_app_setting(LAST_CHAT_SETTING, chat_id)
        self.refresh_list()
        self.show_chat()
        self.app.page.update()

    def new_chat(self) -> None:
        self.open_chat(None)

    def show_chat(self) -> None:
        chat = self.chats.get_chat(self.chat_id) if self.chat_id else None
        self.title.value = (chat.title if chat else None) or self.tr("untitled")
        path = self.chats.current_path(self.chat_id) if chat else []
        controls: list[ft.Control] = [self._user_bubble(m.content) if m.role == "user" else self._assistant_bubble(m) for m in path]
        if not controls:
            controls = [ft.Text(self.tr("welcome"), color=ft.Colors.ON_SURFACE_VARIANT)]
        self.messages.controls = controls
        self._add_reply_actions(path)

    def _add_reply_actions(self, path: list[StoredMessage]) -> None:
        if path and path[-1].role == "assistant" or path and path[-1].role == "user":
            last = path[-1]
            row = ft.Row(
                [ft.TextButton(self.tr("regenerate"), icon=ft.Icons.REFRESH, on_click=lambda e: self.regenerate())],
            )
            if last.role == "assistant":
                row.controls.append(
                    ft.TextButton(self.tr("copy"), icon=ft.Icons.CONTENT_COPY, on_click=lambda e, t=last.content: self.copy(t))
                )
            self.messages.controls.append(row)

    # --- bubbles -------------------------------------------------------------------------------------------------

    def _user_bubble(self, text: str) -> ft.Control:
        return ft.Row(
            [
                ft.Container(
                    content=ft.Column(
                        [ft.Text(self.tr("you"), size=12, weight=ft.FontWeight.BOLD), ft.Text(text, selectable=True)],
                        spacing=2,
                        tight=True,
                    ),
                    bgcolor=ft.Colors.PRIMARY_CONTAINER,
                    border_radius=12,
                    padding=12,
                    width=None,
                )
            ],
            alignment=ft.MainAxisAlignment.END,
        )

    def _assistant_bubble(self, message: StoredMessage | None, body: ft.Control | None = None) -> ft.Control:
        text = message.content if message else ""
        stats = self._stats_text(message) if message else ""
        column = ft.Column(
            [
                ft.Text(self.tr("assistant"), size=12, weight=ft.FontWeight.BOLD),
                body or assistant_body(text, self.tr("copy"), self.copy),
            ],
            spacing=4,
            tight=True,
        )
        if stats:
            column.controls.append(ft.Text(stats, size=11, color=ft.Colors.ON_SURFACE_VARIANT))
        return ft.Container(content=column, bgcolor=ft.Colors.SURFACE_CONTAINER_HIGH, border_radius=12, padding=12)

    def _stats_text(self, message: StoredMessage | GenerationResult) -> str:
        if isinstance(message, GenerationResult):
            model, tokens, speed = message.model, message.stats.completion_tokens, message.stats.tokens_per_s
            finish, dropped = message.finish_reason, message.dropped_messages
        else:
            model, tokens, speed = message.model, message.completion_tokens, message.tokens_per_s
            finish, dropped = message.finish_reason, message.dropped_messages
        if not tokens:
            return model or ""
        text = self.tr("stats", model=model or "?", tokens=tokens, speed=speed or 0.0)
        if finish == FINISH_CANCELLED:
            text += f" · {self.tr('stopped')}"
        if dropped:
            text += " · " + self.tr("trimmed", count=dropped)
        return text

    # --- sending -------------------------------------------------------------------------------------------------

    def refresh_send_button(self) -> None:
        """Send or Stop, as the reply or workflow running in the chat now needs (workflows call it when they start
        or stop taking input). A build waiting for the reviewer's comments takes input: the button sends them."""
        busy = self.reply is not None and not getattr(self.reply, "waiting_for_human", False)
        self.send_button.content = self.tr("stop") if busy else self.tr("send")
        self.send_button.icon = ft.Icons.STOP if busy else ft.Icons.SEND
        self.send_button.disabled = not busy and not (self.input.value or "").strip()

    def send_or_stop(self, from_enter: bool = False) -> None:
        text = (self.input.value or "").strip()
        if isinstance(self.reply, CompanyBuild) and self.reply.waiting_for_human and text:
            self.input.value = ""
            self.reply.answer(text)
            self.refresh_send_button()
            self.app.page.update()
            return
        if self.reply is not None:
            if not from_enter:
                self.reply.cancel()  # stops the engine (or the company) itself, not only the display
            return
        if not text:
            return
        build = parse_build_command(text)
        if build is not None:
            self._start_build(*build)
            return
        if text.lower().startswith(EVOLVE_COMMAND):
            self._start_evolution(text)
            return
        replay = parse_replay_command(text)
        if replay is not None:
            self._replay(replay)
            return
        self._start(lambda chat_id: self.app.handler.get_streaming_response(chat_id, text), user_text=text)

    def _start_build(self, config: str, task: str) -> None:
        if not task:
            self.app.show_error(self.tr("build_usage"))
            self.app.page.update()
            return
        self._start_workflow(CompanyBuild(self, config, task))

    def _start_evolution(self, text: str) -> None:
        try:
            workflow = EvolutionChatRun(self, parse_evolve_command(text) or {})
        except ValueError as exc:  # unreadable words, or a setting out of range (EvolutionConfigError)
            self.app.show_error(f"{exc} {self.tr('evolve_usage')}")
            self.app.page.update()
            return
        self._start_workflow(workflow)

    def _start_workflow(self, workflow: Any) -> None:
        """A chat-driven workflow (/build, /evolve): the command is saved as the user's message, the workflow shows
        its progress here and its outcome is saved as the reply; the Stop button cancels it."""
        chat_id = self.chat_id or ChatStore.new_chat_id()
        self.chats.get_or_create_chat(chat_id)
        self.chats.add_message(chat_id, "user", (self.input.value or "").strip())
        self.chat_id = chat_id
        set_app_setting(LAST_CHAT_SETTING, chat_id)
        self.input.value = ""
        self.show_chat()
        if self.messages.controls and isinstance(self.messages.controls[-1], ft.Row):
            self.messages.controls.pop()  # no Regenerate/Copy under a workflow command
        workflow.chat_id = chat_id
        self.reply = workflow
        workflow.start()
        self.refresh_send_button()
        self.refresh_list()
        self.app.page.update()

    def _replay(self, path_text: str) -> None:
        """Show a past company run's dialogue here (from its events.jsonl); nothing is added to the conversation."""
        from pathlib import Path

        from src.workflows.company.replay import load_events

        try:
            events = load_events(Path(path_text).expanduser())
        except HearthError as exc:
            self.app.show_error(exc)
            self.app.page.update()
            return
        self.input.value = ""
        self.messages.controls = [c for c in (render_event(self.tr, e) for e in events) if c is not None]
        self.refresh_send_button()
        self.app.page.update()

    def run_workflow(self, workflow: Any, work: Callable[[], Any]) -> None:
        """On the workflow's own thread: run it, save its outcome, then hand the result, or a readable error, to
        the UI. Closing the app stops the run (src/utils/shutdown.py) and still saves what it did: here, not on the
        UI loop, which is gone by then."""
        try:
            with stops_at_shutdown(workflow.cancel):  # the shutdown waits until the outcome is saved
                result = work()
                model = "agent-company" if isinstance(workflow, CompanyBuild) else "evolution"
                self.chats.add_message(workflow.chat_id, "assistant", workflow.transcript(result), model=model)
        except Exception as exc:  # typed errors in the GUI's language; a bug too: a banner, never a frozen chat
            self.app.call_ui(self._workflow_finished, workflow, None, exc)
            return
        self.app.call_ui(self._workflow_finished, workflow, result, None)

    def _workflow_finished(self, workflow: Any, result: Any, error: BaseException | None) -> None:
        self.reply = None
        self.input.label = self.tr("message_hint")
        self.refresh_send_button()
        if error is not None:
            self.app.show_error(error)
            return
        if self.chat_id == workflow.chat_id:
            self.messages.controls.append(workflow.summary_card(result))
        self.refresh_list()

    def regenerate(self) -> None:
        if self.reply is None and self.chat_id:
            # Drop the old reply from view; it stays in the database as an older version.
            path = self.chats.current_path(self.chat_id)
            if path and path[-1].role == "assistant":
                path = path[:-1]
            self.messages.controls = [
                self._user_bubble(m.content) if m.role == "user" else self._assistant_bubble(m) for m in path
            ]
            self._start(lambda chat_id: self.app.handler.regenerate_streaming_response(chat_id), user_text=None)

    def _start(self, open_reply: Any, user_text: str | None) -> None:
        """Show the message at once and ask the model off the UI thread: loading a model or building a long prompt
        takes seconds, and the window must stay responsive (Stop works from the first moment)."""
        chat_id = self.chat_id or ChatStore.new_chat_id()
        self.sent_at = time.perf_counter()
        self.app.error_banner.visible = False
        if user_text is not None:
            self.input.value = ""
            if self.messages.controls and isinstance(self.messages.controls[0], ft.Text):
                self.messages.controls.clear()  # the welcome text
            if self.messages.controls and isinstance(self.messages.controls[-1], ft.Row) and not isinstance(
                self.messages.controls[-1].controls[0], ft.Container
            ):
                self.messages.controls.pop()  # the previous reply's actions
            self.messages.controls.append(self._user_bubble(user_text))
        live = markdown("…")
        self.messages.controls.append(self._assistant_bubble(None, body=live))
        pending = _PendingReply()
        self.reply = pending
        self.refresh_send_button()
        self.app.page.update()
        threading.Thread(
            target=self._open_reply, args=(open_reply, chat_id, live, pending, user_text), daemon=True
        ).start()

    def _open_reply(self, open_reply: Any, chat_id: str, live: ft.Markdown, pending: _PendingReply, user_text: str | None) -> None:
        try:
            reply = open_reply(chat_id)
        except Exception as exc:  # typed errors read well; anything else is still a banner, never a frozen UI
            self.app.call_ui(self._failed_to_start, exc, user_text)
            return
        if pending.cancelled.is_set():
            reply.cancel()
        self.app.call_ui(self._started, chat_id, reply)  # queued before the pump's first update: runs first
        self.pump = ReplyPump(
            reply,
            on_text=lambda text: self.app.call_ui(self._show_partial, live, text),
            on_done=lambda result, error: self.app.call_ui(self._finished, result, error),
        ).start()

    def _started(self, chat_id: str, reply: Any) -> None:
        if self.chat_id is None:  # a new conversation, still on screen
            self.chat_id = chat_id
            set_app_setting(LAST_CHAT_SETTING, chat_id)
        self.reply = reply
        self.refresh_list()

    def _failed_to_start(self, error: BaseException, user_text: str | None) -> None:
        self.reply = None
        if user_text is not None and not (self.input.value or "").strip():
            self.input.value = user_text  # nothing is lost: the message is back in the input
        self.refresh_send_button()
        self.app.show_error(error)
        self.show_chat()

    def _show_partial(self, live: ft.Markdown, text: str) -> None:
        live.value = text

    def _finished(self, result: GenerationResult | None, error: BaseException | None) -> None:
        self.reply = None
        self.pump = None
        self.refresh_send_button()
        if error is not None:
            self.app.show_error(error)
        self.refresh_list()
        self.show_chat()

    # --- dialogs -------------------------------------------------------------------------------------------------

    async def copy_async(self, text: str) -> None:
        await ft.Clipboard().set(text)
        self.app.notify(self.tr("copied"))

    def copy(self, text: str) -> None:
        self.app.page.run_task(self.copy_async, text)

    def ask_rename(self) -> None:
        chat_id = self.chat_id
        if not chat_id or self.chats.get_chat(chat_id) is None:
            return
        field = ft.TextField(label=self.tr("title"), value=self.title.value, autofocus=True)

        def rename() -> None:
            title = (field.value or "").strip()
            if title:
                self.chats.rename_chat(chat_id, title)
            self.refresh_list()
            self.show_chat()

        self.app.ask(self.tr("rename_chat"), field, self.tr("save"), rename)

    def ask_delete(self) -> None:
        chat = self.chats.get_chat(self.chat_id) if self.chat_id else None
        if chat is None:
            return

        def delete() -> None:
            self.chats.delete_chat(chat.id)
            remaining = self.chats.list_chats()
            self.open_chat(remaining[0].id if remaining else None)

        body = ft.Text(self.tr("delete_chat_body", title=chat.title or self.tr("untitled")))
        self.app.ask(self.tr("delete_chat_q"), body, self.tr("delete"), delete)

    def ask_system_prompt(self) -> None:
        chat = self.chats.get_chat(self.chat_id) if self.chat_id else None
        field = ft.TextField(
            label=self.tr("system_prompt"),
            helper=self.tr("system_prompt_hint"),
            value=(chat.system_prompt if chat else "") or "",
            multiline=True,
            min_lines=3,
            max_lines=10,
            width=520,
        )

        def save() -> None:
            chat_id = self.chat_id or ChatStore.new_chat_id()
            self.chats.get_or_create_chat(chat_id)
            self.chats.set_system_prompt(chat_id, (field.value or "").strip() or None)
            self.open_chat(chat_id)

        self.app.ask(self.tr("system_prompt"), field, self.tr("save"), save)
