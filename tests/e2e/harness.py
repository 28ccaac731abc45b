"""End-to-end harness: serve a Flet app in web mode and drive it with headless Chromium (Python Playwright).

Typical use (see README.md in this folder)::

    with AppServer(env={"HEARTH_DATA_DIR": str(tmp)}) as server, sync_playwright() as pw:
        browser = launch_browser(pw)
        page = open_app(browser, server.url)
        type_into(page, "Message", "hello")
        press_enter(page)
        wait_for_text(page, "hello")

Flutter web paints everything on a canvas. Playwright can only see the app once Flutter's semantics tree is on:
``open_app`` clicks the hidden ``flt-semantics-placeholder`` button, after which controls become
``flt-semantics`` elements with ARIA roles and names, and text fields become real ``<input>``/``<textarea>``s.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_PATH = os.environ.get("HEARTH_E2E_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying to reach Google, which this closed network refuses.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

SERVER_START_TIMEOUT_S = 30.0
APP_LOAD_TIMEOUT_S = 45.0  # a first load measured ~1.3 s here (skwasm renderer); a busy CI machine can be far slower
DEFAULT_TIMEOUT_S = 10.0
VIEWPORT = {"width": 1000, "height": 800}


class E2EError(RuntimeError):
    """The harness could not do what it was asked (server died, app never loaded, text never appeared...)."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """Runs a Flet web app as a subprocess and waits until it serves its page.

    ``command`` defaults to Hearth's own ``main.py --web --port PORT`` run from the project root; pass any other
    command (it may contain the literal ``{port}``, which is replaced) to serve a different script. ``env`` is
    added on top of the current environment. The process's stdout and stderr go to ``log_path`` (a temporary
    file unless given); ``log_text()`` reads it back, and a failure to start includes it in the error.
    """

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        cwd: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        start_timeout: float = SERVER_START_TIMEOUT_S,
    ) -> None:
        self.port = port or free_port()
        self.host = host
        if command is None:
            command = [sys.executable, "main.py", "--web", "--port", "{port}"]
        self.command = [str(part).replace("{port}", str(self.port)) for part in command]
        self.env = dict(env or {})
        self.cwd = str(cwd or PROJECT_ROOT)
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="flet-e2e-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._printed_url: str | None = None

    @property
    def url(self) -> str:
        """The address to open: Hearth's own link, with the key it printed (``?token=``) once it has printed it."""
        return self._printed_url or f"http://{self.host}:{self.port}/"

    def _find_printed_url(self) -> None:
        if self._printed_url is None:
            found = re.search(rf"http://{re.escape(self.host)}:{self.port}/\?token=[A-Za-z0-9_-]+", self.log_text())
            self._printed_url = found.group(0) if found else None

    def start(self) -> AppServer:
        env = os.environ.copy()
        # These would override the port and host the command was given.
        env.pop("FLET_SERVER_PORT", None)
        env.pop("FLET_SERVER_IP", None)
        # Never let Flet open a desktop browser (it does so for AppView.WEB_BROWSER when a DISPLAY is set).
        env.setdefault("FLET_FORCE_WEB_SERVER", "1")
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.env)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() can take any children down too
        )
        try:
            self._wait_until_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_serving(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        last_error = "no attempt yet"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise E2EError(
                    f"app server exited with code {code} before serving {self.url}\n"
                    f"command: {self.command}\n--- output ({self.log_path}) ---\n{self.log_text()}"
                )
            self._find_printed_url()
            # Cookies kept: Hearth answers its link with a redirect that moves the key into a cookie.
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
            try:
                with opener.open(self.url, timeout=2) as response:
                    if response.status == 200 and b"flutter" in response.read().lower():
                        return
                    last_error = f"HTTP {response.status}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last_error = repr(exc)
            time.sleep(0.1)
        raise E2EError(
            f"app server did not serve {self.url} within {self.start_timeout:.0f}s (last: {last_error})\n"
            f"command: {self.command}\n--- output ({self.log_path}) ---\n{self.log_text()}"
        )

    def log_text(self) -> str:
        if self._log is not None and not self._log.closed:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def dump_stacks(self, wait: float = 2.0) -> None:
        """Ask a running Hearth for the Python stacks of all its threads (SIGUSR1, see src/cli.py); they go to the
        log. Other commands may simply die of the signal, which is fine just before ``stop``."""
        process = self.process
        if process is not None and process.poll() is None and hasattr(signal, "SIGUSR1"):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGUSR1)
            time.sleep(wait)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``grace`` seconds."""
        process = self.process
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=grace)
        if process is not None:
            # Children that outlived their parent are still in the group.
            _signal_group(process, signal.SIGKILL)
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen[Any], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # start_new_session=True: the group id is the child's pid
    with contextlib.suppress(ProcessLookupError):
        if process.poll() is None:
            process.send_signal(sig)


def launch_browser(playwright: Any, *, headless: bool = True, executable_path: str | None = None, **kwargs: Any):
    """Headless Debian Chromium with the flags this offline machine needs. Raises if the binary is missing."""
    executable = executable_path or CHROMIUM_PATH
    if not Path(executable).is_file():
        raise E2EError(
            f"Chromium not found at {executable}. Install it (Debian: apt-get install chromium) or set "
            "HEARTH_E2E_CHROMIUM. Do not use `playwright install` (it downloads from the network)."
        )
    args = list(CHROMIUM_ARGS) + list(kwargs.pop("args", []))
    return playwright.chromium.launch(executable_path=executable, headless=headless, args=args, **kwargs)


def open_app(
    browser: Any,
    url: str,
    *,
    timeout: float = APP_LOAD_TIMEOUT_S,
    viewport: Mapping[str, int] = VIEWPORT,
    block_external: bool = True,
):
    """A new Page (in its own context) with the Flet app loaded and Flutter semantics enabled.

    With ``block_external`` every request that leaves the app's origin is aborted at once (even with
    ``no_cdn=True`` the Flet 1.0.5 client asks cdn.jsdelivr.net for Rive's wasm), so tests stay hermetic and
    never wait on a network that is not there. ``page.app_load_seconds`` records how long loading took.
    """
    context = browser.new_context(viewport=dict(viewport))
    if block_external:
        origin = urllib.parse.urlsplit(url)
        own = f"{origin.scheme}://{origin.netloc}/"
        # A regex is matched inside the browser driver; a Python callable would route every request through here.
        context.route(re.compile("^(?!" + re.escape(own) + ")"), lambda route: route.abort())
    page = context.new_page()
    page.set_default_timeout(DEFAULT_TIMEOUT_S * 1000)
    started = time.monotonic()
    try:
        page.goto(url, wait_until="load", timeout=timeout * 1000)
        enable_semantics(page, timeout=max(1.0, timeout - (time.monotonic() - started)))
    except Exception:
        context.close()
        raise
    page.app_load_seconds = time.monotonic() - started  # type: ignore[attr-defined]
    page.app_url = url  # type: ignore[attr-defined]  # with its key: page.url has lost it after the redirect
    return page


def enable_semantics(page: Any, *, timeout: float = APP_LOAD_TIMEOUT_S) -> None:
    """Turn on Flutter's accessibility tree and wait until the app's first controls are in it."""
    ms = timeout * 1000
    placeholder = page.locator("flt-semantics-placeholder")
    placeholder.wait_for(state="attached", timeout=ms)
    # The placeholder is a 1x1 off-screen element: a real click may miss it, a dispatched one does not.
    placeholder.dispatch_event("click")
    # flt-semantics nodes appear once the tree is on; the root node exists before the app has rendered its
    # controls, so also wait for one that carries text or a role besides the root's.
    page.wait_for_function(
        """() => {
            const nodes = document.querySelectorAll('flt-semantics');
            if (nodes.length < 2) return false;
            return Array.from(nodes).some(n => (n.textContent || '').trim() || n.getAttribute('role')
                || n.getAttribute('aria-label'));
        }""",
        timeout=ms,
    )


def wait_for_text(page: Any, text: str, timeout: float = DEFAULT_TIMEOUT_S, *, exact: bool = False):
    """Wait until ``text`` is visible somewhere in the semantics tree; returns its locator."""
    locator = page.get_by_text(text, exact=exact).first
    locator.wait_for(state="visible", timeout=timeout * 1000)
    return locator


def poll_text(
    locator: Any,
    predicate: Callable[[str], bool],
    timeout: float = DEFAULT_TIMEOUT_S,
    *,
    interval: float = 0.05,
    on_change: Callable[[str], None] | None = None,
    raw: bool = True,
) -> str:
    """Poll ``locator``'s text until ``predicate(text)`` is true; returns that text. For streaming output.

    ``raw`` reads ``text_content()``, which keeps a Text's newlines; ``inner_text()`` (raw=False) shows them
    as spaces, because Flutter lays each semantics label out on one line. ``on_change`` sees every distinct
    value, so a test can record how a streamed reply grew. A missing or detached element reads as "".
    """
    deadline = time.monotonic() + timeout
    last: str | None = None
    while True:
        try:
            text = (locator.text_content(timeout=500) or "") if raw else locator.inner_text(timeout=500)
        except Exception:  # not attached yet, or replaced while we read it
            text = ""
        if text != last:
            last = text
            if on_change is not None:
                on_change(text)
        if predicate(text):
            return text
        if time.monotonic() >= deadline:
            raise E2EError(f"text never satisfied the predicate within {timeout}s; last seen: {last!r}")
        time.sleep(interval)


def text_field(page: Any, label: str):
    """The editable element of the Flet TextField labelled ``label`` (an <input>, or <textarea> if multiline)."""
    return page.get_by_role("textbox", name=label, exact=True)


def type_into(page: Any, label: str, text: str, *, clear: bool = True, attempts: int = 3) -> Any:
    """Focus the TextField labelled ``label``, type ``text`` with real key events, and check it landed.

    Returns the field's locator. Newlines in ``text`` are typed as Shift+Enter (plain Enter would submit a
    ``shift_enter`` field). Why not ``locator.fill()``: Flutter keeps its own copy of the text and, when it
    takes focus, writes that copy back into the DOM element, so filled (or too-early typed) text is lost in
    roughly half the attempts. Waiting until the element is the document's focused element before typing
    fixes that; the value is then verified and the whole thing retried if Flutter still overwrote it.
    """
    field = text_field(page, label)
    expected = text
    last = ""
    for _ in range(attempts if clear else 1):  # appending cannot be retried safely
        field.click()
        page.wait_for_function("el => document.activeElement === el", arg=field.element_handle())
        page.wait_for_timeout(50)  # let Flutter attach its editing state to the element
        if clear:
            page.keyboard.press("Control+a")
            page.keyboard.press("Delete")
        else:
            page.keyboard.press("Control+End")
            expected = field.input_value() + text
        for i, line in enumerate(text.split("\n")):
            if i:
                page.keyboard.press("Shift+Enter")
            if line:
                page.keyboard.type(line)
        deadline = time.monotonic() + 1.0
        while True:
            last = field.input_value()
            if last == expected:
                page.wait_for_timeout(100)  # still there a moment later, i.e. Flutter did not overwrite it
                last = field.input_value()
                if last == expected:
                    return field
            if time.monotonic() >= deadline:
                break
            page.wait_for_timeout(50)
    raise E2EError(f"could not type {text!r} into the field labelled {label!r}; it holds {last!r}")


def press_enter(page: Any) -> None:
    page.keyboard.press("Enter")


def screenshot(page: Any, path: str | os.PathLike[str], *, full_page: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    return path
