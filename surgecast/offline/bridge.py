"""The in-place bridge in the backtest: production's controller on the simulated cluster.

The controller is :class:`actuator.bridge_loop.BridgeController`, the one ``surgecast bridge``
runs; only what production reads from outside the cluster is simulated here:

* **the fast signal** (:class:`ScrapedRate`): what a Prometheus instant query
  ``rate(requests_total[<signal_window_s>s])`` answers at the tick's second. The counter of
  arrivals is scraped every ``scrape_s`` seconds (on a grid from the span's start); the rate is
  the increase between the first and last samples inside the window over their distance, and
  there is no value with fewer than two samples. So the bridge sees the load late by up to a
  scrape interval plus half the window, as it does live; it never sees a second that has not
  been served yet.
* **the plan** (:class:`CyclePlans`): the latest plan the simulated pipeline cycle made (the
  artifact store's latest plan in production); none without a pipeline cycle (the
  ``surgecast-no-forecast`` ablation), when the bridge may grow pods but never shrinks them.

Everything else (Lease, the pipeline's precedence, shadow and kill switch, the decision, the
resize write path with its retries, Infeasible reverts, the decision records) is production's
code, through the simulated cluster's port; the bridge's records go to the pipeline cycle's
folder, as live they share the actuator's.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from actuator.bridge import bridge_settings
from actuator.bridge_loop import BridgeController, BridgeOptions
from actuator.kube import RetryPolicy
from actuator.records import DecisionRecord
from actuator.spec import ServiceSpec
from planner.plan import Plan
from planner.profiles import Pipeline
from surgecast.offline.controllers import PipelineCycle
from surgecast.offline.engine import Engine
from surgecast.offline.port import SimPort

SCRAPE_S = 15.0
"""Default scrape interval of the simulated Prometheus (s): the common ``scrape_interval``."""


class ScrapedRate:
    """The fast signal as Prometheus would answer it, from the simulated arrivals.

    Args:
        engine: the simulation (its arrivals and how many seconds were served).
        scrape_s: the scrape interval (s).
    """

    def __init__(self, engine: Engine, scrape_s: float = SCRAPE_S) -> None:
        if not (math.isfinite(scrape_s) and scrape_s >= 1):
            raise ValueError(f"scrape_s: must be >= 1 s, got {scrape_s}")
        self.engine = engine
        self.scrape_s = float(scrape_s)
        self._counter = np.concatenate([[0.0], np.cumsum(engine.arrivals)])

    def rate(self, window_s: float) -> float | None:
        """``rate(counter[window_s])`` now, or None with fewer than two samples in the window."""
        served = self.engine.t  # seconds whose arrivals are known (nothing later)
        last = math.floor(served / self.scrape_s) * self.scrape_s
        first = math.ceil(max(0.0, served - window_s) / self.scrape_s) * self.scrape_s
        if last - first < self.scrape_s - 1e-9:
            return None
        increase = self._counter[int(last)] - self._counter[int(first)]
        return float(increase / (last - first))

    def __call__(self, svc, knobs, now: pd.Timestamp, record: DecisionRecord) -> float | None:
        record.inputs["query"] = (
            f"rate(requests_total[{round(knobs.signal_window_s)}s]), scraped every "
            f"{self.scrape_s:g} s (simulated)"
        )
        value = self.rate(knobs.signal_window_s)
        if value is None:
            record.errors.append(
                f"signal (missing): fewer than two scrapes in the last {knobs.signal_window_s:g} s"
            )
        return value


@dataclass
class CyclePlans:
    """The latest plan of the simulated pipeline cycle (None without one)."""

    cycle: PipelineCycle | None

    def __call__(self, svc, now: pd.Timestamp, record) -> tuple[Plan | None, str]:
        if self.cycle is None:
            return None, "no pipeline runs (forecast off)"
        if self.cycle.last_plan is None:
            return None, "no plan yet"
        return self.cycle.last_plan, ""


class SimBridge:
    """The bridge as a controller of the backtest's engine, ticking every ``bridge.interval_s``.

    Args:
        engine: the simulation.
        port: the simulated cluster's port.
        spec: the service (its ``bridge`` table, bounds, mode, timings).
        pipeline: the stages' latency profiles.
        slo_ms: the SLO.
        scrape_s: the simulated Prometheus's scrape interval.
    """

    name = "bridge"

    def __init__(
        self,
        engine: Engine,
        port: SimPort,
        spec: ServiceSpec,
        pipeline: Pipeline,
        slo_ms: float,
        *,
        scrape_s: float = SCRAPE_S,
    ) -> None:
        self.engine = engine
        self.spec = spec
        knobs = bridge_settings(spec)
        self.period_s = float(knobs.interval_s)
        self.offset_s = float(knobs.interval_s)
        cycle = next((c for c in engine.controllers if isinstance(c, PipelineCycle)), None)
        if cycle is not None:
            records = Path(cycle.artifacts)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="surgecast-backtest-bridge-")
            records = Path(self._tmp.name)
        self.controller = BridgeController(
            lambda name: spec,
            port,
            records_root=records,
            signal=ScrapedRate(engine, scrape_s),
            plans=CyclePlans(cycle),
            model=lambda svc: (pipeline, float(slo_ms)),
            options=BridgeOptions(
                wall_clock=lambda: engine.now_s,
                sleep=engine.sleep,
                retry=RetryPolicy(attempts=2, backoff_s=0.2, request_timeout_s=5.0),
                identity="surgecast-backtest-bridge",
            ),
        )
        self.ticks = 0
        self.resizes = 0

    def tick(self, now: pd.Timestamp) -> None:
        result = self.controller.tick(self.spec.name, now)
        self.ticks += 1
        if result.record is not None:
            self.resizes += sum(
                1 for c in result.record.changes if c.outcome in ("applied", "unchanged")
            )


def bridge_factory(pipeline: Pipeline, slo_ms: float, *, scrape_s: float = SCRAPE_S):
    """The backtest's ``bridge`` hook: the production bridge on each run's engine and port."""

    def build(engine: Engine, port: SimPort, spec: ServiceSpec) -> SimBridge:
        return SimBridge(engine, port, spec, pipeline, slo_ms, scrape_s=scrape_s)

    return build
