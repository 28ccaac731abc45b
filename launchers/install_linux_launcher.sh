#!/bin/sh
# Adds Hearth to the Linux application menu (and the desktop, if there is one): a .desktop file with this
# checkout's absolute paths, so it can be double-clicked.
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
target="${XDG_DATA_HOME:-$HOME/.local/share}/applications/hearth.desktop"
mkdir -p "$(dirname "$target")"
cat > "$target" <<DESKTOP
[Desktop Entry]
Type=Application
Name=Hearth
Comment=Private chat with local language models
Exec=sh -c 'cd "$root" && [ -x .venv/bin/python ] || python3 install_dependencies.py; exec .venv/bin/python main.py'
Icon=$root/assets/hearth.svg
Terminal=false
Categories=Utility;Chat;
DESKTOP
chmod +x "$target"
desktop_dir=$(xdg-user-dir DESKTOP 2>/dev/null || echo "$HOME/Desktop")
if [ -d "$desktop_dir" ]; then cp "$target" "$desktop_dir/hearth.desktop" && chmod +x "$desktop_dir/hearth.desktop"; fi
echo "Installed $target"
