"""Can the Flet desktop window start? If not, say why, so the app opens in the browser instead of dying.

flet-desktop downloads its client (~100 MB) from GitHub on first launch. Offline, or where GitHub is blocked (the same
users who need Hub mirrors), that download fails or hangs with no timeout. So before handing over to Flet we check:
a client already on disk, or a client URL (``FLET_CLIENT_URL``, a mirror, else GitHub's release) that answers within
a few seconds, and a display to show a window on.
"""

from __future__ import annotations

import logging
import os
import platform
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

CLIENT_PROBE_TIMEOUT_S = 5.0


def client_url() -> str:
    import flet_desktop
    from flet_desktop.version import version

    default = f"https://github.com/flet-dev/flet/releases/download/v{version}/{flet_desktop.get_artifact_filename()}"
    return os.environ.get("FLET_CLIENT_URL") or default


def _client_on_disk() -> bool:
    if os.environ.get("FLET_VIEW_PATH"):
        return True
    try:
        import flet_desktop

        bundled = flet_desktop.get_package_bin_dir()
        if bundled and Path(bundled).is_dir() and any(Path(bundled).iterdir()):
            return True
    except Exception:  # an older or newer flet-desktop without this helper: look at the cache only
        pass
    cache = Path.home() / ".flet" / "client"
    return cache.is_dir() and any(cache.iterdir())


def _has_display() -> bool:
    if platform.system() != "Linux":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def desktop_unavailable_reason() -> str | None:
    """None when the desktop window can start; else a one-line reason for the user."""
    try:
        import flet_desktop  # noqa: F401
    except ImportError:
        return "flet-desktop is not installed"
    if not _client_on_disk():
        url = client_url()
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=CLIENT_PROBE_TIMEOUT_S):
                pass
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return (
                f"the desktop client could not be fetched from {url} ({reason}); "
                "set FLET_CLIENT_URL to a mirror of it to use the desktop window"
            )
        try:
            import flet_desktop

            flet_desktop.ensure_client_cached()
        except Exception as exc:  # a failed or corrupt download: still not a reason to die
            return f"the desktop client download failed ({exc})"
    if not _has_display():
        return "there is no graphical display (DISPLAY is not set)"
    return None
