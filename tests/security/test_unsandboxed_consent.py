"""Where no sandbox can start, generated code never runs silently: a company run is refused until the user agrees
(``--allow-unsandboxed``, or HEARTH_SANDBOX=rlimits), and a run that was allowed says in its summary what was not
contained. The machine without bubblewrap or Landlock is simulated by fake probes (orchestration only)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from src.errors import SandboxUnavailableError, UnsandboxedRunRefusedError
from src.sandbox import landlock
from src.sandbox.bubblewrap import BubblewrapProbe
from src.settings import ENV_SANDBOX, reload_settings
from src.workflows.company import sandbox
from src.workflows.company.runner import CompanyRun
from tests.company.test_runner import PhaseScriptedFakeModel

REASON = "user namespaces are disabled (fake probe)"
LANDLOCK_REASON = "this kernel has no Landlock (fake probe)"


@pytest.fixture(autouse=True)
def no_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "find_bubblewrap", lambda: BubblewrapProbe(None, REASON))
    monkeypatch.setattr(landlock, "unavailable_reason", lambda: LANDLOCK_REASON)


def test_a_company_run_is_refused_before_anything_happens(tmp_path: Path) -> None:
    model = PhaseScriptedFakeModel()
    with pytest.raises(UnsandboxedRunRefusedError) as refused:
        CompanyRun("a todo list", "Todo", model=model, warehouse_root=tmp_path / "WareHouse")
    assert REASON in str(refused.value) and LANDLOCK_REASON in str(refused.value)
    assert "--allow-unsandboxed" in str(refused.value)
    assert model.calls == [] and not (tmp_path / "WareHouse").exists()


@pytest.mark.parametrize("how", ["flag", "setting"])
def test_once_allowed_it_runs_and_says_what_was_not_contained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "setting":
        monkeypatch.setenv(ENV_SANDBOX, "rlimits")
        reload_settings()
    run = CompanyRun(
        "print hello", "Hello", model=PhaseScriptedFakeModel(), warehouse_root=tmp_path / "WareHouse",
        run_timeout_s=3.0, git=False, allow_unsandboxed=how == "flag",
    )
    result = run.run()
    assert result.ran_ok
    assert "limits only" in result.summary and "could read your files" in result.summary
    assert "limits only" in (result.folder / "meta.txt").read_text()


def test_the_cli_refuses_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from src.cli import main

    assert main(["company", "--task", "a todo list", "--name", "Todo"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--allow-unsandboxed" in errors[0]


def test_asking_for_bubblewrap_where_it_cannot_start_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SANDBOX, "bubblewrap")
    reload_settings()
    (tmp_path / "main.py").write_text("open('ran', 'w').write('x')\n")
    with pytest.raises(SandboxUnavailableError, match="namespaces are disabled"):
        sandbox.run_program(tmp_path, "main.py")
    assert not (tmp_path / "ran").exists()


def test_asking_for_landlock_where_the_kernel_has_none_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SANDBOX, "landlock")
    reload_settings()
    (tmp_path / "main.py").write_text("open('ran', 'w').write('x')\n")
    with pytest.raises(SandboxUnavailableError, match="no Landlock"):
        sandbox.run_program(tmp_path, "main.py")
    assert not (tmp_path / "ran").exists()


def test_without_bubblewrap_the_automatic_choice_is_landlock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(landlock, "unavailable_reason", lambda: None)
    assert sandbox.choose_sandbox("auto") == ("landlock", None)
    assert sandbox.require_containment() == "landlock"  # contained: no consent needed


class _FakePage:
    """Just enough of a Flet page to see the dialog a build shows and to click its buttons (orchestration only;
    the dialog's look is Flet's)."""

    def __init__(self) -> None:
        self.dialogs: list[object] = []
        self.shown = threading.Event()

    def show_dialog(self, dialog: object) -> None:
        self.dialogs.append(dialog)
        self.shown.set()

    def pop_dialog(self) -> None:
        pass


def _gui_build(tmp_path: Path):  # type: ignore[no-untyped-def]
    from src.ui.workflows.company_view import CompanyBuild

    page = _FakePage()
    app = SimpleNamespace(page=page, call_ui=lambda fn, *args: fn(*args), handler=SimpleNamespace(model=PhaseScriptedFakeModel()))
    chat = SimpleNamespace(app=app, tr=lambda key, **values: key)
    return CompanyBuild(chat, "Default", "print hello"), page  # type: ignore[arg-type]


def _answer(page: _FakePage, *, run: bool, remember: bool) -> None:
    import flet as ft

    assert page.shown.wait(30)
    dialog = page.dialogs[-1]
    assert isinstance(dialog, ft.AlertDialog) and dialog.title.value == "unsandboxed_title"
    checkbox = next(control for control in dialog.content.controls if isinstance(control, ft.Checkbox))
    checkbox.value = remember
    cancel, proceed = dialog.actions
    (proceed if run else cancel).on_click(None)


def test_the_gui_asks_first_and_runs_only_after_a_yes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from src.db.database import get_app_setting
    from src.ui.workflows.company_view import UNSANDBOXED_CONSENT_SETTING

    monkeypatch.setenv("HEARTH_WAREHOUSE_DIR", str(tmp_path / "WareHouse"))
    reload_settings()
    build, page = _gui_build(tmp_path)
    answering = threading.Thread(target=_answer, args=(page,), kwargs={"run": False, "remember": False})
    answering.start()
    with pytest.raises(UnsandboxedRunRefusedError):
        build._build_and_run()
    answering.join()
    assert not (tmp_path / "WareHouse").exists()

    build, page = _gui_build(tmp_path)
    answering = threading.Thread(target=_answer, args=(page,), kwargs={"run": True, "remember": True})
    answering.start()
    result = build._build_and_run()
    answering.join()
    assert result.ran_ok and "limits only" in result.summary
    assert get_app_setting(UNSANDBOXED_CONSENT_SETTING) == "yes"

    build, page = _gui_build(tmp_path)  # remembered: no second question
    assert build._build_and_run().ran_ok and page.dialogs == []


def test_stopping_the_build_while_it_asks_is_a_no(tmp_path: Path) -> None:
    build, page = _gui_build(tmp_path)
    threading.Timer(0.5, build.cancel).start()
    with pytest.raises(UnsandboxedRunRefusedError):
        build._build_and_run()
    assert len(page.dialogs) == 1


def test_landlock_before_abi_6_is_used_only_after_a_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Below ABI 6 a program could still signal Hearth's threads and the user's programs (found by review).
    monkeypatch.setattr(landlock, "unavailable_reason", lambda: None)
    monkeypatch.setattr(landlock, "landlock_abi", lambda: 4)
    with pytest.raises(UnsandboxedRunRefusedError) as refused:
        sandbox.require_containment()
    assert refused.value.mode == "landlock" and "ABI 4" in str(refused.value) and "could stop Hearth" in str(refused.value)
    assert sandbox.require_containment(allow_unsandboxed=True) == "landlock"
