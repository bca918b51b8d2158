"""``surgecast bridge``: the in-place bridge controller against the live cluster.

The controller itself (Lease, precedence, safety, decide, resize, record) is the control room's
:class:`actuator.bridge_loop.BridgeController`, the same one the backtest runs on the simulated
cluster. This module gives it what only production has: the fast load signal, one Prometheus
instant query of the service's RPS expression over ``bridge.signal_window_s``
(:class:`PrometheusSignal`), the plans the pipeline wrote to the artifact store
(:class:`StorePlans`), and the process: :func:`run_bridge` ticks every service at its
``bridge.interval_s`` until SIGTERM or SIGINT, then releases its Leases.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from actuator.bridge import bridge_settings
from actuator.bridge_loop import (
    BRIDGE_JOB,
    BridgeController,
    BridgeOptions,
    TickResult,
    bridge_lease_name,
)
from forecasting.errors import BadInputError
from planner.plan import Plan, iso
from planner.profiles import Pipeline
from surgecast.live.artifacts import ArtifactError, ArtifactStore
from surgecast.live.prometheus import PrometheusSource, SourceError
from surgecast.planning import load_profile
from surgecast.settings import Settings

__all__ = [
    "BRIDGE_JOB",
    "BridgeController",
    "BridgeOptions",
    "PrometheusSignal",
    "StorePlans",
    "TickResult",
    "bridge_lease_name",
    "controller_for",
    "fast_query",
    "run_bridge",
]

_RANGE = re.compile(
    r"(?P<text>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`)"
    r"|\[\s*(?:\d+(?:ms|s|m|h|d|w|y))+\s*\]"
)
"""A PromQL range selector ``[1m]``, ``[1h30m]`` outside string literals (which are matched as
``text`` and kept); not a subquery ``[5m:1m]`` (it has a colon)."""


def fast_query(query: str, window_s: float) -> str:
    """The service's RPS query over the bridge's short window.

    The rule: every range selector ``[<duration>]`` becomes ``[<window_s>s]``; subqueries
    (``[<range>:<step>]``) and a query without a range selector are used as they are. For
    ``sum(rate(http_requests_total{service="x"}[1m]))`` and 30 s this gives
    ``sum(rate(http_requests_total{service="x"}[30s]))``: the rate over the last 30 s, which
    needs at least two scrapes in the window (a 15 s scrape interval or shorter).
    """
    window = f"[{round(window_s)}s]"
    return _RANGE.sub(lambda m: m.group("text") or window, query)


# --------------------------------------------------------------------------------------------
# the live signal and plans


@dataclass(frozen=True)
class PrometheusSignal:
    """The fast signal from Prometheus: one instant evaluation of the service's query with its
    range selectors shortened to ``bridge.signal_window_s`` (:func:`fast_query`), through
    :class:`surgecast.live.prometheus.PrometheusSource` (deadline watchdog, retries, the refusal
    of negative or infinite rates); ``data.max_rps`` refuses an implausible value."""

    source: PrometheusSource
    deadline_s: float = 4.0

    def __call__(self, svc, knobs, now: pd.Timestamp, record) -> float | None:
        query = fast_query(svc.query, knobs.signal_window_s)
        record.inputs["query"] = query
        deadline = time.monotonic() + self.deadline_s
        try:
            # One evaluation at the tick's time floored to the whole second (the reader's grid;
            # never after ``now``, so a replay reads nothing from its future). A sample scraped
            # in the last second waits for the next tick.
            values = self.source.read(
                query, end=now, span=pd.Timedelta(0), step_s=1.0, deadline=deadline
            )
        except SourceError as exc:
            record.errors.append(f"signal ({exc.reason}): {exc}")
            return None
        value = float(values.iloc[-1]) if len(values) else math.nan
        if not math.isfinite(value):
            record.errors.append(f"signal (missing): no value of {query[:200]} at {iso(now)}")
            return None
        ceiling = svc.data.max_rps
        if ceiling is not None and value > ceiling:
            record.errors.append(
                f"signal (implausible): {value:g} rps is above data.max_rps {ceiling:g}"
            )
            return None
        return value


@dataclass(frozen=True)
class StorePlans:
    """The service's latest plan artifact in the store (the pipeline's plan stage writes it)."""

    store: ArtifactStore

    def __call__(self, svc, now: pd.Timestamp, record) -> tuple[Plan | None, str]:
        try:
            entry = self.store.latest("plans", svc.name, at_or_before=now)
        except (OSError, ValueError, ArtifactError) as exc:
            return None, f"plans unreadable ({exc})"
        if entry is None:
            return None, "no plan"
        record.inputs["plan_uri"] = entry.uri
        try:
            doc = self.store.read_doc(entry.uri)
            if doc.get("error"):
                return None, f"the latest plan carries an error ({_text(doc['error'])})"
            return Plan.from_dict(doc["plan"]), ""
        except ArtifactError as exc:
            return None, f"plan corrupt ({exc})"
        except (BadInputError, KeyError, TypeError, ValueError) as exc:
            return None, f"plan corrupt ({str(exc)[:200]})"


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("message") or value.get("reason") or value)[:200]
    return str(value)[:200]


def service_model(settings: Settings) -> Callable[[Any], tuple[Pipeline, float]]:
    """service -> (its latency profile, loaded once; its SLO)."""
    profiles: dict[str, Pipeline] = {}

    def model(svc) -> tuple[Pipeline, float]:
        if svc.name not in profiles:
            profiles[svc.name] = load_profile(svc.profile)
        return profiles[svc.name], float(svc.slo_ms)

    return model


# --------------------------------------------------------------------------------------------
# the process


def controller_for(
    settings: Settings,
    *,
    options: BridgeOptions | None = None,
    api: Any = None,
    store: ArtifactStore | None = None,
    source: PrometheusSource | None = None,
    records_root: Path | None = None,
) -> BridgeController:
    """A controller with the API, store, records folder and Prometheus the settings name (each
    replaceable, for tests and benchmarks)."""
    from surgecast.live.pipeline import actuator_dir, kube_api, store_for

    options = options or BridgeOptions()
    return BridgeController(
        settings.service,
        api if api is not None else kube_api(settings),
        records_root=records_root if records_root is not None else actuator_dir(settings),
        signal=PrometheusSignal(
            source if source is not None else PrometheusSource(settings.prometheus)
        ),
        plans=StorePlans(store if store is not None else store_for(settings)),
        model=service_model(settings),
        options=options,
    )


def run_bridge(
    config: str | Path,
    *,
    services: Sequence[str] | None = None,
    once: bool = False,
    interval_s: float | None = None,
    stop: threading.Event | None = None,
    api: Any = None,
    options: BridgeOptions | None = None,
    on_tick: Callable[[TickResult], None] | None = None,
) -> list[TickResult]:
    """``surgecast bridge``: tick every service at its ``bridge.interval_s`` until stopped.

    Args:
        config: the service config (YAML).
        services: only these (default: every service whose ``bridge.enabled``).
        once: one tick per service, then return.
        interval_s: overrides every service's ``bridge.interval_s`` (s, in [1, 300]).
        stop: ends the loop when set; SIGTERM and SIGINT set it (main thread only).
        api, options: the Kubernetes port and options (tests); default from the config.
        on_tick: called with every tick's result (the CLI prints it).

    Returns:
        The results of the last round of ticks.

    Raises:
        BadInputError, ActuatorInputError: a bad config, service name or interval (one line).
    """
    from dataclasses import replace

    from surgecast.settings import load_settings

    if interval_s is not None and not (math.isfinite(interval_s) and 1 <= interval_s <= 300):
        raise BadInputError(f"--interval: must be in [1, 300] s, got {interval_s:g}")
    settings = load_settings(config)
    names = list(services) if services else [
        s.name for s in settings.services if bridge_settings(s).enabled
    ]
    for name in names:
        bridge_settings(settings.service(name))  # unknown names and bad knobs refused here
    if not names:
        raise BadInputError(f"{config}: no service has the bridge enabled")
    options = options or BridgeOptions()
    if interval_s is not None:
        options = replace(options, interval_s=interval_s)
    controller = controller_for(settings, options=options, api=api)
    stop = stop or threading.Event()
    restore = _on_signals(stop)
    due = dict.fromkeys(names, 0.0)
    last: dict[str, TickResult] = {}
    try:
        while not stop.is_set():
            clock = time.monotonic()
            for name in names:
                if due[name] > clock:
                    continue
                due[name] = clock + controller.knobs(name).interval_s
                result = controller.tick(name)
                last[name] = result
                if on_tick is not None:
                    on_tick(result)
            if once:
                break
            stop.wait(max(0.0, min(due.values()) - time.monotonic()))
    finally:
        controller.release()
        restore()
    return [last[n] for n in names if n in last]


def _on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM and SIGINT set ``stop`` (a clean exit releases the Leases); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
