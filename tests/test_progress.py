"""Progress lines: a bar on a terminal, periodic log lines when output goes to a file."""

from __future__ import annotations

import logging

import pytest

from mwp.progress import Progress, progress_mode


def test_redirected_output_gets_log_lines_with_rate_and_remaining_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MWP_PROGRESS", raising=False)
    monkeypatch.setenv("MWP_PROGRESS_EVERY_S", "0")
    assert progress_mode() == "log"  # pytest captures stderr: not a terminal
    with (
        caplog.at_level(logging.INFO, logger="mwp.progress"),
        Progress(4, "eval student", unit="problem") as bar,
    ):
        bar.postfix(kept=3)
        bar.update(1)
        bar.update(3)
    lines = [r.getMessage() for r in caplog.records]
    assert (
        lines[0].startswith("eval student: 1/4 problems (25%)")
        and "left" in lines[0]
        and "kept 3" in lines[0]
    )
    assert lines[-1].startswith("eval student: 4/4 problems (100%)") and "left" not in lines[-1]


def test_log_lines_are_spaced_and_off_means_silent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MWP_PROGRESS_EVERY_S", "3600")
    with caplog.at_level(logging.INFO, logger="mwp.progress"):
        with Progress(100, "sampling", unit="sample") as bar:
            for _ in range(100):
                bar.update()
        (only,) = [r.getMessage() for r in caplog.records]
        assert only.startswith("sampling: 100/100 samples (100%)")
        caplog.clear()
        monkeypatch.setenv("MWP_PROGRESS", "off")
        with Progress(10, "quiet") as bar:
            bar.update(10)
        assert not caplog.records


def test_a_terminal_gets_a_bar(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MWP_PROGRESS", "bar")
    with Progress(3, "decode", unit="problem") as bar:
        bar.update(3)
    assert "decode: 100%" in capsys.readouterr().err
