@echo off
rem Double-click to start Hearth on Windows (after: python install_dependencies.py).
cd /d "%~dp0\.."
if not exist ".venv\Scripts\pythonw.exe" (
  echo Setting up Hearth for the first time...
  python install_dependencies.py || pause
)
start "" ".venv\Scripts\pythonw.exe" main.py
