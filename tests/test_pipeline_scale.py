"""Scale: ``surgecast run --once`` over 50 services backfilled into the test Prometheus, shadow
mode against the fake Kubernetes API. Prints the wall time per service of a first cycle (every
model fitted and stored) and of the next one (models loaded from the store).

The model is ``seasonal_naive`` unless ``SURGECAST_SCALE_MODEL`` names another (e.g.
``lgbm_lags`` or ``hybrid`` for the production figure; those fit for seconds to minutes).
"""

from __future__ import annotations

import os
import time

import pandas as pd
import promtest
import pytest
from kubeapi.harness import FakeHarness
from typer.testing import CliRunner

from surgecast.cli import app
from surgecast.live.artifacts import ArtifactStore
from surgecast.live.pipeline import run_once
from surgecast.settings import load_settings

pytestmark = pytest.mark.skipif(
    not promtest.have_binaries("prometheus", "promtool"),
    reason="needs the Debian package prometheus (scripts/test installs it)",
)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory, twitter_1min):
    return promtest.fleet(tmp_path_factory.getbasetemp() / "prometheus", twitter_1min)


def _kubeconfig(tmp_path, kube: FakeHarness):
    """A kubeconfig for the fake API with the actuator's ServiceAccount token."""
    return kube.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.mark.slow
def test_run_once_for_50_services(tmp_path, fleet):
    model = os.environ.get("SURGECAST_SCALE_MODEL", "seasonal_naive")
    names = [promtest.service_name(i) for i in range(promtest.FLEET_SIZE)]
    kube = FakeHarness()
    try:
        for name in names:
            kube.add_deployment(name, replicas=2, cores=2)
        config = promtest.write_config(
            tmp_path / "services.yaml",
            services=[{"name": n, "query": fleet.query(n), "deployment": n} for n in names],
            defaults={
                "namespace": "inference", "profile": "resnet18", "slo_ms": 750,
                "bounds": {"min_replicas": 1, "max_replicas": 30, "min_cores": 1,
                           "max_cores": 8},
                "data": {"max_gap_steps": 40},
                "forecast": {"model": model, "history_days": 2.5, "fit_days": 3.1},
            },
            prometheus={"url": fleet.prometheus.url},
            artifacts={"root": str(tmp_path / "store")},
            kubernetes={"kubeconfig": str(_kubeconfig(tmp_path, kube))},
        )
        # first cycle through the command line: every model is fitted and stored
        started = time.perf_counter()
        result = CliRunner().invoke(
            app, ["run", "--config", str(config), "--once", "--now", fleet.now.isoformat()]
        )
        cold = time.perf_counter() - started
        assert result.exit_code == 0, result.output[-3000:]
        lines = result.output.strip().splitlines()
        assert [line.split(":")[0] for line in lines] == names
        # next cycle: models come from the store; where the time goes, per stage
        started = time.perf_counter()
        runs = run_once(load_settings(config), fleet.now + pd.Timedelta(minutes=2))
        warm = time.perf_counter() - started
        assert all(r.ok for r in runs), [r.line for r in runs if not r.ok]
        stages = {k: sum(r.stage_seconds[k] for r in runs) / len(runs)
                  for k in ("ingest", "forecast", "plan", "actuate")}
    finally:
        kube.close()
    store = ArtifactStore(str(tmp_path / "store"))
    assert store.services("decisions") == names
    assert all(len(store.entries("models", n)) == 1 for n in names)  # fitted once, reused
    n = len(names)
    print(
        f"\nsurgecast run --once, {n} services, model {model}: first cycle (fit + store) "
        f"{cold:.1f} s = {cold / n:.3f} s/service; next cycle (stored models) "
        f"{warm:.1f} s = {warm / n:.3f} s/service; per stage (s/service): "
        + ", ".join(f"{k} {v:.3f}" for k, v in stages.items())
    )
