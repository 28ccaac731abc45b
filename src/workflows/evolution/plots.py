"""PNG plots of the evolution: fitness per generation, and a picture of the grid world.

Only ``matplotlib.figure.Figure`` with the Agg canvas is used, never ``pyplot``: pyplot keeps global state (current
figure, figure manager) that is not thread-safe, and the GUI renders from worker threads while a run goes on. Both
functions return the PNG bytes (the GUI shows them without a file) and, given a path, also write the file atomically.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from src.utils.files import write_atomically
from src.workflows.evolution.world import World

logger = logging.getLogger(__name__)

# Colours (RGB 0..1) of the world picture.
FLOOR = (0.97, 0.96, 0.92)
WALL = (0.25, 0.25, 0.28)
HOME = (0.99, 0.80, 0.45)
FOOD = (0.45, 0.78, 0.35)
AGENT = "#1f5fbf"
CARRY = "#f2a900"
DEAD = "#9a9a9a"
HIGHLIGHT = "#d62728"
SERIES_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")

_STAT_SUFFIX = re.compile(r"[\s_-]*\b(mean|max|min|avg|average|best|median)\s*$", re.IGNORECASE)
_LINE_STYLES = {"mean": "-", "avg": "-", "average": "-", "median": "-", "max": "--", "best": "--", "min": ":"}


def _png(figure: Figure, path: str | Path | None, dpi: float) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    data = buffer.getvalue()
    if path is not None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, data)
    return data


def plot_fitness(
    history: Mapping[str, Sequence[float]],
    path: str | Path | None = None,
    *,
    title: str = "Fitness per generation",
    width_px: int = 800,
    height_px: int = 480,
) -> bytes:
    """One line per series (``{"LLM mean": [...], "LLM max": [...], "rule-based mean": [...]}``) over generations
    1..n. Series sharing a population name (the name without a trailing mean/max/min) share a colour; max is dashed,
    min dotted. Returns the PNG bytes and writes them to ``path`` when given."""
    dpi = 100.0
    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    axes = figure.add_subplot(1, 1, 1)
    colours: dict[str, str] = {}
    drawn = 0
    for name, values in history.items():
        series = [float(v) for v in values]
        if not series:
            continue
        match = _STAT_SUFFIX.search(name)
        population = name[: match.start()].strip() if match else name
        style = _LINE_STYLES.get(match.group(1).lower(), "-") if match else "-"
        colour = colours.setdefault(population or name, SERIES_COLOURS[len(colours) % len(SERIES_COLOURS)])
        generations = np.arange(1, len(series) + 1)
        axes.plot(generations, series, style, color=colour, marker="o", markersize=3, linewidth=1.6, label=name)
        drawn += 1
    axes.set_xlabel("generation")
    axes.set_ylabel("fitness")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.xaxis.get_major_locator().set_params(integer=True)
    if drawn:
        axes.legend(loc="best", fontsize="small")
    else:
        axes.text(0.5, 0.5, "no generations yet", ha="center", va="center", transform=axes.transAxes, color="grey")
    figure.tight_layout()
    return _png(figure, path, dpi)


def world_image(world: World) -> np.ndarray:
    """The static cells as an RGB array (rows = y, columns = x): floor, walls, home, food."""
    image = np.empty((world.size, world.size, 3), dtype=np.float32)
    image[:, :] = FLOOR
    for cells, colour in ((world.home, HOME), (world.food, FOOD), (world.walls, WALL)):
        if cells:
            xs, ys = zip(*cells)
            image[list(ys), list(xs)] = colour
    return image


def render_world(
    world: World,
    highlight_agent: int | None = None,
    path: str | Path | None = None,
    *,
    title: str | None = None,
    pixels: int = 480,
) -> bytes:
    """The grid as a square PNG of ``pixels`` x ``pixels``: walls dark, home orange, food green, agents as blue dots
    (an amber centre when carrying food, grey crosses when dead), ``highlight_agent`` as a larger red dot.
    Returns the PNG bytes and writes them to ``path`` when given."""
    dpi = 100.0
    figure = Figure(figsize=(pixels / dpi, pixels / dpi), dpi=dpi)
    axes = figure.add_axes((0.02, 0.02, 0.96, 0.90))
    size = world.size
    axes.imshow(world_image(world), interpolation="nearest", extent=(-0.5, size - 0.5, size - 0.5, -0.5))
    marker_area = max(6.0, (0.6 * pixels * 0.9 / size) ** 2)  # points^2: a dot about 60% of a cell wide

    alive = [a for a in world.agents if a.alive and a.id != highlight_agent]
    dead = [a for a in world.agents if not a.alive and a.id != highlight_agent]
    if dead:
        axes.scatter([a.x for a in dead], [a.y for a in dead], s=marker_area * 0.6, marker="x", c=DEAD, linewidths=1.5)
    if alive:
        axes.scatter([a.x for a in alive], [a.y for a in alive], s=marker_area, c=AGENT, edgecolors="white", linewidths=0.8)
    carrying = [a for a in world.agents if a.alive and a.carrying]
    if carrying:
        axes.scatter([a.x for a in carrying], [a.y for a in carrying], s=marker_area * 0.25, c=CARRY, zorder=4)
    if highlight_agent is not None and 0 <= highlight_agent < len(world.agents):
        h = world.agents[highlight_agent]
        colour = HIGHLIGHT if h.alive else DEAD
        axes.scatter([h.x], [h.y], s=marker_area * 1.7, c=colour, edgecolors="black", linewidths=1.2, zorder=5,
                     marker="o" if h.alive else "X")
        if h.alive and h.carrying:
            axes.scatter([h.x], [h.y], s=marker_area * 0.35, c=CARRY, zorder=6)
    axes.set_xlim(-0.5, size - 0.5)
    axes.set_ylim(size - 0.5, -0.5)
    axes.set_xticks([])
    axes.set_yticks([])
    living = sum(a.alive for a in world.agents)
    axes.set_title(title or f"step {world.t} · {living}/{len(world.agents)} alive · {len(world.food)} food",
                   fontsize="medium")
    return _png(figure, path, dpi)
