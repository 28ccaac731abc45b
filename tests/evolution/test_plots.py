"""The plots are real PNGs of the requested size, written atomically, and the world picture is fast."""

from __future__ import annotations

import io
import time
from pathlib import Path

from PIL import Image

from src.workflows.evolution.plots import plot_fitness, render_world, world_image
from src.workflows.evolution.rule_based import RuleBasedPolicy, run_policy
from src.workflows.evolution.world import World

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def open_png(data: bytes) -> Image.Image:
    assert data[:8] == PNG_SIGNATURE
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_fitness_plot(tmp_path: Path) -> None:
    history = {
        "LLM mean": [1.0, 5.0, 9.0], "LLM max": [4.0, 12.0, 20.0],
        "rule-based mean": [30.0, 31.0, 29.0], "rule-based max": [50.0, 52.0, 49.0],
        "no-learning mean": [0.5, 0.4, 0.6],
    }
    path = tmp_path / "plots" / "fitness.png"
    data = plot_fitness(history, path, width_px=640, height_px=400)
    assert path.read_bytes() == data
    assert open_png(data).size == (640, 400)
    assert not list(path.parent.glob(".*tmp"))  # no temp file left behind
    empty = open_png(plot_fitness({}))
    assert empty.size == (800, 480)


def test_world_picture_shows_cells_agents_and_highlight(tmp_path: Path) -> None:
    world = World.from_layout("#####\n#F.H#\n#...#\n#...#\n#####", agents=[(1, 2), (2, 2), (3, 3)])
    world.agents[2].alive = False
    image = world_image(world)
    assert image.shape == (5, 5, 3)
    assert tuple(image[1, 1]) != tuple(image[2, 2]) != tuple(image[0, 0]) and tuple(image[1, 3]) != tuple(image[2, 2])
    data = render_world(world, highlight_agent=1, path=tmp_path / "world.png", pixels=300)
    picture = open_png(data).convert("RGB")
    assert picture.size == (300, 300) and (tmp_path / "world.png").read_bytes() == data
    colours = picture.getcolors(maxcolors=300 * 300)
    assert colours is not None
    reds = sum(n for n, (r, g, b) in colours if r > 180 and g < 80 and b < 80)
    assert reds > 50  # the highlighted agent is drawn in red
    plain = open_png(render_world(world, highlight_agent=None, pixels=300)).convert("RGB")
    assert sum(n for n, (r, g, b) in plain.getcolors(300 * 300) if r > 180 and g < 80 and b < 80) < reds


def test_world_picture_is_fast_enough_for_a_live_view() -> None:
    world = World(size=20, seed=4, num_agents=20)
    run_policy(world, RuleBasedPolicy(seed=4), 40)
    render_world(world, highlight_agent=0)  # warm-up (font cache)
    durations = []
    for _ in range(3):
        start = time.perf_counter()
        data = render_world(world, highlight_agent=3)
        durations.append(time.perf_counter() - start)
    assert open_png(data).size == (480, 480)
    assert sorted(durations)[1] < 0.15, durations
