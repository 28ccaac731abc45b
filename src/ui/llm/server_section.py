"""Settings: the switch that serves Hearth's local models through the OpenAI API (``python main.py serve``'s twin).

From the GUI the server listens on 127.0.0.1 only, so no key is needed and nothing is exposed to the network; serving
other machines is a deliberate act done from the command line with an API key (``serve --host 0.0.0.0``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flet as ft

from src.errors import HearthError
from src.settings import SERVER_DEFAULT_PORT

if TYPE_CHECKING:
    from src.ui.app import HearthApp


class ServerSection:
    def __init__(self, app: HearthApp) -> None:
        from src.server import ServerController

        self.app = app
        self.tr = app.tr
        self.controller: ServerController | None = None
        self.switch = ft.Switch(label=self.tr("server_switch"), value=False, on_change=lambda e: self._toggle())
        self.port = ft.TextField(label=self.tr("server_port"), value=str(SERVER_DEFAULT_PORT), width=140)
        self.status = ft.Text(self.tr("server_stopped"), size=12)
        # Its own semantics node: otherwise Flutter folds the section title and status into the field's label.
        field = ft.Semantics(container=True, content=self.port)
        self.view = ft.Column([ft.Row([self.switch, field]), self.status], spacing=6, width=720)

    def _toggle(self) -> None:
        if self.switch.value:
            self.switch.disabled = self.port.disabled = True
            self.status.value = self.tr("server_starting")
            self.app.in_background(self._start)
        else:
            self.app.in_background(self._stop)

    def _start(self) -> None:
        from src.server import ServerController

        try:
            port = int((self.port.value or "").strip())
        except ValueError:
            self.app.call_ui(self._failed, self.tr("server_bad_port"))
            return
        controller = ServerController(port=port)
        try:
            controller.start()
        except HearthError as exc:
            self.app.call_ui(self._failed, str(exc))
            return
        self.controller = controller
        self.app.call_ui(self._running, controller.api_base_url)

    def _running(self, url: str) -> None:
        self.switch.disabled = False
        self.status.value = self.tr("server_running", url=url)

    def _failed(self, message: str) -> None:
        self.switch.value = False
        self.switch.disabled = self.port.disabled = False
        self.status.value = message

    def _stop(self) -> None:
        controller, self.controller = self.controller, None
        if controller is not None:
            controller.stop()
        self.app.call_ui(self._stopped)

    def _stopped(self) -> None:
        self.port.disabled = False
        self.status.value = self.tr("server_stopped")

    def shutdown(self, *_: Any) -> None:
        if self.controller is not None:
            self.controller.stop()
