"""Benchmark: the bridge's signal-to-patch latency, end to end on loopback, in real time.

A tiny exporter serves a counter ``http_requests_total{service="bench"}`` whose rate is the load
the benchmark sets; a real Prometheus scrapes it every ``--scrape`` seconds; the bridge
controller (``surgecast bridge``'s loop, :func:`surgecast.live.bridge.run_bridge`) reads the
service's ``rate(...[<window>])`` every ``interval`` seconds and resizes the ready pods through
the fake Kubernetes API server (tests/kubeapi, real HTTP). Each trial steps the load from 20 to
400 rps at a random phase of the tick and measures, on the wall clock:

* signal-to-patch: from the timestamp of the first sample that carries the step (the scrape that
  first served the higher counter) to the answer of the first ``pods/resize`` PATCH;
* step-to-patch: from the step itself (the first sample adds up to one scrape interval).

Between trials the load drops back, the rate window drains, and the pods are reset to 1 core.
Medians and p95 over ``--trials`` trials, for each interval.

    uv run python bench/bridge_latency.py
    uv run python bench/bridge_latency.py --intervals 5 1 --trials 20 --window 10 --scrape 1
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bench/planner.py would shadow the planner package: drop this folder from the import path, and
# add tests/ for the fake API server and the Prometheus helpers.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO / "tests"))

import argparse
import random
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import promtest
from kubeapi.cluster import Node
from kubeapi.harness import RBAC, FakeHarness

from actuator import pods as P
from actuator.kube import KubeApi
from actuator.spec import BridgeSpec
from planner.plan import Plan, PlanStep
from surgecast.live.artifacts import ArtifactStore
from surgecast.live.bridge import BridgeOptions, run_bridge

SERVICE, DEP, NS = "resnet18-classifier", "resnet18", "inference"
LOW_RPS, HIGH_RPS = 20.0, 400.0


class Exporter:
    """A counter whose rate is ``level`` rps; remembers when each scrape was served."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.level, self.total, self.last = LOW_RPS, 0.0, time.time()
        self.scrapes: list[tuple[float, float]] = []  # (served at, level then)
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return None

            def do_GET(self) -> None:
                with exporter.lock:
                    now = time.time()
                    exporter.total += exporter.level * (now - exporter.last)
                    exporter.last = now
                    exporter.scrapes.append((now, exporter.level))
                    body = (
                        "# TYPE http_requests_total counter\n"
                        f'http_requests_total{{service="bench"}} {exporter.total:.3f}\n'
                    ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def set(self, rps: float) -> float:
        with self.lock:
            now = time.time()
            self.total += self.level * (now - self.last)
            self.last, self.level = now, rps
            return now

    def first_scrape_after(self, t: float) -> float | None:
        with self.lock:
            return next((s for s, level in self.scrapes if s > t and level == HIGH_RPS), None)


class ScrapingPrometheus(promtest.Prometheus):
    """Prometheus scraping the exporter every ``scrape_s`` seconds."""

    def __init__(self, workdir: Path, target: str, scrape_s: float) -> None:
        super().__init__(workdir, workdir / "tsdb")
        self.target, self.scrape_s = target, scrape_s

    def args(self) -> list[str]:
        args = super().args()
        self.config.write_text(
            f"global:\n  scrape_interval: {self.scrape_s:g}s\n  scrape_timeout: "
            f"{self.scrape_s:g}s\nscrape_configs:\n  - job_name: bench\n    static_configs:\n"
            f"      - targets: ['{self.target}']\n"
        )
        return args


class TimedApi:
    """The bridge's API, with the wall time at which each resize PATCH was answered."""

    def __init__(self, api: KubeApi) -> None:
        self._api, self.patches = api, []

    def __getattr__(self, name):
        return getattr(self._api, name)

    def patch_resize(self, namespace, pod, body, *, dry_run):
        out = self._api.patch_resize(namespace, pod, body, dry_run=dry_run)
        self.patches.append(time.time())
        return out


def _reset_pods(admin: KubeApi) -> None:
    for pod in admin.pods(NS, {"app": DEP}):
        patch = P.resize_patch(pod, "server", 1)
        if patch is not None:
            admin.patch_resize(NS, pod["metadata"]["name"], patch, dry_run=False)


def measure(work: Path, interval_s: float, trials: int, window_s: float, scrape_s: float,
            seed: int, verbose: bool = False) -> dict:
    rng = random.Random(seed)

    def on_tick(result) -> None:
        if verbose and result.record is not None and result.written:
            print(f"    {result.record.run_at}: {result.record.summary()[:300]}", flush=True)

    exporter = Exporter()
    prom = ScrapingPrometheus(work / f"prom-{interval_s:g}", exporter.address, scrape_s)
    h = FakeHarness(start_s=time.time(), resize_delay_s=0.0, start_delay_s=0.0,
                    rbac_files=[RBAC, REPO / "deploy" / "bridge.yaml"],
                    nodes=[Node("node-1", 64_000)])
    stop = threading.Event()
    try:
        prom.start()
        h.add_deployment(DEP, replicas=2, cores=1)
        api = TimedApi(KubeApi(h.service_account_client("surgecast-bridge"),
                               request_timeout_s=2.0))
        admin = KubeApi(h.admin)
        root = work / f"artifacts-{interval_s:g}"
        now = pd.Timestamp.now(tz="UTC")
        step = PlanStep(now, now, (2,), (1,), (1,), "bench", 10.0, 50.0, "hold")
        plan = Plan(SERVICE, now, (step,), 0.95, 750.0, ("resnet18",))
        ArtifactStore(str(root)).write_json(
            "plans", SERVICE, now, {"service": SERVICE, "error": None, "plan": plan.to_dict()}
        )
        config = promtest.write_config(
            work / f"services-{interval_s:g}.yaml",
            prometheus={"url": prom.url, "attempts": 1},
            artifacts={"root": str(root)},
            services=[{
                "name": SERVICE, "query": 'sum(rate(http_requests_total{service="bench"}[1m]))',
                "namespace": NS, "deployment": DEP, "profile": "resnet18", "slo_ms": 750,
                "mode": "active", "plan_expiry_s": 86_400,
                "bounds": {"min_replicas": 1, "max_replicas": 10, "min_cores": 1,
                           "max_cores": 16},
            }],
        )
        knobs = BridgeSpec(interval_s=interval_s, signal_window_s=window_s,
                               scale_down_after_s=3600)
        options = BridgeOptions(knobs=knobs, identity=f"bench-{interval_s:g}")
        loop = threading.Thread(
            target=run_bridge, args=(config,),
            kwargs={"stop": stop, "api": api, "options": options, "on_tick": on_tick},
            daemon=True,
        )
        # The rate window fills with the low load before the controller starts.
        query = f'sum(rate(http_requests_total{{service="bench"}}[{window_s:g}s]))'
        while not prom.query(query, pd.Timestamp.now(tz="UTC")):
            time.sleep(0.2)
        time.sleep(window_s)
        loop.start()
        signal_s, step_s = [], []
        for k in range(trials):
            # Quiet: the pods back at 1 core and no resize for a whole tick, then a random phase.
            while any(P.allocated_millicores(p, "server") != 1000
                      for p in admin.pods(NS, {"app": DEP})) or (
                    api.patches and time.time() - api.patches[-1] < interval_s + 1):
                time.sleep(0.1)
            time.sleep(rng.uniform(0, interval_s))
            stepped = exporter.set(HIGH_RPS)
            deadline = stepped + interval_s + window_s + 10
            while not any(t > stepped for t in api.patches) and time.time() < deadline:
                time.sleep(0.01)
            patched = next((t for t in api.patches if t > stepped), None)
            if patched is None:
                raise RuntimeError(f"trial {k}: no resize within {deadline - stepped:.0f} s")
            sample = exporter.first_scrape_after(stepped)
            signal_s.append(patched - sample)
            step_s.append(patched - stepped)
            print(f"  interval {interval_s:g} s, trial {k + 1:2d}: sample->patch "
                  f"{signal_s[-1]:.2f} s, step->patch {step_s[-1]:.2f} s", flush=True)
            exporter.set(LOW_RPS)
            time.sleep(window_s + 2 * scrape_s + 1.0)  # the window drains
            _reset_pods(admin)
    finally:
        stop.set()
        prom.stop()
        h.close()
        exporter.httpd.shutdown()
    return {
        "interval_s": interval_s,
        "signal_median_s": statistics.median(signal_s),
        "signal_p95_s": float(np.percentile(signal_s, 95)),
        "step_median_s": statistics.median(step_s),
        "step_p95_s": float(np.percentile(step_s, 95)),
        "trials": trials,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--intervals", type=float, nargs="+", default=[5.0, 1.0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--window", type=float, default=10.0, help="signal_window_s")
    parser.add_argument("--scrape", type=float, default=1.0, help="Prometheus scrape interval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print every record written")
    args = parser.parse_args(argv)
    if not promtest.have_binaries("prometheus"):
        print("needs the prometheus binary (Debian package prometheus)")
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="bridge-latency-") as tmp:
        for interval in args.intervals:
            rows.append(measure(Path(tmp), interval, args.trials, args.window, args.scrape,
                                args.seed, args.verbose))
    print(f"\nsignal-to-patch latency, {args.trials} trials each, scrape {args.scrape:g} s, "
          f"rate window {args.window:g} s, step {LOW_RPS:g} -> {HIGH_RPS:g} rps")
    print(f"{'interval':>9} {'sample->patch median':>21} {'p95':>7} {'step->patch median':>19} "
          f"{'p95':>7}")
    for r in rows:
        print(f"{r['interval_s']:>8g}s {r['signal_median_s']:>20.2f}s {r['signal_p95_s']:>6.2f}s "
              f"{r['step_median_s']:>18.2f}s {r['step_p95_s']:>6.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
