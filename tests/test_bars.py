"""The evaluation's bars on results.json rows: met, not met, and not checked."""

from __future__ import annotations

from surgecast.offline.bars import best_costlier_hpa, check_bars


def row(violations: int, core_hours: float, rate: float | None = None) -> dict:
    return {"violations": violations, "core_hours": core_hours,
            "violation_rate": rate if rate is not None else violations / 1e6}


def results(**rows) -> dict:
    return {"policies": {k.replace("_", "-"): v for k, v in rows.items()},
            "lower_bound": {"core_hours": 80.0}}


def by_name(bars):
    return {b.name.split()[0] + ("-bound" if "bound" in b.name else ""): b for b in bars}


def test_a_run_that_meets_every_bar():
    bars = check_bars(results(
        surgecast=row(1_000, 100.0), themis=row(2_000, 200.0), hpa_70=row(20_000, 110.0, 0.02),
        hpa_50=row(5_000, 150.0), surgecast_no_forecast=row(3_000, 90.0),
    ))
    assert all(b.met for b in bars), [b.line() for b in bars]


def test_each_bar_can_fail():
    bars = check_bars(results(
        surgecast=row(6_000, 120.0), themis=row(2_000, 200.0), hpa_70=row(20_000, 110.0, 0.02),
        hpa_50=row(5_000, 150.0), surgecast_no_forecast=row(3_000, 90.0),
    ))
    failed = [b for b in bars if b.met is False]
    assert len(failed) == 4, [b.line() for b in bars]
    assert "more than hpa-50" in failed[0].detail
    assert "1.50x" in failed[2].detail


def test_an_hpa_under_a_tenth_of_a_percent_needs_no_ratio_and_missing_rows_are_not_checked():
    bars = check_bars({"policies": {"surgecast": row(500, 100.0), "hpa": row(600, 120.0, 0.0001)}})
    states = [b.met for b in bars]
    assert states == [None, True, None, None]
    assert check_bars({"policies": {}})[0].met is None


def test_the_best_costlier_hpa_is_the_fewest_violations_among_those_that_cost_as_much():
    runs = results(
        surgecast=row(1_000, 100.0), hpa=row(20_000, 110.0), hpa_70=row(20_000, 110.0),
        hpa_50=row(5_000, 150.0), hpa_60=row(9_000, 130.0), hpa_90=row(900, 90.0),
    )
    assert best_costlier_hpa(runs)[0] == "hpa-50"
    runs["policies"]["hpa-60"]["violations"] = 4_000
    assert best_costlier_hpa(runs)[0] == "hpa-60"
    for name in ("hpa", "hpa-50", "hpa-60", "hpa-70"):
        runs["policies"][name]["core_hours"] = 99.0
    assert best_costlier_hpa(runs) is None
    assert best_costlier_hpa({"policies": {}}) is None
