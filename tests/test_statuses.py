"""Statuses are StrEnums whose stored values never change, and each one the GUI shows has its words in both
languages (a bare string once leaked into an i18n key: ``status_not downloaded``)."""

from __future__ import annotations

import json

import pytest

from src.ui.i18n import LANGUAGES, STRINGS
from src.utils.downloader import DownloadStatus, FileStatus
from src.utils.generation import FinishReason
from src.utils.ModelManager import ModelStatus


@pytest.mark.parametrize("status", list(ModelStatus))
def test_every_model_status_is_translated(status: ModelStatus) -> None:
    assert status.message_key in STRINGS, status
    assert set(STRINGS[status.message_key]) == set(LANGUAGES)


def test_stored_values_are_the_plain_strings_they_always_were() -> None:
    assert [s.value for s in ModelStatus] == ["embedded", "not downloaded", "partial", "downloading", "ready", "corrupt"]
    assert [s.value for s in DownloadStatus] == ["queued", "downloading", "paused", "verifying", "done", "failed", "corrupt"]
    assert [s.value for s in FileStatus] == ["pending", "partial", "done", "skipped"]
    assert [s.value for s in FinishReason] == ["stop", "length", "cancelled", "error"]
    assert json.dumps([DownloadStatus.DONE, FinishReason.STOP]) == '["done", "stop"]' and f"{ModelStatus.READY}" == "ready"
