"""Latency profiles: the Themis model, bundled profiles, fitting, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from planner.errors import PlannerInputError
from planner.profiles import (
    LatencyProfile,
    Pipeline,
    bundled_profile,
    fit_profile,
    load_pipeline,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "profiles"


def test_latency_and_throughput_known_answers() -> None:
    resnet = load_pipeline(bundled_profile("resnet18")).stages[0]
    # l(1, 1) = 28.08 + 2.63 + 6.81 + 0.46; l(8, 4) = 28.08*2 + 2.63*8 + 6.81/4 + 0.46
    assert resnet.latency_ms(1, 1) == pytest.approx(37.98)
    assert resnet.latency_ms(8, 4) == pytest.approx(56.16 + 21.04 + 1.7025 + 0.46)
    assert resnet.throughput_rps(1, 1) == pytest.approx(1000 / 37.98)
    assert resnet.throughput_rps(8, 4) == pytest.approx(8000 / 79.3625)
    grid = resnet.latency_ms(np.array([1, 8]), np.array([1, 4]))
    np.testing.assert_allclose(grid, [37.98, 79.3625])


def test_bundled_profiles_and_the_video_pipeline() -> None:
    video = load_pipeline(bundled_profile("video"))
    assert video.name == "video"
    assert video.stage_names == ("yolov5n", "resnet18")
    yolo, resnet = video.stages
    assert (yolo.alpha, yolo.beta, yolo.gamma, yolo.zeta) == (39.91, 7.78, 1.83, 0.45)
    assert (resnet.alpha, resnet.beta, resnet.gamma, resnet.zeta) == (28.08, 2.63, 6.81, 0.46)
    for profile in video.stages:
        assert (profile.max_cores, profile.max_batch, profile.percentile) == (16, 8, 99.0)
        assert "2407.14843" in profile.source
    older = load_pipeline(bundled_profile("yolov5n_themis_v1")).stages[0]
    assert older.zeta == -15.48 and older.latency_ms(1, 16) > 0


def test_unknown_bundled_profile_lists_the_available_ones() -> None:
    with pytest.raises(PlannerInputError, match=r"available: .*resnet18.*video"):
        bundled_profile("mobilenet")


def _synthetic_csv(path: Path, truth: LatencyProfile, noise_ms: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = ["cores,batch,p99_ms"]
    for cores in (1, 2, 4, 8, 16):
        for batch in (1, 2, 4, 8):
            p99 = truth.latency_ms(batch, cores) + rng.normal(0, noise_ms)
            lines.append(f"{cores},{batch},{p99:.4f}")
    path.write_text("\n".join(lines) + "\n")


def test_fit_recovers_known_coefficients(tmp_path: Path) -> None:
    truth = load_pipeline(bundled_profile("yolov5n")).stages[0]
    csv = tmp_path / "yolo.csv"
    _synthetic_csv(csv, truth, noise_ms=0.5, seed=7)
    profile, report = fit_profile(csv, name="yolo", max_cores=16, max_batch=8, memory_mb=512)
    assert report.n == 20
    assert report.r2 > 0.999
    assert report.rmse_ms < 0.6 and report.max_abs_err_ms < 2.0
    for key, tol in (("alpha", 1.0), ("beta", 0.2), ("gamma", 1.5), ("zeta", 1.0)):
        assert getattr(profile, key) == pytest.approx(getattr(truth, key), abs=tol), key
    assert profile.memory_mb == 512 and profile.max_cores == 16


def test_fit_is_exact_without_noise(tmp_path: Path) -> None:
    truth = load_pipeline(bundled_profile("resnet18")).stages[0]
    csv = tmp_path / "resnet.csv"
    _synthetic_csv(csv, truth, noise_ms=0.0, seed=0)
    profile, report = fit_profile(csv, name="r", max_cores=16, max_batch=8, memory_mb=1024)
    assert report.max_abs_err_ms < 1e-3
    for key in ("alpha", "beta", "gamma", "zeta"):
        assert getattr(profile, key) == pytest.approx(getattr(truth, key), abs=1e-3)


def test_load_pipeline_fits_a_csv_with_limits_from_the_measurements(tmp_path: Path) -> None:
    truth = load_pipeline(bundled_profile("resnet18")).stages[0]
    csv = tmp_path / "measured.csv"
    _synthetic_csv(csv, truth, noise_ms=0.1, seed=1)
    pipeline = load_pipeline(csv)
    (profile,) = pipeline.stages
    assert pipeline.name == "measured" and (profile.max_cores, profile.max_batch) == (16, 8)
    assert load_pipeline(csv, max_cores=4, max_batch=2).stages[0].max_cores == 4


def test_bundled_resnet18_against_infadapter_capacities() -> None:
    """The Themis ResNet18 fit and InfAdapter's measured capacities come from different machines
    and serving stacks, so they are not expected to agree; this pins how far apart they are.

    InfAdapter: the load one replica serves at batch 1 within a 750 ms p99 SLO. The Themis model
    at batch 1 without headroom gives 26 rps on 1 core (InfAdapter 19), 85 on 4 (90), 134 on 8
    (190), 190 on 16 (385): close at 1-4 cores, then the fit's serial part (β + ζ = 3.1 ms per
    request) caps it at 1000/3.09 = 324 rps however many cores, where InfAdapter kept scaling.
    """
    resnet = load_pipeline(bundled_profile("resnet18")).stages[0]
    rows = np.loadtxt(DATA / "resnet18_infadapter_capacity.csv", delimiter=",", skiprows=1)
    ratios = {}
    for cores, batch, slo_ms, measured in rows:
        # Back to back at batch 1 the latency (5-38 ms) is far inside the SLO, so one replica
        # carries its throughput.
        assert resnet.latency_ms(batch, cores) < slo_ms
        ratios[int(cores)] = float(resnet.throughput_rps(batch, cores)) / measured
    assert ratios[1] == pytest.approx(1.39, abs=0.01)
    assert ratios[4] == pytest.approx(0.94, abs=0.01)
    assert ratios[8] == pytest.approx(0.71, abs=0.01)
    assert ratios[16] == pytest.approx(0.49, abs=0.01)
    assert min(ratios.values()) > 0.45 and max(ratios.values()) < 1.4


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('name = "x"\nalpha = 1.0\n', "missing key(s) beta"),
        (
            'name = "x"\nalpha = -1\nbeta = 1\ngamma = 1\nzeta = 1\nmax_cores = 2\nmax_batch = 2\n'
            "memory_mb = 1\n",
            "alpha must be >= 0",
        ),
        (
            'name = "x"\nalpha = 1\nbeta = 0\ngamma = 1\nzeta = -50\nmax_cores = 2\nmax_batch = 2\n'
            "memory_mb = 1\n",
            "latency must be > 0",
        ),
        (
            'name = "x"\nalpha = 1\nbeta = 1\ngamma = 1\nzeta = 1\nmax_cores = 0\nmax_batch = 2\n'
            "memory_mb = 1\n",
            "max_cores must be an integer >= 1",
        ),
        ("name = [", "cannot read profile"),
        ('stages = ["nope"]\n', "no such profile"),
    ],
)
def test_bad_profile_files_give_one_line(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(PlannerInputError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert problem in message and str(path) in message and "\n" not in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("cores,batch\n1,1\n", "columns cores,batch,p99_ms"),
        ("cores,batch,p99_ms\n1,1,abc\n", "row 2: p99_ms is not a number"),
        ("cores,batch,p99_ms\n0,1,5\n", "row 2: cores must be an integer >= 1"),
        ("cores,batch,p99_ms\n1,1.5,5\n", "batch must be an integer"),
        ("cores,batch,p99_ms\n1,1,-5\n", "p99_ms must be > 0"),
        ("cores,batch,p99_ms\n1,1,5\n1,2,6\n1,4,8\n1,8,12\n", "cannot identify"),
    ],
)
def test_bad_measurements_give_one_line(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(content)
    with pytest.raises(PlannerInputError) as info:
        fit_profile(path, name="m", max_cores=4, max_batch=8, memory_mb=1)
    assert problem in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_empty_pipeline() -> None:
    with pytest.raises(PlannerInputError, match="not found"):
        load_pipeline("/nonexistent/profile.toml")
    with pytest.raises(PlannerInputError, match="no stages"):
        Pipeline("empty", ())
