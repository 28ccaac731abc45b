#!/usr/bin/env python3
"""A tiny Flet app that exists only to prove the e2e harness (it is not Hearth's GUI).

    python tests/e2e/demo_app.py --port 8765 [--cjk-font /path/to/font.ttf]

It has the pieces a chat GUI needs: a multiline "Message" field (Enter sends, Shift+Enter adds a newline), a
"Send" button, a message list whose bot reply is streamed word by word from a background thread, a Chinese
label, a confirmation dialog, a Dropdown and a Markdown code block.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import flet as ft

REPLY = "This reply arrives one word at a time from a worker thread"
WORD_DELAY_S = 0.15
CHINESE = "你好，世界"
CODE_SAMPLE = 'print("hello from a code block")'
MARKDOWN = f"# Notes\n\nSome **bold** text and a code block:\n\n```python\n{CODE_SAMPLE}\n```\n"


def build_main(font_url: str | None):
    def main(page: ft.Page) -> None:
        page.title = "Harness demo"
        if font_url:
            # A font shipped in assets_dir, addressed by its URL path; it becomes the app's default family.
            page.fonts = {"CJK": font_url}
            page.theme = ft.Theme(font_family="CJK")

        messages = ft.Column(spacing=4)
        status = ft.Text("idle")
        choice = ft.Text("Chosen: none")

        # The reply is produced on a worker thread (as a local model would), but every UI change is handed back
        # to the session's event loop. main() and sync event handlers run ON that loop in Flet 1.0, so this is
        # the loop to use. Calling page.update() straight from the worker is not thread-safe: Flet's send queue
        # is an asyncio.Queue, and in web mode such updates only get through late, on uvicorn's 100 ms tick.
        # (page.run_task(coro) does the same hand-over but raises once the browser tab has disconnected.)
        loop = asyncio.get_running_loop()

        def show(reply: ft.Text, text: str, done: bool) -> None:  # runs on the event loop
            reply.value = text
            if done:
                status.value = "done"
            page.update()

        def stream_reply(reply: ft.Text) -> None:  # runs on a worker thread (page.run_thread)
            words = REPLY.split()
            for i in range(len(words)):
                time.sleep(WORD_DELAY_S)  # stands in for generating the next token
                try:
                    loop.call_soon_threadsafe(show, reply, "Bot: " + " ".join(words[: i + 1]), i == len(words) - 1)
                except RuntimeError:  # the server is shutting down
                    return

        def send(text: str) -> None:
            text = text.strip()
            if not text:
                return
            messages.controls.append(ft.Text("You: " + text))
            reply = ft.Text("Bot: …")
            messages.controls.append(reply)
            status.value = "streaming"
            page.update()
            page.run_thread(stream_reply, reply)

        def on_send(e: ft.Event) -> None:  # Enter in the field (on_submit) and the Send button share this
            value = field.value or ""
            field.value = ""
            send(value)

        def close_dialog(e) -> None:
            page.pop_dialog()

        def confirm(e) -> None:
            status.value = "confirmed"
            page.pop_dialog()
            page.update()

        dialog = ft.AlertDialog(
            modal=True,
            title=ft.Text("Delete conversation?"),
            content=ft.Text("This cannot be undone."),
            actions=[
                ft.TextButton("Cancel", on_click=close_dialog),
                ft.TextButton("Delete", on_click=confirm),
            ],
        )

        def on_settings(e) -> None:
            status.value = "settings opened"
            page.update()

        def on_select(e) -> None:
            choice.value = f"Chosen: {dropdown.value}"
            page.update()

        field = ft.TextField(
            label="Message",
            multiline=True,
            shift_enter=True,
            min_lines=1,
            max_lines=5,
            on_submit=on_send,
            expand=True,
        )
        dropdown = ft.Dropdown(
            label="Model",
            options=[ft.DropdownOption(key=k, text=k) for k in ("alpha", "beta", "gamma")],
            on_select=on_select,
            width=200,
        )

        page.add(
            ft.Text(CHINESE, size=24),
            ft.Row([field, ft.Button("Send", on_click=on_send)]),
            ft.Row(
                [
                    ft.Button("Delete chat", on_click=lambda e: page.show_dialog(dialog)),
                    ft.IconButton(icon=ft.Icons.SETTINGS, tooltip="Settings", on_click=on_settings),
                    # A Dropdown's label is not exposed to accessibility; a Semantics label names it ("Model").
                    ft.Semantics(label="Model", content=dropdown),
                    choice,
                ]
            ),
            status,
            messages,
            ft.Markdown(MARKDOWN, extension_set=ft.MarkdownExtensionSet.GITHUB_WEB),
        )

    return main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--cjk-font", type=Path, help="a .ttf/.otf to use as the app font (served from its folder)")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    assets_dir = "assets"  # Flet's default; ignored when the folder does not exist
    font_url = None
    if args.cjk_font:
        font = args.cjk_font.resolve()
        assets_dir = str(font.parent)
        font_url = "/" + font.name
    ft.run(
        build_main(font_url),
        view=ft.AppView.WEB_BROWSER,
        host=args.host,
        port=args.port,
        assets_dir=assets_dir,
        no_cdn=True,
    )


if __name__ == "__main__":
    run()
