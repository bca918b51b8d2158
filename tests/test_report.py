"""Tests for surgecast.offline.report: metrics.json contents and the self-contained HTML page."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from forecasting.errors import BadInputError
from forecasting.metrics import model_metrics
from surgecast.offline.report import mase_verdict, write_forecast_report

T0 = pd.Timestamp("2024-03-01T00:00:00Z")
ORIGINS = 50
H = 3
MODELS = ["naive", "adaptive"]
SCALE_RPS = 5.0
SETTINGS = {"step": "1min", "window_steps": 1440, "as_of": T0, "trials": np.int64(20)}


def actual_rps(minute: np.ndarray) -> np.ndarray:
    """A smooth daily-like wave: 100 +- 20 rps with a 20-minute period."""
    return 100.0 + 20.0 * np.sin(2 * np.pi * np.asarray(minute, dtype=float) / 20.0)


def add_model(frame: pd.DataFrame, name: str, mean: np.ndarray, spread_rps: float) -> None:
    frame[name] = mean
    for q, k in ((0.5, 0.0), (0.9, 1.3), (0.95, 1.6), (0.99, 2.3)):
        frame[f"{name}-q{q:g}"] = mean + k * spread_rps


def evaluation_frame(*, adaptive_error_rps: float) -> pd.DataFrame:
    """50 origins x H = 3 on a 1-minute grid; deterministic.

    naive repeats the value at the cutoff; hybrid is the truth plus a fixed offset, so a small
    offset makes the hybrid win and a large one makes the baseline win.
    """
    cutoff_min = np.repeat(np.arange(100, 100 + ORIGINS), H)
    h = np.tile(np.arange(1, H + 1), ORIGINS)
    target_min = cutoff_min + h
    frame = pd.DataFrame(
        {
            "ds": T0 + pd.to_timedelta(target_min, unit="min"),
            "cutoff": T0 + pd.to_timedelta(cutoff_min, unit="min"),
            "h": h,
            "y": actual_rps(target_min),
        }
    )
    frame.loc[7, "y"] = np.nan  # a scrape gap: ignored by every metric
    add_model(frame, "naive", actual_rps(cutoff_min), spread_rps=4.0)
    add_model(frame, "adaptive", actual_rps(target_min) + adaptive_error_rps, spread_rps=1.0)
    return frame


def write(tmp_path, frame, **overrides):
    metrics = model_metrics(frame, MODELS, SCALE_RPS)
    kwargs = {
        "trace": "twitter <1min>",
        "frame": frame,
        "models": MODELS,
        "metrics": metrics,
        "selected": "adaptive",
        "selection_reason": "Lowest MASE on the validation span.",
        "settings": SETTINGS,
        "horizon": H,
    }
    kwargs.update(overrides)
    return write_forecast_report(tmp_path / "report", **kwargs)


@pytest.fixture()
def adaptive_wins() -> pd.DataFrame:
    return evaluation_frame(adaptive_error_rps=0.5)


@pytest.fixture()
def baseline_wins() -> pd.DataFrame:
    return evaluation_frame(adaptive_error_rps=30.0)


def test_metrics_json_contents(tmp_path, adaptive_wins):
    metrics_path, html_path = write(tmp_path, adaptive_wins, fallbacks={"adaptive": 2})
    assert metrics_path == tmp_path / "report" / "metrics.json"
    assert html_path == tmp_path / "report" / "report.html"
    doc = json.loads(metrics_path.read_text())
    assert set(doc) == {
        "trace",
        "origins",
        "horizon",
        "selected",
        "models",
        "selection_reason",
        "settings",
        "test_span",
        "fallbacks",
    }
    assert doc["trace"] == "twitter <1min>"
    assert doc["origins"] == ORIGINS
    assert doc["horizon"] == H
    assert doc["selected"] == "adaptive"
    assert doc["selection_reason"] == "Lowest MASE on the validation span."
    assert list(doc["models"]) == MODELS
    assert doc["models"] == model_metrics(adaptive_wins, MODELS, SCALE_RPS)
    assert doc["test_span"] == {"start": "2024-03-01T01:41:00Z", "end": "2024-03-01T02:32:00Z"}
    assert doc["fallbacks"] == {"naive": 0, "adaptive": 2}
    assert doc["settings"] == {
        "step": "1min",
        "window_steps": 1440,
        "as_of": "2024-03-01T00:00:00Z",
        "trials": 20,
    }


def test_html_is_self_contained_with_plots(tmp_path, adaptive_wins):
    _, html_path = write(tmp_path, adaptive_wins)
    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "twitter &lt;1min&gt;" in page and "twitter <1min>" not in page  # escaped
    assert "2024-03-01T01:41:00Z" in page and "2024-03-01T02:32:00Z" in page
    for model in MODELS:
        assert f"<td>{model}" in page
    assert "Selected model: <b>adaptive</b>" in page
    assert "Lowest MASE on the validation span." in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert "<link" not in page and "<script" not in page  # nothing fetched from elsewhere
    assert "No model fell back" in page


def test_a_clear_win_of_the_pipelines_model_says_so_with_its_interval(tmp_path, adaptive_wins):
    metrics = model_metrics(adaptive_wins, MODELS, SCALE_RPS)
    assert metrics["adaptive"]["mase"] < metrics["naive"]["mase"]
    _, html_path = write(tmp_path, adaptive_wins)
    page = html_path.read_text()
    assert f"Lowest MASE on the test span: adaptive ({metrics['adaptive']['mase']:.3f})" in page
    assert "adaptive (the model surgecast runs) beat the best other model, naive" in page
    assert "95 % interval" in page and "tied" not in page


def test_baseline_win_is_stated_plainly(tmp_path, baseline_wins):
    metrics = model_metrics(baseline_wins, MODELS, SCALE_RPS)
    assert metrics["naive"]["mase"] < metrics["adaptive"]["mase"]
    _, html_path = write(tmp_path, baseline_wins, selected="naive", selection_reason="Lower MASE.")
    page = html_path.read_text()
    expected = (
        f"naive beat adaptive (the model surgecast runs): MASE {metrics['adaptive']['mase']:.3f}"
        f" against {metrics['naive']['mase']:.3f}"
    )
    assert expected in page
    assert "Selected model: <b>naive</b>" in page


def test_models_within_noise_of_each_other_are_called_tied() -> None:
    """Two models whose per-origin errors differ only by noise are tied, whichever has the
    lower MASE; the same gap, made systematic, is not."""
    frame = evaluation_frame(adaptive_error_rps=0.5)
    rng = np.random.default_rng(3)
    noise = rng.normal(0.0, 3.0, len(frame))
    frame["naive"] = frame["y"] + noise
    frame["adaptive"] = frame["y"] - noise[::-1]
    metrics = model_metrics(frame, MODELS, SCALE_RPS)
    sentence = mase_verdict(metrics, MODELS, frame)
    assert "are tied" in sentence and "which holds 0" in sentence, sentence
    frame["adaptive"] = frame["y"] + 3.0 * np.abs(noise[::-1]) + 1.0
    metrics = model_metrics(frame, MODELS, SCALE_RPS)
    sentence = mase_verdict(metrics, MODELS, frame)
    assert "naive beat adaptive" in sentence and "tied" not in sentence, sentence


def test_every_model_has_its_own_panel_and_the_weights_are_shown(tmp_path, adaptive_wins):
    cutoffs = pd.DatetimeIndex(adaptive_wins["cutoff"].unique())
    weights = pd.DataFrame(
        {"naive": np.linspace(0, 1, len(cutoffs)), "lgbm_lags": np.linspace(1, 0, len(cutoffs))},
        index=cutoffs,
    )
    metrics_path, html_path = write(tmp_path, adaptive_wins, member_weights=weights)
    page = html_path.read_text()
    assert "member weights at each origin" in page
    assert 'alt="forecast against actual for naive, adaptive"' in page
    doc = json.loads(metrics_path.read_text())
    assert doc["member_weights"]["naive"][-1] == 1.0
    assert len(doc["member_weights"]["cutoff"]) == len(cutoffs)


def test_best_value_per_column_is_bold(tmp_path, adaptive_wins):
    metrics = model_metrics(adaptive_wins, MODELS, SCALE_RPS)
    _, html_path = write(tmp_path, adaptive_wins)
    page = html_path.read_text()
    ours = re.search(r"<tr[^>]*><td>adaptive[^<]*</td>(.*?)</tr>", page).group(1)
    naive_row = re.search(r"<tr[^>]*><td>naive[^<]*</td>(.*?)</tr>", page).group(1)
    assert ours.startswith(f"<td><b>{metrics['adaptive']['mae']:.4g}</b></td>")
    assert naive_row.startswith(f"<td>{metrics['naive']['mae']:.4g}</td>")


def test_fallbacks_are_noted(tmp_path, adaptive_wins):
    _, html_path = write(tmp_path, adaptive_wins, fallbacks={"adaptive": 5})
    assert "adaptive at 5 of 50 origins (10.0%)" in html_path.read_text()


def test_unknown_selected_model_is_refused(tmp_path, adaptive_wins):
    with pytest.raises(BadInputError, match="selected model 'ets'"):
        write(tmp_path, adaptive_wins, selected="ets")


def test_verdict_without_the_pipelines_model():
    metrics = {"naive": {"mase": 1.2}, "seasonal_naive": {"mase": 0.9}}
    sentence = mase_verdict(metrics, ["naive", "seasonal_naive"])
    assert sentence.startswith("Lowest MASE on the test span: seasonal_naive (0.900).")
    assert "adaptive, the model surgecast runs, was not evaluated" in sentence


def test_a_rival_without_any_error_gets_a_plain_verdict_not_an_error() -> None:
    frame = evaluation_frame(adaptive_error_rps=0.5)
    frame["naive"] = frame["y"]  # exact wherever there is an actual
    metrics = model_metrics(frame, MODELS, SCALE_RPS)
    sentence = mase_verdict(metrics, MODELS, frame)
    assert "naive beat adaptive (the model surgecast runs)" in sentence, sentence
