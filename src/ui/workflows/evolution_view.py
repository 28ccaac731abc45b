"""``/evolve 20 agents 10 generations`` in the chat: the evolution simulation, shown live in the conversation.

A live picture of the world (the current best agent in red) with a progress line sits at the bottom while it runs, a
message per finished generation is added above it, and the run ends with the fitness plot and a summary card.
Stop cancels it after the current world step; finished generations stay saved in the run folder (resumable from
the CLI). The base model is the evolution's own setting (MODEL_PATH, default the embedded model), not the chat's:
LoRA training needs a local transformers model, whatever the chat talks to.
"""

from __future__ import annotations

import re
import threading
import time
from typing import TYPE_CHECKING, Any

import flet as ft

if TYPE_CHECKING:
    from src.ui.chat.chat_page import ChatPage

COMMAND = "/evolve"
PROGRESS_INTERVAL_S = 0.25  # at most 4 progress repaints a second; pictures come every few steps anyway
_COUNTED = {"agent": "num_agents", "generation": "num_generations", "gen": "num_generations", "step": "steps_per_generation"}
_NAMED = {"size": "world_size", "world": "world_size", "seed": "seed"}


def parse_evolve_command(text: str) -> dict[str, int] | None:
    """``/evolve 20 agents 10 generations [200 steps] [size 20] [seed 3]`` (also ``--agents 20`` and the like)
    -> settings by name; None when the text is not an evolve command. Raises ValueError for words it can't read."""
    stripped = text.strip()
    if not stripped.lower().startswith(COMMAND):
        return None
    rest = stripped[len(COMMAND) :].lower()
    settings: dict[str, int] = {}

    def option(match: re.Match[str]) -> str:  # --agents 6, --world-size=8
        key = match.group(1).removeprefix("world-")
        settings[_NAMED[key] if key in _NAMED else _COUNTED[key.rstrip("s")]] = int(match.group(2))
        return " "

    def counted(match: re.Match[str]) -> str:  # 20 agents
        settings[_COUNTED[match.group(2)]] = int(match.group(1))
        return " "

    def named(match: re.Match[str]) -> str:  # size 20, seed 3
        settings[_NAMED[match.group(1)]] = int(match.group(2))
        return " "

    keys = "|".join([*_NAMED, "world-size", *(k + "s" for k in _COUNTED), *_COUNTED])
    rest = re.sub(rf"--({keys})(?:\s+|=)(\d+)\b", option, rest)
    rest = re.sub(r"\b(\d+)\s*(agent|generation|gen|step)s?\b", counted, rest)
    rest = re.sub(r"\b(?:world\s+)?(size|world|seed)\s*(\d+)\b", named, rest)
    leftover = rest.replace(",", " ").split()
    if leftover:
        raise ValueError(f"cannot read: {' '.join(leftover)}")
    return settings


class EvolutionChatRun:
    """One running (or finished) evolution inside the chat page; Stop calls ``cancel``."""

    waiting_for_human = False  # the chat page asks every running workflow this

    def __init__(self, chat: ChatPage, settings: dict[str, int]) -> None:
        self.chat = chat
        self.app = chat.app
        self.tr = chat.tr
        self.settings = settings
        self.cancel_event = threading.Event()
        self.chat_id: str | None = None
        self.generation_lines: list[str] = []
        self.live_image = ft.Image(src=b"", width=360, height=360, visible=False, gapless_playback=True)
        self.progress = ft.Text(self.tr("evolve_loading"), size=12, color=ft.Colors.ON_SURFACE_VARIANT)
        self.live = ft.Column([self.progress, self.live_image], spacing=4)
        self._last_progress = 0.0
        from src.workflows.evolution.simulation import EvolutionSimulation

        # Built here, on the UI thread, so that bad settings are an error banner before anything is saved.
        self.simulation = EvolutionSimulation(
            self.settings.get("num_agents"),
            self.settings.get("world_size"),
            seed=self.settings.get("seed"),
            steps_per_generation=self.settings.get("steps_per_generation"),
            num_generations=self.settings.get("num_generations"),
            on_event=lambda event: self._on_event(event),
            cancel=self.cancel_event,
        )

    def cancel(self) -> None:
        self.cancel_event.set()

    def start(self) -> None:
        config = self.simulation.config
        self.header = self.tr(
            "evolve_started", agents=config.num_agents, generations=config.num_generations,
            steps=config.steps_per_generation, size=config.world_size,
        )  # fmt: skip
        self.chat.messages.controls += [ft.Text(self.header, weight=ft.FontWeight.W_600), self.live]
        threading.Thread(target=self._run, name="hearth-evolution", daemon=True).start()

    def _run(self) -> None:
        self.chat.run_workflow(self, self.simulation.run)

    def _on_event(self, event: Any) -> None:
        # Called on the simulation's thread: progress is thinned out here so the UI loop is never flooded. The
        # transcript is kept here too: it is saved from this thread when the run ends (ChatPage.run_workflow).
        if event.kind == "generation":
            self.generation_lines.append(event.text)
        if event.kind == "step" and event.image is None:
            now = time.monotonic()
            if now - self._last_progress < PROGRESS_INTERVAL_S:
                return
            self._last_progress = now
        self.app.call_ui(self._show_event, event)

    def _visible(self) -> bool:
        return self.chat.chat_id == self.chat_id

    def _show_event(self, event: Any) -> None:
        if not self._visible():
            return  # the user is looking at another conversation; the run folder keeps everything
        if event.kind == "step":
            best = f"{event.best_fitness:.1f}" if event.best_fitness is not None else "-"
            self.progress.value = self.tr(
                "evolve_progress", generation=event.generation, generations=event.num_generations,
                step=event.step, steps=event.steps, best=best,
            )  # fmt: skip
            if event.image:
                self.live_image.src = event.image
                self.live_image.visible = True
        elif event.kind in ("generation", "notice"):
            controls = self.chat.messages.controls
            at = controls.index(self.live) if self.live in controls else len(controls)
            controls.insert(at, ft.Text(event.text, size=13))

    def transcript(self, result: Any) -> str:
        """What the conversation keeps: the settings, one line per generation and the outcome."""
        return "\n".join([self.header, *self.generation_lines, "", result.summary()])

    def summary_card(self, result: Any) -> ft.Control:
        title = self.tr("evolve_cancelled") if result.cancelled else self.tr("evolve_summary")
        items: list[ft.Control] = [ft.Text(title, size=16, weight=ft.FontWeight.W_600), ft.Text(result.summary())]
        if result.fitness_plot is not None:
            items.append(ft.Image(src=result.fitness_plot.read_bytes(), width=560, semantics_label="fitness plot"))

        async def open_folder(e: Any) -> None:
            await ft.UrlLauncher().launch_url(result.run_dir.as_uri())

        items.append(ft.OutlinedButton(self.tr("open_folder"), icon=ft.Icons.FOLDER_OPEN, on_click=open_folder))
        return ft.Card(content=ft.Container(padding=16, content=ft.Column(items, spacing=6)))
