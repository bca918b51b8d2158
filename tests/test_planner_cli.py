"""The ``surgecast plan`` command: decisions for a load, a timed plan for a forecast, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from planner.plan import Plan
from surgecast.cli import app

runner = CliRunner()


def _forecast_file(tmp_path: Path, q95: list[float]) -> Path:
    cutoff = pd.Timestamp("2024-01-08T07:30:00Z")
    ds = [cutoff + pd.Timedelta(minutes=h + 1) for h in range(len(q95))]
    data = {
        "model": "hybrid",
        "cutoff": "2024-01-08T07:30:00Z",
        "step_s": 60.0,
        "fallback": None,
        "ds": [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in ds],
        "mean": [v * 0.8 for v in q95],
        "quantiles": {"0.5": [v * 0.7 for v in q95], "0.95": q95},
    }
    path = tmp_path / "forecast.json"
    path.write_text(json.dumps(data))
    return path


def test_plan_for_a_load_prints_both_decisions() -> None:
    result = runner.invoke(
        app, ["plan", "--profile", "resnet18", "--slo-ms", "750", "--rps", "150"]
    )
    assert result.exit_code == 0, result.output
    assert "horizontal: 6 cores, 98.1 ms end to end" in result.output
    assert "vertical: 9 cores, 62.7 ms end to end" in result.output
    assert "bound by load; meets the SLO" in result.output


def test_plan_for_a_pipeline_with_a_current_state() -> None:
    result = runner.invoke(
        app,
        [
            "plan",
            "--profile",
            "video",
            "--slo-ms",
            "1000",
            "--rps",
            "150",
            "--replicas",
            "2,1",
            "--cores",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "current: 3 cores" in result.output and "INFEASIBLE" in result.output
    assert "horizontal: 14 cores" in result.output
    assert "yolov5n" in result.output and "resnet18" in result.output


def test_plan_from_a_forecast_writes_the_plan(tmp_path: Path) -> None:
    forecast = _forecast_file(tmp_path, [60.0] * 4 + [240.0, 280.0, 260.0] + [60.0] * 8)
    out = tmp_path / "plan.json"
    result = runner.invoke(
        app,
        [
            "plan",
            "--profile",
            "resnet18",
            "--slo-ms",
            "750",
            "--forecast",
            str(forecast),
            "--rps",
            "55",
            "--replicas",
            "3",
            "--cores",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "scale-out" in result.output
    assert "240 rps forecast at 07:35 (q0.95), peak 280 rps at 07:36" in result.output
    plan = Plan.from_dict(json.loads(out.read_text()))
    assert plan.service == "resnet18" and plan.quantile == 0.95
    (step,) = plan.steps
    # The cold start defaults to the service spec's (60 s), as in `surgecast run`.
    assert step.apply_at == pd.Timestamp("2024-01-08T07:34:00Z")
    assert "for a 60 s cold start" in step.reason


def test_plan_fits_a_measurement_csv(tmp_path: Path) -> None:
    csv = tmp_path / "measured.csv"
    rows = ["cores,batch,p99_ms"]
    for cores in (1, 2, 4):
        for batch in (1, 2, 4):
            rows.append(f"{cores},{batch},{30 * batch / cores + 3 * batch + 5 / cores + 1:.3f}")
    csv.write_text("\n".join(rows) + "\n")
    result = runner.invoke(app, ["plan", "--profile", str(csv), "--slo-ms", "500", "--rps", "40"])
    assert result.exit_code == 0, result.output
    assert "measured" in result.output


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--profile", "mobilenet", "--slo-ms", "750", "--rps", "1"], "no such bundled profile"),
        (["--profile", "resnet18", "--slo-ms", "-3", "--rps", "1"], "'--slo-ms': -3"),
        (["--profile", "resnet18", "--slo-ms", "750"], "--rps"),
        (["--profile", "resnet18", "--slo-ms", "750", "--rps", "-1"], "'--rps': -1 is not in"),
        (
            ["--profile", "video", "--slo-ms", "750", "--rps", "1", "--replicas", "1,2,3"],
            "--replicas",
        ),
        (
            ["--profile", "resnet18", "--slo-ms", "750", "--forecast", "missing.json"],
            "missing.json: forecast file not found",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], problem: str) -> None:
    result = runner.invoke(app, ["plan", *args])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.startswith("error:") and problem in message
    assert "Traceback" not in message and len(message.splitlines()) == 1


def test_missing_quantile_is_one_line(tmp_path: Path) -> None:
    forecast = _forecast_file(tmp_path, [60.0] * 5)
    result = runner.invoke(
        app,
        [
            "plan",
            "--profile",
            "resnet18",
            "--slo-ms",
            "750",
            "--forecast",
            str(forecast),
            "--quantile",
            "0.99",
        ],
    )
    assert result.exit_code == 2
    assert "--quantile 0.99: not in the forecast; it has 0.5, 0.95" in result.output
