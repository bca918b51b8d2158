"""The ``surgecast decompose`` command: outputs, summary, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from surgecast.cli import app

runner = CliRunner()


def test_decompose_writes_plot_and_summary(tmp_path: Path) -> None:
    plot = tmp_path / "dec.png"
    summary = tmp_path / "dec.json"
    result = runner.invoke(
        app,
        [
            "decompose",
            "--at",
            "2024-01-03T00:00:00Z",
            "--window",
            "1440",
            "--trials",
            "10",
            "--imfs",
            "6",
            "--plot",
            str(plot),
            "--json",
            str(summary),
        ],
    )
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(summary.read_text())
    assert data["components"] == 6
    assert data["window"] == 1440
    assert data["trials"] == 10
    assert data["backend"] == "fast"
    assert data["cutoff"] == "2024-01-03T00:00:00Z"
    assert data["reconstruction_error"] <= 1e-9
    assert 0 < data["seconds"] < 60
    # The window holds one of the trace's daily ~29-minute gaps, filled by cleaning.
    assert 25 <= data["filled_points"] <= 31
    assert "imf_6" in result.output and "residue" in result.output


def test_decompose_resamples_the_azure_trace(tmp_path: Path) -> None:
    summary = tmp_path / "azure.json"
    result = runner.invoke(
        app,
        [
            *["decompose", "azure_llm_code_2024_10s.csv", "--window", "720", "--trials", "8"],
            *["--backend", "pyemd", "--json", str(summary)],
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(summary.read_text())
    assert data["backend"] == "pyemd"
    assert data["cutoff"] == "2024-05-16T23:59:00Z"  # last whole minute of the 10 s trace
    assert data["filled_points"] == 0


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["no_such_trace.csv"], "no_such_trace.csv"),
        (["--at", "yesterday"], "--at"),
        (["--at", "2024-01-05T00:00:00"], "no time zone"),
        (["--at", "2024-01-05T00:00:00+02:00"], "not UTC"),
        (["--at", "2023-12-01T00:00:00Z"], "2023-12-01"),
        (["--window", "999999"], "--window"),
        (["--window", "20160", "--at", "2024-01-03T00:00:00Z"], "too short"),
        (["--backend", "matlab"], "matlab"),
        (["--trials", "0"], "trials"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], problem: str) -> None:
    result = runner.invoke(app, ["decompose", *args])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.startswith("error:")
    assert problem in message
    assert "Traceback" not in message


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,rps\n2024-01-01T00:00:00Z,1\n2024-01-01T00:01:00Z,-3\n")
    exe = shutil.which("surgecast") or str(Path(sys.executable).with_name("surgecast"))
    proc = subprocess.run(
        [exe, "decompose", str(bad)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(bad) in lines[0] and "negative" in lines[0]
