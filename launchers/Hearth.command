#!/bin/bash
# Double-click to start Hearth on macOS (Finder runs .command files in Terminal).
cd "$(dirname "$0")/.." || exit 1
[ -x .venv/bin/python ] || python3 install_dependencies.py || exit 1
exec .venv/bin/python main.py
