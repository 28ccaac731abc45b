"""Settings: language and theme, the language model (local or an OpenAI-compatible server), local model downloads,
and the ordered list of download sources with their live health."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import flet as ft

from src.db.database import get_app_setting
from src.errors import HearthError
from src.settings import DEFAULT_LOCAL_MODEL
from src.ui.i18n import LANGUAGES
from src.ui.llm.server_section import ServerSection
from src.utils.downloader import DONE, DownloadProgress
from src.utils.ModelManager import (
    STATUS_CORRUPT,
    STATUS_DOWNLOADING,
    STATUS_EMBEDDED,
    STATUS_NOT_DOWNLOADED,
    STATUS_PARTIAL,
    STATUS_READY,
    ModelInfo,
    ModelStatus,
)
from src.utils.providers import PROVIDER_LOCAL, PROVIDER_OPENAI_COMPATIBLE

if TYPE_CHECKING:
    from src.ui.app import HearthApp

logger = logging.getLogger(__name__)


def human_bytes(value: float | None) -> str:
    if not value:
        return "0 B"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB") else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class SettingsPage:
    def __init__(self, app: HearthApp) -> None:
        self.app = app
        self.tr = tr = app.tr
        current = app.configs.get_current_config()
        remote = current if current and current.provider == PROVIDER_OPENAI_COMPATIBLE else None

        self.language = ft.Dropdown(
            label=tr("language"),
            width=200,
            value=tr.language,
            options=[ft.DropdownOption(key=k, text=v) for k, v in LANGUAGES.items()],
            on_select=lambda e: app.set_language(self.language.value or "en"),
        )
        self.theme = ft.Dropdown(
            label=tr("theme"),
            width=200,
            value=get_app_setting("theme") or "system",
            options=[ft.DropdownOption(key=k, text=tr(f"theme_{k}")) for k in ("system", "light", "dark")],
            on_select=lambda e: app.set_theme(self.theme.value or "system"),
        )
        self.provider = ft.RadioGroup(
            value=PROVIDER_OPENAI_COMPATIBLE if remote else PROVIDER_LOCAL,
            on_change=lambda e: self._show_provider(),
            content=ft.Row(
                [
                    ft.Radio(value=PROVIDER_LOCAL, label=tr("provider_local")),
                    ft.Radio(value=PROVIDER_OPENAI_COMPATIBLE, label=tr("provider_remote")),
                ]
            ),
        )
        # Examples go below the field, not inside it: a hint would become part of the field's accessible name.
        self.base_url = ft.TextField(
            label=tr("base_url"), value=remote.base_url if remote else "", helper="http://127.0.0.1:11434/v1 (Ollama)"
        )
        self.remote_model = ft.TextField(label=tr("remote_model"), value=remote.model if remote else "")
        self.api_key = ft.TextField(
            label=tr("api_key"),
            password=True,
            can_reveal_password=True,
            helper=tr("api_key_saved") if remote and remote.has_api_key else None,
        )
        self.remote_result = ft.Text()  # not selectable: selectable text is hidden from accessibility
        self.remote_form = ft.Column(
            [
                self.base_url,
                self.remote_model,
                self.api_key,
                ft.Row(
                    [
                        ft.OutlinedButton(tr("test_connection"), on_click=lambda e: self.test_connection()),
                        ft.FilledButton(tr("save_config"), on_click=lambda e: self.save_remote()),
                    ]
                ),
                self.remote_result,
            ],
            width=560,
        )
        self.model_cards = ft.Column(spacing=8)
        self.card_parts: dict[str, dict[str, Any]] = {}
        self.endpoint_rows = ft.Column(spacing=4)
        self.new_endpoint = ft.TextField(label=tr("add_mirror"), helper="https://hf-mirror.com", expand=True)
        self.health: dict[str, str] = {}
        self.server = ServerSection(app)
        self.view = ft.ListView(
            expand=True,
            padding=24,
            spacing=12,
            controls=[
                # A Dropdown's label is not exposed to accessibility (screen readers, tests); Semantics names it.
                self._section(
                    tr("appearance"),
                    ft.Row([ft.Semantics(label=tr("language"), content=self.language),
                            ft.Semantics(label=tr("theme"), content=self.theme)]),
                ),
                self._section(tr("llm_settings"), ft.Column([ft.Text(tr("provider")), self.provider, self.remote_form])),
                self._section(tr("server_section"), self.server.view),
                self._section(tr("local_models"), self.model_cards),
                self._section(
                    tr("mirrors"),
                    ft.Column(
                        [
                            self.endpoint_rows,
                            ft.Row(
                                [
                                    self.new_endpoint,
                                    ft.OutlinedButton(tr("add_mirror"), icon=ft.Icons.ADD, on_click=lambda e: self.add_endpoint()),
                                ]
                            ),
                            ft.Row(
                                [
                                    ft.OutlinedButton(tr("check_mirrors"), icon=ft.Icons.WIFI_FIND, on_click=lambda e: self.check_endpoints()),
                                    ft.TextButton(tr("reset_defaults"), on_click=lambda e: self.set_endpoints(None)),
                                ]
                            ),
                        ],
                        width=720,
                    ),
                ),
            ],
        )
        self._show_provider()

    @staticmethod
    def _section(title: str, body: ft.Control) -> ft.Control:
        return ft.Column([ft.Text(title, size=18, weight=ft.FontWeight.W_600), body, ft.Divider()], spacing=8)

    def refresh(self) -> None:
        self.refresh_models()
        self.refresh_endpoints()

    def _show_provider(self) -> None:
        self.remote_form.visible = self.provider.value == PROVIDER_OPENAI_COMPATIBLE
        self.app.page.update() if self.app.page.controls else None

    # --- remote server -------------------------------------------------------------------------------------------

    def _remote_values(self) -> tuple[str, str, str | None]:
        return (self.base_url.value or "").strip(), (self.remote_model.value or "").strip(), (self.api_key.value or "").strip() or None

    def test_connection(self) -> None:
        base_url, model, key = self._remote_values()

        def run() -> None:
            from src.utils.openai_compatible import OpenAICompatibleProvider

            current = self.app.configs.get_current_config()
            if key is None and current is not None and current.base_url == base_url.rstrip("/") and current.has_api_key:
                stored_key = self.app.configs.get_api_key(current.id)
            else:
                stored_key = key
            try:
                with OpenAICompatibleProvider(base_url, model, stored_key) as provider:
                    message = self.tr("connection_ok", detail=provider.check_connection())
            except HearthError as exc:
                message = f"{self.tr('error')}: {exc}"
            self.app.call_ui(setattr, self.remote_result, "value", message)

        self.remote_result.value = "…"
        self.app.page.update()
        self.app.in_background(run)

    def save_remote(self) -> None:
        base_url, model, key = self._remote_values()
        configs = self.app.configs
        try:
            existing = next(
                (c for c in configs.list_configs() if c.provider == PROVIDER_OPENAI_COMPATIBLE
                 and c.base_url == base_url.rstrip("/") and c.model == model),
                None,
            )
            if existing:
                configs.update_config(existing.id, api_key=key) if key else None
                config_id = existing.id
            else:
                config_id = configs.save_config(PROVIDER_OPENAI_COMPATIBLE, model, base_url=base_url, api_key=key)
            configs.set_current_config(config_id)
            self.app.config_changed()
        except HearthError as exc:
            self.remote_result.value = f"{self.tr('error')}: {exc}"
            self.app.page.update()
            return
        self.api_key.value = ""
        self.remote_result.value = self.tr("saved", model=model)
        self.app.notify(self.tr("saved", model=model))
        self.app.page.update()

    # --- local models --------------------------------------------------------------------------------------------

    def refresh_models(self) -> None:
        current = self.app.configs.get_current_config()
        if current is None:
            in_use: str | None = DEFAULT_LOCAL_MODEL
        else:
            in_use = current.model if current.provider == PROVIDER_LOCAL else None
        self.model_cards.controls = [self._model_card(info, info.entry.id == in_use) for info in self.app.models.list_models()]

    def _status_text(self, info: ModelInfo) -> str:
        percent = f"{(info.fraction or 0) * 100:.0f}"
        return self.tr(ModelStatus(info.status).message_key, percent=percent)

    def _model_card(self, info: ModelInfo, in_use: bool) -> ft.Control:
        tr = self.tr
        entry = info.entry
        model_id = entry.id
        handle = self.app.downloads.get(model_id)
        running = handle is not None and handle.running
        progress = ft.ProgressBar(value=info.fraction or 0, width=420, visible=info.status in (STATUS_PARTIAL, STATUS_DOWNLOADING) or running)
        detail = ft.Text(size=12, color=ft.Colors.ON_SURFACE_VARIANT)
        status = ft.Text(self._status_text(info), weight=ft.FontWeight.W_500)
        buttons: list[ft.Control] = []
        if info.status in (STATUS_EMBEDDED, STATUS_READY):
            buttons.append(
                ft.FilledButton(tr("in_use"), disabled=True) if in_use
                else ft.FilledButton(tr("use_model"), on_click=lambda e: self.use_local(model_id))
            )
        if not entry.embedded:
            if running:
                buttons.append(ft.OutlinedButton(tr("pause"), icon=ft.Icons.PAUSE, on_click=lambda e: self.pause(model_id)))
                buttons.append(ft.TextButton(tr("cancel"), icon=ft.Icons.CLOSE, on_click=lambda e: self.cancel(model_id)))
            elif info.status in (STATUS_PARTIAL, STATUS_DOWNLOADING):
                buttons.append(ft.FilledButton(tr("resume"), icon=ft.Icons.PLAY_ARROW, on_click=lambda e: self.download(model_id)))
            elif info.status in (STATUS_NOT_DOWNLOADED, STATUS_CORRUPT):
                buttons.append(ft.FilledButton(tr("download"), icon=ft.Icons.DOWNLOAD, on_click=lambda e: self.download(model_id)))
            if info.status in (STATUS_READY, STATUS_CORRUPT):
                buttons.append(ft.OutlinedButton(tr("verify"), icon=ft.Icons.VERIFIED, on_click=lambda e: self.verify(model_id)))
            if info.status != STATUS_NOT_DOWNLOADED and not running:
                buttons.append(ft.TextButton(tr("delete"), icon=ft.Icons.DELETE_OUTLINE, on_click=lambda e: self.ask_delete(info)))
        if info.status in (STATUS_EMBEDDED, STATUS_READY):
            engine_choice = self._engine_choice(model_id)
            if engine_choice is not None:
                buttons.append(engine_choice)
        self.card_parts[model_id] = {"progress": progress, "detail": detail, "status": status}
        if running and handle.latest is not None:
            self._apply_progress(model_id, handle.latest)
        name = entry.names.get(tr.language) or entry.id
        description = entry.descriptions.get(tr.language) or ""
        return ft.Card(
            content=ft.Container(
                padding=16,
                width=720,
                content=ft.Column(
                    [
                        ft.Row(
                            [ft.Text(name, size=16, weight=ft.FontWeight.W_600), ft.Text(f"{entry.repo} · {human_bytes(info.size_bytes)}", size=12)],
                            alignment=ft.MainAxisAlignment.SPACE_BETWEEN,
                        ),
                        ft.Text(description),
                        status,
                        progress,
                        detail,
                        ft.Row(buttons, wrap=True),
                    ],
                    spacing=6,
                ),
            )
        )

    def _engine_choice(self, model_id: str) -> ft.Control | None:
        """Which engine runs this model: auto (llama.cpp for GGUF files, else transformers) or a fixed one."""
        from src.utils.backends import available_backends, get_model_backend

        try:
            choices = available_backends(model_id)
        except HearthError:
            return None
        if len(choices) <= 2:  # "auto" and a single engine: nothing to choose
            return None
        labels = {"auto": self.tr("engine_auto")}
        dropdown = ft.Dropdown(
            value=get_model_backend(model_id),
            options=[ft.dropdown.Option(key=c, text=labels.get(c, c)) for c in choices],
            width=220,
            dense=True,
            on_select=lambda e: self.set_engine(model_id, e.control.value),
        )
        return ft.Semantics(label=self.tr("engine"), container=True, content=dropdown)

    def set_engine(self, model_id: str, backend: str) -> None:
        from src.utils.backends import set_model_backend
        from src.utils.LocalLLMEngine import LocalLLMEngine

        try:
            set_model_backend(model_id, backend)
        except HearthError as exc:
            self.app.show_error(exc)
            self.app.page.update()
            return
        engine = LocalLLMEngine.shared()
        if engine.loaded is not None and engine.loaded.model_id == model_id and not engine.is_generating:
            engine.unload_model()  # the next reply loads it on the chosen engine

    def use_local(self, model_id: str) -> None:
        self.app.use_local_model(model_id)
        self.provider.value = PROVIDER_LOCAL
        self._show_provider()
        self.refresh_models()
        self.app.notify(self.tr("saved", model=model_id))
        self.app.page.update()

    def download(self, model_id: str) -> None:
        try:
            handle = self.app.models.start_download(
                model_id, progress=lambda update: self.app.call_ui(self._apply_progress, model_id, update)
            )
        except HearthError as exc:
            self.app.show_error(exc)
            self.app.page.update()
            return
        self.app.downloads[model_id] = handle
        self.app.in_background(self._wait_for, handle)
        self.refresh_models()
        self.app.page.update()

    def _wait_for(self, handle: Any) -> None:
        try:
            handle.wait()
        finally:
            self.app.call_ui(self._download_ended, handle)

    def _download_ended(self, handle: Any) -> None:
        if handle.error is not None:
            self.app.show_error(handle.error)
        self.app.downloads.pop(handle.model_id, None)
        self.refresh_models()
        if handle.result is not None and handle.result.status == DONE:
            self.app.models_changed()

    def _apply_progress(self, model_id: str, update: DownloadProgress) -> None:
        parts = self.card_parts.get(model_id)
        if parts is None:
            return
        parts["progress"].visible = True
        parts["progress"].value = update.fraction
        parts["status"].value = self.tr("status_downloading", percent=f"{update.fraction * 100:.0f}")
        if update.total:
            parts["detail"].value = self.tr(
                "progress",
                done=human_bytes(update.done),
                total=human_bytes(update.total),
                speed=human_bytes(update.speed_bps),
                eta=human_seconds(update.eta_s),
                endpoint=(update.endpoint or "").split("://")[-1],
            )

    def pause(self, model_id: str) -> None:
        handle = self.app.downloads.get(model_id)
        if handle is not None:
            handle.pause()

    def cancel(self, model_id: str) -> None:
        """Stop the download and remove what it fetched (pause keeps it for later)."""
        handle = self.app.downloads.get(model_id)
        if handle is None:
            return

        def run() -> None:
            handle.pause()
            try:
                handle.wait(30)
            except HearthError:
                pass
            self.app.models.delete(model_id)
            self.app.call_ui(self.refresh_models)

        self.app.in_background(run)

    def verify(self, model_id: str) -> None:
        def run() -> None:
            bad = self.app.models.verify(model_id)
            message = (self.tr("verified_bad", model=model_id, files=", ".join(bad)) if bad
                       else self.tr("verified_ok", model=model_id))
            self.app.call_ui(self._verified, message)

        self.app.in_background(run)

    def _verified(self, message: str) -> None:
        self.app.notify(message)
        self.refresh_models()

    def ask_delete(self, info: ModelInfo) -> None:
        def delete() -> None:
            try:
                self.app.models.delete(info.entry.id)
            except HearthError as exc:
                self.app.show_error(exc)
            self.refresh_models()
            self.app.models_changed()

        body = ft.Text(self.tr("delete_model_body", size=human_bytes(info.size_bytes)))
        self.app.ask(self.tr("delete_model_q", model=info.entry.id), body, self.tr("delete"), delete)

    # --- endpoints -----------------------------------------------------------------------------------------------

    def refresh_endpoints(self) -> None:
        endpoints = self.app.models.endpoints()
        rows = []
        for index, endpoint in enumerate(endpoints):
            rows.append(
                ft.Row(
                    [
                        ft.Text(f"{index + 1}. {endpoint}", expand=True, selectable=True),
                        ft.Text(self.health.get(endpoint, ""), size=12),
                        ft.IconButton(ft.Icons.ARROW_UPWARD, tooltip=f"{self.tr('move_up')} {endpoint}", disabled=index == 0,
                                      on_click=lambda e, i=index: self.move_up(i)),
                        ft.IconButton(ft.Icons.CLOSE, tooltip=f"{self.tr('remove')} {endpoint}", disabled=len(endpoints) == 1,
                                      on_click=lambda e, i=index: self.remove_endpoint(i)),
                    ]
                )
            )
        self.endpoint_rows.controls = rows

    def set_endpoints(self, endpoints: list[str] | None) -> None:
        try:
            self.app.models.set_endpoints(endpoints)
        except HearthError as exc:
            self.app.show_error(exc)
        self.refresh_endpoints()
        self.app.page.update()

    def add_endpoint(self) -> None:
        url = (self.new_endpoint.value or "").strip()
        if url:
            self.new_endpoint.value = ""
            self.set_endpoints([*self.app.models.endpoints(), url])

    def move_up(self, index: int) -> None:
        endpoints = self.app.models.endpoints()
        endpoints[index - 1], endpoints[index] = endpoints[index], endpoints[index - 1]
        self.set_endpoints(endpoints)

    def remove_endpoint(self, index: int) -> None:
        endpoints = self.app.models.endpoints()
        del endpoints[index]
        self.set_endpoints(endpoints)

    def check_endpoints(self) -> None:
        def run() -> None:
            results = self.app.models.check_endpoints()
            health = {
                h.endpoint: self.tr("healthy", ms=int((h.latency_s or 0) * 1000)) if h.healthy
                else self.tr("unhealthy", detail=h.detail)
                for h in results
            }
            self.app.call_ui(self._show_health, health)

        self.app.in_background(run)

    def _show_health(self, health: dict[str, str]) -> None:
        self.health = health
        self.refresh_endpoints()
