"""Fixtures for browser end-to-end tests: one headless Chromium per session, and a factory for app pages."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import AppServer, launch_browser, open_app


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: drives a Flet app served in web mode with headless Chromium")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    # Lets fixtures see whether the test failed (item.rep_call), to keep a screenshot and the server log.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium. A missing /usr/bin/chromium is an error, never a skip (CI must notice)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_browser(playwright)  # raises E2EError if the executable is missing
        try:
            yield browser
        finally:
            browser.close()


AppPageFactory = Callable[..., Any]


@pytest.fixture
def app_page(browser: Any, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AppPageFactory]:
    """Factory: ``app_page(command=None, *, env=None, url=None, **server_kwargs) -> playwright Page``.

    Starts ``AppServer(command, env=...)`` (default command: Hearth's ``main.py --web --port {port}``) unless
    ``url`` points at a server that is already running, then opens the app with semantics enabled. The
    server inherits the test's environment, so the autouse fresh ``HEARTH_DATA_DIR`` applies; ``env`` adds
    to it. Everything is closed at teardown; if the test failed, a screenshot and the server log are kept
    in the test's tmp_path and their location printed.
    """
    servers: list[AppServer] = []
    pages: list[Any] = []

    def factory(
        command: Sequence[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        url: str | None = None,
        **server_kwargs: Any,
    ) -> Any:
        if url is None:
            server = AppServer(
                command, env=env, log_path=tmp_path / f"server-{len(servers)}.log", **server_kwargs
            ).start()
            servers.append(server)
            url = server.url
        page = open_app(browser, url)
        pages.append(page)
        return page

    yield factory

    report = getattr(request.node, "rep_call", None)
    failed = report is not None and report.failed
    for i, page in enumerate(pages):
        if failed:
            try:
                shot = tmp_path / f"failure-{i}.png"
                page.screenshot(path=str(shot))
                print(f"[e2e] screenshot of page {i}: {shot}")
            except Exception as exc:  # the page may be gone; the log still matters
                print(f"[e2e] no screenshot of page {i}: {exc}")
        page.context.close()
    for server in servers:
        if failed:
            server.dump_stacks()  # what a stuck server was doing, before it is stopped
        server.stop()
        if failed:
            print(f"[e2e] server log: {server.log_path}\n{server.log_text()[-12000:]}")

