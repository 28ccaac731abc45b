"""Hearth's GUI (Flet): the window, the navigation, and the services the pages share.

The GUI only calls the core (``src.utils``, ``src.db``). Long work (model loading, replies, downloads) runs on worker
threads; every change to controls is handed back to the session's event loop with ``app.call_ui`` (Flet 1.0 runs
``main`` and event handlers on that loop, and its send queue is not thread-safe).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import flet as ft

from src.db.database import get_app_setting, set_app_setting
from src.db.llm_config_db import LLMConfigDB
from src.errors import HearthError
from src.settings import PROJECT_ROOT
from src.ui.i18n import LANGUAGES, Translator, translate_error
from src.utils.ChatUtils import AIRequestHandlerWithHistory
from src.utils.ModelManager import DownloadHandle, ModelManager

logger = logging.getLogger(__name__)

ASSETS_DIR = PROJECT_ROOT / "assets"
FONT_FAMILY = "HearthCJK"
FONT_URL = "/fonts/WenQuanYiMicroHei.ttf"
THEMES = {"system": ft.ThemeMode.SYSTEM, "light": ft.ThemeMode.LIGHT, "dark": ft.ThemeMode.DARK}


class HearthApp:
    """One browser tab or window. Holds the services and the two pages."""

    # Downloads outlive a page (and a tab): they belong to the process.
    downloads: dict[str, DownloadHandle] = {}

    def __init__(self, page: ft.Page) -> None:
        self.page = page
        self.loop = asyncio.get_running_loop()
        self.tr = Translator(get_app_setting("language"))
        self.configs = LLMConfigDB()
        self.models = ModelManager()
        self.handler = AIRequestHandlerWithHistory(config_db=self.configs)
        self.error_text = ft.Text(expand=True)
        self.error_banner = ft.Container(visible=False)
        self.body = ft.Container(expand=True)
        self.selected = 0

    # --- threads -------------------------------------------------------------------------------------------------

    def call_ui(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the UI loop, then push the changes. Safe from any thread, even after the tab closed."""

        def run() -> None:
            try:
                fn(*args)
                self.page.update()
            except Exception:  # a closed tab; the work itself (saved replies, downloads) is not affected
                logger.debug("UI update dropped", exc_info=True)

        try:
            self.loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop is closed: the app is shutting down
            pass

    def in_background(self, fn: Callable[..., Any], *args: Any) -> None:
        threading.Thread(target=self._guarded, args=(fn, *args), daemon=True).start()

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except HearthError as exc:
            self.call_ui(self.show_error, str(exc))
        except Exception as exc:  # a bug: still a readable banner, never a frozen UI
            logger.exception("Background task failed")
            self.call_ui(self.show_error, f"{type(exc).__name__}: {exc}")

    # --- shell ---------------------------------------------------------------------------------------------------

    def start(self) -> None:
        page = self.page
        page.title = "Hearth"
        page.fonts = {FONT_FAMILY: FONT_URL}
        page.theme = ft.Theme(font_family=FONT_FAMILY, color_scheme_seed=ft.Colors.DEEP_ORANGE)
        page.dark_theme = ft.Theme(font_family=FONT_FAMILY, color_scheme_seed=ft.Colors.DEEP_ORANGE)
        page.theme_mode = THEMES.get(get_app_setting("theme") or "system", ft.ThemeMode.SYSTEM)
        page.padding = 0
        self.build()

    def build(self) -> None:
        """(Re)build every control: used at start and when the language changes."""
        from src.ui.chat.chat_page import ChatPage
        from src.ui.llm.llm_settings import SettingsPage

        tr = self.tr
        self.chat_page = ChatPage(self)
        self.settings_page = SettingsPage(self)
        self.error_banner = ft.Container(
            visible=False,
            bgcolor=ft.Colors.ERROR_CONTAINER,
            padding=ft.Padding.symmetric(horizontal=16, vertical=8),
            content=ft.Row(
                [
                    ft.Icon(ft.Icons.ERROR_OUTLINE, color=ft.Colors.ON_ERROR_CONTAINER),
                    self.error_text,
                    ft.TextButton(tr("open_settings"), on_click=lambda e: self.navigate(1)),
                    ft.TextButton(tr("dismiss"), on_click=lambda e: self.hide_error()),
                ]
            ),
        )
        self.rail = ft.NavigationRail(
            selected_index=self.selected,
            label_type=ft.NavigationRailLabelType.ALL,
            min_width=88,
            destinations=[
                ft.NavigationRailDestination(icon=ft.Icons.CHAT_OUTLINED, selected_icon=ft.Icons.CHAT, label=tr("nav_chat")),
                ft.NavigationRailDestination(
                    icon=ft.Icons.SETTINGS_OUTLINED, selected_icon=ft.Icons.SETTINGS, label=tr("nav_settings")
                ),
            ],
            on_change=lambda e: self.navigate(e.control.selected_index),
        )
        self.body = ft.Container(expand=True)
        self.page.controls.clear()
        self.page.add(
            ft.Row(
                [self.rail, ft.VerticalDivider(width=1), ft.Column([self.error_banner, self.body], expand=True, spacing=0)],
                expand=True,
                spacing=0,
            )
        )
        self.navigate(self.selected, update=False)
        self.page.update()

    def navigate(self, index: int, update: bool = True) -> None:
        self.selected = index
        self.rail.selected_index = index
        self.body.content = self.chat_page.view if index == 0 else self.settings_page.view
        if index == 0:
            self.chat_page.refresh()
        else:
            self.settings_page.refresh()
        if update:
            self.page.update()

    def set_language(self, language: str) -> None:
        if language not in LANGUAGES:
            return
        set_app_setting("language", language)
        self.tr = Translator(language)
        self.build()

    def set_theme(self, theme: str) -> None:
        set_app_setting("theme", theme)
        self.page.theme_mode = THEMES.get(theme, ft.ThemeMode.SYSTEM)
        self.page.update()

    # --- messages ------------------------------------------------------------------------------------------------

    def show_error(self, error: str | BaseException) -> None:
        """The banner: a text as it is, an error in the GUI's language (``translate_error``)."""
        self.error_text.value = error if isinstance(error, str) else translate_error(error, self.tr.language)
        self.error_banner.visible = True

    def hide_error(self) -> None:
        self.error_banner.visible = False
        self.page.update()

    def ask(self, title: str, content: ft.Control, action: str, on_action: Callable[[], None]) -> None:
        """A modal dialog with Cancel and one action button (which closes the dialog, then runs ``on_action``)."""

        def act(e: Any) -> None:
            self.page.pop_dialog()
            on_action()
            self.page.update()

        if isinstance(content, ft.TextField):
            content.on_submit = act
        self.page.show_dialog(
            ft.AlertDialog(
                modal=True,
                title=ft.Text(title),
                content=content,
                actions=[
                    ft.TextButton(self.tr("cancel"), on_click=lambda e: self.page.pop_dialog()),
                    ft.FilledButton(action, on_click=act),
                ],
            )
        )

    def notify(self, message: str) -> None:
        self.page.show_dialog(ft.SnackBar(ft.Text(message)))

    def use_local_model(self, model_id: str) -> None:
        """Make ``model_id`` the current model, reusing its saved configuration if there is one."""
        from src.utils.providers import PROVIDER_LOCAL

        existing = next(
            (c for c in self.configs.list_configs() if c.provider == PROVIDER_LOCAL and c.model == model_id), None
        )
        config_id = existing.id if existing else self.configs.save_config(provider=PROVIDER_LOCAL, model=model_id)
        self.configs.set_current_config(config_id)
        self.config_changed()

    def config_changed(self) -> None:
        """The current LLM configuration changed (settings or the chat's model picker)."""
        self.handler.refresh_config()
        self.chat_page.model_changed()

    def models_changed(self) -> None:
        """The local models changed (a download finished, a model was deleted): pages that list them refresh."""
        self.chat_page.refresh_model_picker()


def main(page: ft.Page) -> None:
    HearthApp(page).start()


def run_gui(*, web: bool, host: str = "127.0.0.1", port: int = 0) -> int:
    """Open the desktop window, or serve the app to a browser. Falls back to the browser when the window can't
    start (the desktop client cannot be fetched, no display), saying why."""
    from src.utils.cpu import leave_a_core_for_the_ui

    # The GUI shares the CPU with its own rendering (and, in web mode, a browser): models compute on one core fewer
    # than the machine has, or a redraw during a reply can make decoding tens of times slower (src/utils/cpu.py).
    leave_a_core_for_the_ui()
    if choose_view(web) == ft.AppView.WEB_BROWSER:
        from src.ui.network import pick_port
        from src.ui.web import serve_web_gui

        serve_web_gui(main, host=host, port=pick_port(host, port), assets_dir=str(ASSETS_DIR))
        return 0
    # Port 0: the window talks to Hearth over a Unix socket (Linux, macOS), never a TCP port a web page can reach.
    # Flet would take FLET_SERVER_PORT over it.
    os.environ.pop("FLET_SERVER_PORT", None)
    ft.run(main, view=ft.AppView.FLET_APP, port=0, assets_dir=str(ASSETS_DIR), no_cdn=True)
    return 0


def choose_view(web: bool) -> ft.AppView:
    """The desktop window, unless asked for the browser or the window cannot start (saying why). Whenever Flet itself
    would serve a browser in place of the window (FLET_FORCE_WEB_SERVER, or Linux without X11's DISPLAY: Wayland
    only), Hearth serves it instead: Flet's own web server has none of Hearth's checks."""
    from flet.utils import get_bool_env_var, is_linux_server

    from src.ui.desktop import desktop_unavailable_reason

    if web:
        return ft.AppView.WEB_BROWSER
    reason = desktop_unavailable_reason()
    if reason is not None:
        print(f"Hearth: the desktop window cannot open: {reason}. Opening Hearth in your browser instead.",
              file=sys.stderr, flush=True)  # fmt: skip
        return ft.AppView.WEB_BROWSER
    if get_bool_env_var("FLET_FORCE_WEB_SERVER") or is_linux_server():
        return ft.AppView.WEB_BROWSER
    return ft.AppView.FLET_APP
