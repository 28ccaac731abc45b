#!/usr/bin/env python3
"""Hearth's entry point. No arguments: the app's window (or the app in the browser where no window can open).
See --help for --web, --terminal and the chat, models and company commands."""

import sys

from src.cli import main


def open_gui(*, web: bool, port: int) -> int:
    from src.ui.app import run_gui  # only here: the core and the CLI never import the GUI

    return run_gui(web=web, port=port)


if __name__ == "__main__":
    from src.utils.shutdown import shutdown

    try:
        code = main(open_gui=open_gui)
    finally:
        # Stop what still runs and free the model now, before Python joins the remaining threads (atexit would do
        # it too, but after that join): see src/utils/shutdown.py.
        shutdown()
    sys.exit(code)
