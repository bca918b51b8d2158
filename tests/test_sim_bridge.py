"""The bridge in the backtest: production's controller on the simulated cluster, its signal the
rate a Prometheus scraping the simulated load would answer (late, never from the future)."""

from __future__ import annotations

import numpy as np
import pytest
from simtoy import DEP, NS, TOY, setup

from actuator.guards import Bounds
from actuator.records import read_records
from actuator.spec import BridgeSpec, ServiceSpec, WorkloadSpec
from surgecast.offline.bridge import ScrapedRate, SimBridge


def engine_for(counts, *, replicas=2, cores=1, controllers=()):
    return setup(counts, replicas=replicas, cores=cores, controllers=controllers)


def spec(**bridge) -> ServiceSpec:
    return ServiceSpec(
        name=DEP, namespace=NS, mode="active",
        workloads=(WorkloadSpec(deployment=DEP, bounds=Bounds(1, 8, 1, 8, 8),
                                batch_env="BATCH"),),
        bridge=BridgeSpec(**bridge),
    )


def rate_at(counts, second, *, window_s, scrape_s=15.0):
    _, _, engine = engine_for(counts)
    engine.t = second
    return ScrapedRate(engine, scrape_s).rate(window_s)


def test_the_signal_is_the_scraped_rate_and_lags_the_load():
    counts = np.concatenate([np.full(600, 10.0), np.full(600, 100.0)])
    # Samples at 570, 585, 600: all before the step.
    assert rate_at(counts, 600, window_s=30) == pytest.approx(10.0)
    # Samples at 585, 600, 615: half of the window after the step.
    assert rate_at(counts, 615, window_s=30) == pytest.approx(55.0)
    # A second between scrapes sees the last scrape only.
    assert rate_at(counts, 614, window_s=30) == pytest.approx(10.0)
    assert rate_at(counts, 660, window_s=30) == pytest.approx(100.0)


def test_the_signal_needs_two_scrapes_in_its_window():
    counts = np.full(1200, 50.0)
    assert rate_at(counts, 600, window_s=10) is None  # one scrape (600) in (590, 600]
    assert rate_at(counts, 10, window_s=30) is None  # only the scrape at 0
    assert rate_at(counts, 15, window_s=30) == pytest.approx(50.0)


@pytest.mark.parametrize("second", [600, 607, 615, 629, 1000])
def test_the_signal_never_reads_a_second_not_served_yet(second):
    rng = np.random.default_rng(second)
    counts = rng.poisson(40.0, 1200).astype(float)
    changed = counts.copy()
    changed[second:] = rng.poisson(400.0, 1200 - second)
    assert rate_at(counts, second, window_s=30) == rate_at(changed, second, window_s=30)


def test_the_bridge_resizes_the_ready_pods_soon_after_a_surge_and_records_it(tmp_path):
    # 2 one-core pods carry 40 rps; at 600 s the load steps from 20 to 70 rps.
    counts = np.concatenate([np.full(600, 20.0), np.full(600, 70.0)])
    model, port, engine = engine_for(counts)
    bridge = SimBridge(engine, port, spec(interval_s=5.0, signal_window_s=30.0), TOY, 500.0)
    engine.controllers.append(bridge)
    result = engine.run()
    pods = [p for p in model.list("pods", NS)]
    desired = sorted(int(p["spec"]["containers"][0]["resources"]["requests"]["cpu"])
                     for p in pods)
    assert desired[0] >= 2  # at least 2 cores each: 2 × 2 cores carry 70 rps with headroom
    # Replicas are the pipeline's: the bridge never adds one.
    assert len(pods) == 2
    # The capacity was there within a scrape, a tick and a resize of the step.
    ready_at = 600 + np.argmax(result.capacity_rps[600:] >= 70.0)
    assert 600 < ready_at <= 600 + 15 + 5 + 2 + 1
    records = read_records(bridge.controller.records_root, DEP)
    assert records and all(r["kind"] == "bridge" for r in records)
    assert any(c["direction"] == "up" for r in records for c in r["changes"])


def test_without_a_plan_the_bridge_gives_the_cores_back_down_to_the_template():
    # A 3-minute surge, then quiet: the pods grow, then return to their template's 1 core
    # once the smaller pods have carried the load for scale_down_after_s.
    counts = np.concatenate([np.full(300, 20.0), np.full(180, 70.0), np.full(600, 20.0)])
    model, port, engine = engine_for(counts)
    bridge = SimBridge(engine, port, spec(interval_s=5.0, scale_down_after_s=60.0), TOY,
                       500.0)
    engine.controllers.append(bridge)
    result = engine.run()
    assert result.capacity_rps[300:480].max() >= 70.0
    pods = model.list("pods", NS)
    assert [p["spec"]["containers"][0]["resources"]["requests"]["cpu"] for p in pods] == [
        "1", "1"
    ]
