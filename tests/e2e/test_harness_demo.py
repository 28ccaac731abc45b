"""Proves the e2e harness against tests/e2e/demo_app.py (a stand-in app, not Hearth's GUI)."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import demo_app
from tests.e2e.harness import (
    AppServer,
    E2EError,
    launch_browser,
    poll_text,
    press_enter,
    screenshot,
    type_into,
    wait_for_text,
)

pytestmark = pytest.mark.e2e

DEMO = Path(demo_app.__file__)
DEMO_COMMAND = [sys.executable, str(DEMO), "--port", "{port}"]
CJK_FONTS = [Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")]


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """One demo server for the module; every test opens its own page, i.e. its own Flet session."""
    log = tmp_path_factory.mktemp("demo") / "server.log"
    with AppServer(DEMO_COMMAND, log_path=log) as server:
        yield server


@pytest.fixture
def demo(app_page, demo_server: AppServer):
    return app_page(url=demo_server.url)


def test_enter_sends_the_message(demo) -> None:
    type_into(demo, "Message", "hello there")
    press_enter(demo)
    wait_for_text(demo, "You: hello there")
    # The field is emptied by the app and keeps the focus, ready for the next message.
    assert demo.get_by_role("textbox", name="Message").input_value() == ""
    assert demo.evaluate("() => document.activeElement.getAttribute('aria-label')") == "Message"


def test_shift_enter_inserts_a_newline_instead_of_sending(demo) -> None:
    field = type_into(demo, "Message", "line one\nline two")  # the newline is typed as Shift+Enter
    assert field.input_value() == "line one\nline two"
    demo.wait_for_timeout(500)
    assert demo.get_by_text("You:").count() == 0, "Shift+Enter must not send"

    press_enter(demo)
    sent = wait_for_text(demo, "You: line one")
    # inner_text() collapses the newline to a space; text_content() keeps it.
    assert sent.text_content() == "You: line one\nline two"


def test_send_button_streams_the_reply_progressively(demo) -> None:
    type_into(demo, "Message", "stream please")
    demo.get_by_role("button", name="Send", exact=True).click()
    wait_for_text(demo, "You: stream please")

    seen: list[str] = []
    full = "Bot: " + demo_app.REPLY
    poll_text(demo.get_by_text("Bot:").last, lambda text: text == full, timeout=15, on_change=seen.append)

    partial = [text for text in seen if text.startswith("Bot: ") and text != full and text != "Bot: …"]
    assert len(partial) >= 3, f"expected several partial states, saw {seen}"
    assert all(full.startswith(text) for text in partial), seen
    assert sorted(partial, key=len) == partial, f"the reply must only grow: {seen}"
    wait_for_text(demo, "done", exact=True)


def test_confirmation_dialog_confirm_button_is_clickable(demo) -> None:
    demo.get_by_role("button", name="Delete chat").click()
    dialog = demo.get_by_role("alertdialog")
    dialog.wait_for()
    assert "Delete conversation?" in dialog.inner_text()
    dialog.get_by_role("button", name="Delete", exact=True).click()
    wait_for_text(demo, "confirmed", exact=True)
    dialog.wait_for(state="detached")


def test_icon_button_is_reached_through_its_tooltip(demo) -> None:
    # The tooltip labels a wrapper around the button, so get_by_role("button", name="Settings") finds nothing.
    assert demo.get_by_role("button", name="Settings").count() == 0
    demo.get_by_label("Settings", exact=True).click()
    wait_for_text(demo, "settings opened", exact=True)


def test_dropdown_selection(demo) -> None:
    demo.get_by_role("button", name="Model").click()  # named by the Semantics wrapper in the demo
    demo.get_by_role("button", name="beta", exact=True).click()
    wait_for_text(demo, "Chosen: beta", exact=True)


def test_markdown_code_block_text_is_findable(demo) -> None:
    wait_for_text(demo, demo_app.CODE_SAMPLE, exact=True)
    wait_for_text(demo, "Notes", exact=True)


def test_chinese_text_renders_with_a_bundled_font(app_page, tmp_path: Path) -> None:
    font = next((f for f in CJK_FONTS if f.is_file()), None)
    if font is None:
        pytest.skip(f"no CJK font to bundle (looked for {[str(f) for f in CJK_FONTS]})")
    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(font, assets / font.name)  # Flutter web (CanvasKit) reads the .ttc's first face directly
    page = app_page([*DEMO_COMMAND, "--cjk-font", str(assets / font.name)])

    text = wait_for_text(page, demo_app.CHINESE, exact=True)
    # Missing glyphs are drawn as narrow boxes: 5 characters at size 24 measured 54 px without the font and
    # 121 px with it. Poll, because the font arrives after the first frame.
    deadline = time.monotonic() + 10
    while (width := text.bounding_box()["width"]) < 0.8 * 5 * 24 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    shot = screenshot(page, tmp_path / "cjk.png")
    print(f"screenshot: {shot}")
    assert width >= 0.8 * 5 * 24, f"Chinese text is {width:.0f} px wide: tofu? see {shot}"


def test_server_that_dies_reports_its_output(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('boom on stderr', file=sys.stderr); sys.exit(3)"]
    with pytest.raises(E2EError, match=r"(?s)exited with code 3.*boom on stderr"):
        AppServer(command, log_path=tmp_path / "dead.log").start()


def test_missing_chromium_is_an_error_not_a_skip() -> None:
    with pytest.raises(E2EError, match="Chromium not found"):
        launch_browser(object(), executable_path="/nonexistent/chromium")
