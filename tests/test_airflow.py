"""The DAG folder under a real Airflow (SQLite metadata database in a temporary AIRFLOW_HOME):
every DAG file imports without errors and parses in under a second, and ``dag.test()`` runs
``surgecast_scale`` end to end against Prometheus and the fake Kubernetes API.

Airflow reads its configuration when first imported, so it runs in a subprocess with its own
environment; the test process hosts the fake Kubernetes API that the subprocess's actuator
talks to over HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import promtest
import pytest
from kubeapi.harness import FakeHarness

from surgecast.live.artifacts import ArtifactStore

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "airflow_dags"
DAG_IDS = {"surgecast_scale", "surgecast_retrain", "surgecast_accuracy"}

pytestmark = pytest.mark.skipif(
    not promtest.have_binaries("prometheus", "promtool"),
    reason="needs the Debian package prometheus (scripts/test installs it)",
)

DRIVER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    import pandas as pd

    args = json.loads(sys.argv[1])
    out = {}
    if args["parse"]:
        from airflow.dag_processing.dagbag import DagBag

        started = time.perf_counter()
        bag = DagBag(dag_folder=args["dags"])
        out["cold_s"] = time.perf_counter() - started
        out["import_errors"] = {k: str(v) for k, v in bag.import_errors.items()}
        out["dag_ids"] = sorted(bag.dag_ids)
        out["parse_s"] = {}
        for file in sorted(Path(args["dags"]).glob("*.py")):
            best = min(
                _stat.duration.total_seconds()
                if hasattr(_stat.duration, "total_seconds") else float(_stat.duration)
                for _stat in [
                    DagBag(dag_folder=str(file)).dagbag_stats[0]
                    for _ in range(3)
                ]
            )
            out["parse_s"][file.name] = best
        scale = bag.get_dag("surgecast_scale")
        out["max_active_runs"] = scale.max_active_runs
        out["schedule"] = str(scale.schedule)
        out["mapped_group"] = [t.task_id for t in scale.tasks]
    if args["test"]:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=args["dags"])
        dag = bag.get_dag("surgecast_scale")
        # The run's time is the wall clock's minute: an active service acts only when its now is
        # close to the wall clock (the actuator checks it against time.time()).
        when = pd.Timestamp.now(tz="UTC").round("1min")
        out["now"] = when.isoformat()
        when = when.to_pydatetime()
        started = time.perf_counter()
        run = dag.test(logical_date=when, variable_file_path=args["variables"])
        out["test_s"] = time.perf_counter() - started
        out["state"] = str(run.state)
        out["tis"] = sorted(
            (ti.task_id, ti.map_index, str(ti.state)) for ti in run.get_task_instances()
        )
    print("RESULT " + json.dumps(out, default=str))
    """
)


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_home")
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        PYTHONPATH=str(REPO),
    )
    env.pop("SURGECAST_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return env


def _drive(env: dict, **args) -> dict:
    args = {"dags": str(DAGS), "parse": False, "test": False, **args}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(args)],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (done.stdout[-3000:], done.stderr[-5000:])
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_dag_folder_imports_without_errors_and_each_file_parses_fast(airflow_env):
    result = _drive(airflow_env, parse=True)
    assert result["import_errors"] == {}
    assert set(result["dag_ids"]) == DAG_IDS
    print(f"\nDAG parse times (s, best of 3): {result['parse_s']}; cold DagBag of the folder "
          f"(first Airflow import included): {result['cold_s']:.2f} s")
    assert set(result["parse_s"]) == {f"{d}.py" for d in DAG_IDS}
    assert all(s < 1.0 for s in result["parse_s"].values()), result["parse_s"]
    assert result["max_active_runs"] == 1
    assert "*/5 * * * *" in result["schedule"]
    assert {"cycle.ingest", "cycle.forecast", "cycle.plan", "cycle.actuate"} <= set(
        result["mapped_group"]
    )


@pytest.fixture
def recent(tmp_path, twitter_1min):
    """A Prometheus whose two traces end a minute before the wall clock (the session's fleet
    ends hours ago, too far from the clock for an active run to act)."""
    end = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=1)).floor("1min")
    n = int(3.2 * 1440)
    traces, first = {}, 0
    for name in ("svc-30", "svc-31"):
        while twitter_1min.iloc[first + n - 10 : first + n].isna().any():
            first += 30
        traces[name] = promtest.shift(twitter_1min.iloc[first : first + n], end)
        first += 600
    root = tmp_path / "prometheus"
    root.mkdir()
    promtest.backfill(promtest.write_openmetrics(root / "recent.om", traces), root / "tsdb")
    server = promtest.Prometheus(root, root / "tsdb").start()
    yield server
    server.stop()


def _kubeconfig(tmp_path: Path, kube: FakeHarness) -> Path:
    """A kubeconfig for the fake API with the actuator's ServiceAccount token."""
    return kube.write_kubeconfig(tmp_path / "kubeconfig")


def test_scale_dag_runs_end_to_end(airflow_env, recent, tmp_path):
    kube = FakeHarness(start_delay_s=0.0, resize_delay_s=0.0)
    try:
        kube.add_deployment("svc-30", replicas=1, cores=1)
        kube.add_deployment("svc-31", replicas=1, cores=1)
        shadow_before = kube.state("svc-31")
        config = promtest.write_config(
            tmp_path / "services.yaml",
            services=[
                {"name": n, "query": promtest.Fleet.query(n), "deployment": n, "mode": m}
                for n, m in (("svc-30", "active"), ("svc-31", "shadow"))
            ],
            defaults={
                "namespace": "inference", "profile": "resnet18", "slo_ms": 750,
                "resize_timeout_s": 0,
                "bounds": {"min_replicas": 1, "max_replicas": 30, "min_cores": 1, "max_cores": 8},
                # the run starts up to a few minutes after the data's last minute
                "data": {"max_gap_steps": 40, "max_staleness_s": 900},
                "forecast": {"model": "seasonal_naive", "history_days": 2.5, "fit_days": 3.1},
            },
            prometheus={"url": recent.url, "attempts": 2, "backoff_s": 0.1},
            artifacts={"root": str(tmp_path / "store")},
            kubernetes={"kubeconfig": str(_kubeconfig(tmp_path, kube))},
        )
        variables = tmp_path / "variables.json"
        variables.write_text(json.dumps({"surgecast_config": str(config)}))
        result = _drive(airflow_env, test=True, variables=str(variables))
    finally:
        kube.close()
    print(f"\ndag.test() of surgecast_scale with 2 services: {result['test_s']:.1f} s")
    assert result["state"].endswith("success"), result
    states = {(t, i): s for t, i, s in result["tis"]}
    for task in ("cycle.ingest", "cycle.forecast", "cycle.plan", "cycle.actuate"):
        assert states[(task, 0)].endswith("success") and states[(task, 1)].endswith("success")
    now = pd.Timestamp(result["now"])
    store = ArtifactStore(str(tmp_path / "store"))
    active, shadow = (
        ArtifactStore.read_json(store.latest("decisions", name, at_or_before=now).uri)
        for name in ("svc-30", "svc-31")
    )
    assert active["run_at"] == now.strftime("%Y-%m-%dT%H:%M:%SZ")  # data interval end
    assert active["ok"] and active["outcome"] == "applied", active["summary"]
    target = active["actuator"]["workloads"][0]["target"]
    after = kube.state("svc-30")
    assert after["replicas"] == target["replicas"] > 1
    assert max(after["ready_millicores"]) == target["cores"] * 1000
    assert shadow["ok"] and shadow["mode"] == "shadow" and shadow["applied"]
    assert kube.state("svc-31") == shadow_before
