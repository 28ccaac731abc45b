#!/usr/bin/env python3
"""Hearth's entry point. No arguments: the terminal chat (the GUI replaces it once it lands). See --help."""

import sys

from src.cli import main

if __name__ == "__main__":
    sys.exit(main())
