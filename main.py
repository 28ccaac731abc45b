#!/usr/bin/env python3
"""Hearth's entry point. No arguments: the app's window (or the app in the browser where no window can open).
See --help for --web, --terminal and the chat and models commands."""

import sys

from src.cli import main

if __name__ == "__main__":
    sys.exit(main())
