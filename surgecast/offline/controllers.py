"""Controllers the backtest runs on the simulation clock, acting only through the cluster port.

* :class:`PipelineCycle`: surgecast's scheduled run, as production runs it every
  ``run_interval_s``: a leak-free forecast from the per-minute history observed up to now, the
  one planning function (:func:`surgecast.planning.plan_cycle`), then the real
  :func:`actuator.apply.actuate` on :class:`~surgecast.offline.port.SimPort`, its decision
  records written to an artifact folder as production writes them. Its waits (resize polls,
  retry backoffs) are simulation time: the load keeps arriving while it waits.

The HPA is the model's own controller on a real HPA object (:mod:`surgecast.offline.cluster`);
what surgecast credits to an "HPA above the plan" is that object, whose ``minReplicas`` the
actuator moves.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from actuator import pods as P
from actuator.apply import RunOptions, actuate
from actuator.config import ServiceConfig
from actuator.kube import RetryPolicy
from actuator.records import DecisionRecord
from planner.errors import PlannerInputError
from planner.policy import ClusterState, PolicySettings
from planner.profiles import Pipeline
from surgecast.offline.engine import Engine
from surgecast.offline.port import SimPort
from surgecast.planning import plan_cycle, reactive_floors

Forecaster = Callable[[pd.Timestamp], Mapping[float, np.ndarray]]
"""The forecast at a time: per quantile, the load of the steps after the last complete minute
(nothing later than that time was read)."""


@dataclass
class PipelineCycle:
    """surgecast's scheduled pipeline run: forecast -> plan -> actuate, every ``period_s``.

    Args:
        name: for reports.
        engine: the simulation (its clock, its sleep, the observed arrivals).
        port: the cluster port the actuator writes through.
        config: the service as the actuator reads it (``Settings.actuator_config``).
        pipeline: the stages' profiles.
        policy: the planner's settings for the service (``ServiceSettings.policy``).
        forecaster: quantile loads at a time (leak-free, or the true future for the oracle).
        batch: per stage, the batch size the state is read with when the Deployment sets none.
        step_s: the forecast step (s).
        offset_s: seconds after the start of the first run (a complete minute observed).
        artifacts: where decision records go (default: a temporary folder).
        surge_quantile: see :func:`~surgecast.planning.plan_cycle`.

    Attributes:
        records: every run's decision record, in order.
        errors: planner errors (the run then applies nothing, as in production).
    """

    name: str
    engine: Engine
    port: SimPort
    config: ServiceConfig
    pipeline: Pipeline
    policy: PolicySettings
    forecaster: Forecaster
    batch: tuple[int, ...]
    step_s: float = 60.0
    offset_s: float = 60.0
    artifacts: Path | None = None
    surge_quantile: float | None = 0.99
    records: list[DecisionRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.artifacts is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="surgecast-backtest-")
            self.artifacts = Path(self._tmp.name)
        self.options = RunOptions(
            retry=RetryPolicy(attempts=4, backoff_s=0.5, request_timeout_s=10.0),
            poll_s=2.0,
            sleep=self.engine.sleep,
            wall_clock=lambda: self.engine.now_s,
            identity=f"surgecast-backtest-{self.name}",
        )

    @property
    def period_s(self) -> float:
        return float(self.config.run_interval_s)

    def tick(self, now: pd.Timestamp) -> None:
        observed = self.engine.observed_rps(60)
        window_peak = self.engine.window_peak_rps(self.config.stabilisation_s)
        quantiles = self.forecaster(now)
        cutoff = now - pd.Timedelta(seconds=self.step_s)
        last_up = _last_scale_up(self.records)
        try:
            plan = plan_cycle(
                self.config.service,
                self.pipeline,
                self.observe(),
                observed,
                dict(quantiles),
                self.step_s,
                cutoff,
                self.policy,
                run_interval_s=self.period_s,
                surge_quantile=self.surge_quantile,
                last_scale_up_at=last_up,
            )
        except PlannerInputError as exc:
            self.errors.append(f"{now.isoformat()}: {exc}")
            return
        floors = reactive_floors(self.pipeline, self.policy, observed, window_peak)
        record = actuate(
            plan,
            [self.config],
            self.port,
            now=now,
            artifacts=self.artifacts,
            floors=floors,
            options=self.options,
        )
        self.records.append(record)

    def observe(self) -> ClusterState:
        """What runs now, read through the port as the live plan stage reads it: the
        Deployment's replicas, the typical cores of its pods, the batch of its template."""
        replicas, cores, batch = [], [], []
        ns = self.config.namespace
        for i, wl in enumerate(self.config.workloads):
            dep = self.port.deployment(ns, wl.deployment)
            labels = dep["spec"]["selector"]["matchLabels"]
            pods = P.live(P.owned_by(self.port.pods(ns, labels), wl.deployment))
            template_m = P.template_millicores(dep, wl.container) or 1000
            replicas.append(int(dep["spec"].get("replicas", 1)))
            cores.append(max(1, P.typical_cores(pods, wl.container, template_m)))
            value = P.template_env(dep, wl.container, wl.batch_env) if wl.batch_env else None
            batch.append(int(value) if value and value.isdigit() else self.batch[i])
        return ClusterState(tuple(replicas), tuple(cores), tuple(batch))


def _last_scale_up(records: list[DecisionRecord]) -> pd.Timestamp | None:
    for record in reversed(records):
        if record.scaled_up:
            return pd.Timestamp(record.run_at)
    return None


def ceil_replicas(rps: float, per_replica_rps: float) -> int:
    """Replicas of ``per_replica_rps`` each that carry ``rps`` (at least 1)."""
    if per_replica_rps <= 0:
        return 1
    return max(1, math.ceil(rps / per_replica_rps))
