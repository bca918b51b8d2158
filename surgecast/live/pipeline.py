"""The live pipeline: ingest -> forecast -> plan -> actuate, one service at a time.

Each stage function takes the settings, a service name, the URI of the previous stage's
artifact and the run's time ``now`` (from the scheduler: never the wall clock), writes its own
artifact to the store and returns its URI. The command line (``surgecast run --once``) and the
Airflow DAGs call the same functions, so XCom carries only URIs.

A problem with the data (Prometheus unreachable or answering errors, stale, missing or gappy
history, a model that cannot forecast) does not raise: the stage writes an artifact that carries
the error, every later stage passes it on without acting, and ``actuate`` writes a decision
record that says why nothing was changed and pushes a metric with the reason. Nothing is ever
applied from a bad forecast. A missing, truncated or corrupt artifact read by a later stage is
such a problem too (reason ``corrupt``), and so is a cycle that outran its time budget
(``Settings.run_timeout_s``, reason ``deadline``): a run that is late does not act.

Programming errors still raise from the stage functions (an Airflow task fails and is retried),
after ``actuate`` has written its decision record with outcome ``error``. ``run_service`` and
``run_once`` isolate services: an unexpected exception in one service's cycle becomes that
service's decision record (outcome ``error``) and metric, and the other services still run.

Fitted models come from the store (the retraining DAG refits them); when a service has none, the
first forecast fits one and stores it; a model that cannot be fitted is replaced by the seasonal
naive forecast, and the forecast and the record say so.
"""

from __future__ import annotations

import gzip
import inspect
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from actuator.metrics import Sample, push
from forecasting.cleaning import format_time
from forecasting.errors import BadInputError
from planner.plan import Plan, iso, utc_timestamp
from surgecast.live import model_store
from surgecast.live.artifacts import ArtifactError, ArtifactStore, Entry
from surgecast.live.prometheus import PrometheusSource, SourceError, check_history
from surgecast.settings import ServiceSettings, Settings

PIPELINE_JOB = "surgecast_pipeline"
"""Pushgateway job of the pipeline's run metrics (the actuator pushes ``surgecast_actuator``)."""

MODEL_FORMAT = model_store.MODEL_FORMAT
"""Version of the stored model layout (data only, see ``surgecast.live.model_store``); a model of
another version, such as a pickle of version 1, is never loaded: it is refitted."""

DEFAULT_RUN_TIMEOUT_S = 120.0
"""A service cycle's time budget (s) when the settings do not name one (``run_timeout_s``)."""

REFIT_SLACK_H = 1.0
"""A refit run refits every model that falls due within this many hours, so a daily run on a
24 h cadence refits every day even when the model was first fitted a little after midnight."""


# --------------------------------------------------------------------------------------------
# shared helpers


def store_for(settings: Settings) -> ArtifactStore:
    """The artifact store the settings name."""
    return ArtifactStore(settings.artifacts.root)


def as_now(now: Any) -> pd.Timestamp:
    """A run time (timestamp, datetime or ISO text with a zone) as a UTC ``pd.Timestamp``.

    Raises:
        BadInputError: unparseable or without a time zone.
    """
    return utc_timestamp(now, "now")


def _error(stage: str, reason: str, message: str) -> dict:
    return {"stage": stage, "reason": reason, "message": message}


def _floats(values: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in values]


log = logging.getLogger(__name__)


def _read(uri: str) -> dict:
    """The JSON object at ``uri`` (``.gz``: compressed).

    Raises:
        ArtifactError: missing, truncated, corrupt or not a JSON object.
    """
    if not isinstance(uri, str) or not uri:
        raise ArtifactError(f"artifact URI {uri!r}: not a URI")
    return ArtifactStore.read_doc(uri)


@dataclass(frozen=True)
class Budget:
    """The time one service's cycle may take (``Settings.run_timeout_s``).

    Attributes:
        budget_s: the whole budget (s).
        deadline: when it ends, in ``clock`` seconds.
        clock: monotonic seconds; ``time.monotonic`` except under a test clock.
    """

    budget_s: float
    deadline: float
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def start(cls, budget_s: float, clock: Callable[[], float] = time.monotonic) -> Budget:
        """A budget of ``budget_s`` seconds starting now on ``clock``."""
        return cls(float(budget_s), clock() + float(budget_s), clock)

    @classmethod
    def for_settings(cls, settings: Settings, clock: Callable[[], float] = time.monotonic):
        """A budget of ``settings.run_timeout_s`` starting now."""
        return cls.start(getattr(settings, "run_timeout_s", DEFAULT_RUN_TIMEOUT_S), clock)

    def remaining_s(self) -> float:
        return self.deadline - self.clock()

    def passed(self) -> bool:
        return self.remaining_s() < 0

    def monotonic_deadline(self) -> float:
        """The deadline as an absolute ``time.monotonic()`` value (what sources take)."""
        return time.monotonic() + max(0.0, self.remaining_s())

    def error(self, stage: str) -> dict:
        late = -self.remaining_s()
        return _error(
            stage,
            "deadline",
            f"cycle over its budget of {self.budget_s:g} s ({late:.1f} s late): {stage} not run,"
            " nothing applied",
        )


def _over_budget(budget: Budget | None, stage: str) -> dict | None:
    return budget.error(stage) if budget is not None and budget.passed() else None


def _corrupt(stage: str, exc: Exception) -> dict:
    return _error(stage, "corrupt", str(exc))


def _write_gz(store: ArtifactStore, kind: str, service: str, now, doc: dict) -> str:
    import json

    data = gzip.compress(json.dumps(doc, allow_nan=False).encode("utf-8"), mtime=0)
    return store.write_bytes(kind, service, now, data, "json.gz")


def _source(settings: Settings, source: PrometheusSource | None):
    """The injected source (left open), or a fresh one closed after use."""
    if source is not None:
        return _Borrowed(source)
    return PrometheusSource(settings.prometheus)


class _Borrowed:
    def __init__(self, source: PrometheusSource) -> None:
        self.source = source

    def __enter__(self) -> PrometheusSource:
        return self.source

    def __exit__(self, *exc) -> None:
        return None


def _history_series(doc: dict) -> pd.Series:
    """The RPS history stored by ``ingest``.

    Raises:
        KeyError, TypeError, ValueError: the document is not a history (corrupt or hostile).
    """
    start = pd.Timestamp(doc["start"])
    if start.tzinfo is None:
        raise ValueError(f"start {doc['start']!r} has no time zone")
    values = np.array([np.nan if v is None else v for v in doc["values"]], dtype=np.float64)
    step = pd.Timedelta(seconds=float(doc["step_s"]))
    finite = values[np.isfinite(values)]
    if not finite.size or step <= pd.Timedelta(0) or bool(np.any(finite < 0)):
        raise ValueError("no finite value, a step <= 0 or negative rps")
    index = pd.date_range(start, periods=len(values), freq=step)
    return pd.Series(values, index=index, name="rps")


def _read_source(src, query: str, *, end, span, step_s: float, deadline: float) -> pd.Series:
    """``src.read`` with the deadline (absolute ``time.monotonic()``) when the source takes one."""
    try:
        takes_deadline = "deadline" in inspect.signature(src.read).parameters
    except (TypeError, ValueError):
        takes_deadline = False
    if takes_deadline:
        return src.read(query, end=end, span=span, step_s=step_s, deadline=deadline)
    return src.read(query, end=end, span=span, step_s=step_s)


# --------------------------------------------------------------------------------------------
# models in the store


def usable_model(store: ArtifactStore, svc: ServiceSettings, now: pd.Timestamp) -> Entry | None:
    """The newest stored model of ``svc`` fitted at or before ``now`` for its settings (model,
    horizon, step, seed), intact and readable as data, or None (fit one).

    A newest model that must not be used (corrupt, another format, outside the store) is not
    passed over for an older one: None, and the forecast stage refits and says why
    (:func:`surgecast.live.model_store.find`).
    """
    return model_store.find(store, svc, now).entry


def fit_and_store(
    store: ArtifactStore, svc: ServiceSettings, rps: pd.Series, now: pd.Timestamp
) -> tuple[Any, str]:
    """Fit the service's model on ``rps`` and store it as data (``surgecast.live.model_store``);
    return (model, URI of its metadata).

    Raises:
        BadInputError: the history is too short (or otherwise unusable) for the model.
    """
    from forecasting.models import make_model

    f = svc.forecast
    model = make_model(f.model, horizon=f.horizon_steps, seed=f.seed)
    if f.model == "hybrid":
        from forecasting.decomposition import warm_up

        warm_up()
    started = time.perf_counter()
    model.fit(rps)
    seconds = time.perf_counter() - started
    _shed_caches(model)
    fields = {
        "service": svc.name,
        "model": f.model,
        "horizon_steps": f.horizon_steps,
        "step_s": float(svc.step_s),
        "seed": f.seed,
        "fitted_at": iso(now),
        "history_start": format_time(rps.index[0]),
        "history_end": format_time(rps.index[-1]),
        "history_points": len(rps),
        "fit_seconds": round(seconds, 3),
        "fit_error": model.fit_error_,
    }
    return model, model_store.write(store, svc.name, now, model, fields)


def load_model(store: ArtifactStore, meta_uri: str) -> tuple[Any, dict]:
    """The model stored at ``meta_uri`` and its metadata, read as data (never unpickled) and
    only from inside ``store``.

    Raises:
        model_store.StoredModelError: why the model must not be used (the caller refits).
    """
    model, meta = model_store.load(store, meta_uri)
    return model, meta.model_dump(mode="json")


def _shed_caches(model: Any) -> None:
    """Drop memoised decompositions (they are rebuilt on demand and never stored) so a freshly
    fitted model held in memory is as small as a loaded one and forecasts the same."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or not hasattr(obj, "__dict__"):
            continue
        seen.add(id(obj))
        cache = obj.__dict__.get("_cache")
        if isinstance(cache, dict):
            cache.clear()
        stack += [v for v in obj.__dict__.values() if hasattr(v, "fit") and hasattr(v, "__dict__")]


# --------------------------------------------------------------------------------------------
# stages


def ingest(
    settings: Settings,
    service: str,
    now: Any,
    *,
    source: PrometheusSource | None = None,
    budget: Budget | None = None,
) -> str:
    """Read the service's RPS history up to ``now`` from Prometheus and check it.

    Reads ``forecast.history_days``, or ``forecast.fit_days`` when the service has no usable
    stored model yet (the forecast stage will fit one). The read gets the budget's deadline, so
    a Prometheus that answers slowly ends the read (reason ``deadline``) instead of the run.

    Args:
        budget: the cycle's time budget (default: ``Settings.run_timeout_s`` from now).

    Returns:
        URI of the history artifact (``history/<service>/...json.gz``); on a data problem it
        carries ``error`` instead of values.
    """
    svc = settings.service(service)
    now = as_now(now)
    store = store_for(settings)
    fit = usable_model(store, svc, now) is None
    days = svc.forecast.fit_days if fit else svc.forecast.history_days
    doc: dict[str, Any] = {
        "kind": "history",
        "service": svc.name,
        "run_at": iso(now),
        "query": svc.query,
        "step_s": svc.step_s,
        "span_days": days,
        "for_fit": fit,
        "error": None,
    }
    budget = Budget.for_settings(settings) if budget is None else budget
    try:
        late = _over_budget(budget, "ingest")
        if late is not None:
            raise SourceError("deadline", late["message"])
        with _source(settings, source) as src:
            raw = _read_source(
                src, svc.query, end=now, span=pd.Timedelta(days=days), step_s=svc.step_s,
                deadline=budget.monotonic_deadline(),
            )
        rps, quality = check_history(raw, now=now, data=svc.data, source=f"service {svc.name}")
        doc.update(
            start=iso(rps.index[0]), quality=quality.to_dict(), values=_floats(rps.to_numpy())
        )
    except SourceError as exc:
        doc["error"] = _error("ingest", exc.reason, str(exc))
    return _write_gz(store, "history", svc.name, now, doc)


def forecast(
    settings: Settings,
    service: str,
    history_uri: str,
    now: Any,
    *,
    budget: Budget | None = None,
) -> str:
    """Forecast the service's load from the history artifact at ``history_uri``.

    Args:
        budget: the cycle's time budget; once it has passed, nothing is forecast (the artifact
            carries the ``deadline`` error). None: no limit.

    Returns:
        URI of the forecast artifact: the Forecast (``Forecast.to_dict``), the model used and
        any fallback, the observed load; or the upstream/own error (``corrupt`` when the
        history artifact cannot be read).
    """
    svc = settings.service(service)
    now = as_now(now)
    store = store_for(settings)
    doc: dict[str, Any] = {
        "kind": "forecast",
        "service": svc.name,
        "run_at": iso(now),
        "history_uri": history_uri,
        "error": None,
    }
    rps = None
    try:
        history = _read(history_uri)
        doc["error"] = history.get("error")
        if doc["error"] is None:
            rps = _history_series(history)
    except ArtifactError as exc:
        doc["error"] = _corrupt("forecast", exc)
    except (KeyError, TypeError, ValueError) as exc:
        doc["error"] = _corrupt("forecast", ArtifactError(f"{history_uri}: malformed history: "
                                                          f"{exc!r}"))
    if doc["error"] is None:
        doc["error"] = _over_budget(budget, "forecast")
    if doc["error"] is None:
        try:
            doc.update(_forecast(store, svc, rps, now))
        except BadInputError as exc:
            doc["error"] = _error("forecast", "model", str(exc))
    return store.write_json("forecasts", svc.name, now, doc)


def _forecast(store: ArtifactStore, svc: ServiceSettings, rps: pd.Series, now) -> dict:
    from forecasting.models import make_model

    f = svc.forecast
    found = model_store.find(store, svc, now)
    fallback = None
    model = model_uri = None
    refit_reason = found.refused  # the newest stored model was refused: refit, and say why
    if found.entry is not None:
        try:
            model, meta = load_model(store, found.entry.uri)
            model_uri, fitted_at = found.entry.uri, meta["fitted_at"]
        except model_store.StoredModelError as exc:
            refit_reason = f"stored model {found.entry.uri} refused: {exc}"
    if model is None:
        try:
            model, model_uri = fit_and_store(store, svc, rps, now)
            fitted_at = iso(now)
        except BadInputError as exc:
            # The configured model cannot be fitted on this history: the seasonal naive
            # forecast answers (DESIGN: baselines double as fallbacks), and the record says so.
            fallback = f"seasonal naive answered: {f.model} could not be fitted: {exc}"
            if refit_reason:
                fallback += f" ({refit_reason})"
            model = make_model("seasonal_naive", horizon=f.horizon_steps, seed=f.seed)
            model.fit(rps)  # raises BadInputError too when even that is impossible
            fitted_at = iso(now)
    fc = model.forecast(rps)
    data = fc.to_dict()
    keep = {str(q) for q in f.quantiles} | {str(f.plan_quantile)}
    data["quantiles"] = {k: v for k, v in data["quantiles"].items() if k in keep}
    values = rps.to_numpy()
    observed = float(values[np.isfinite(values)][-1])
    gated = _no_regret(store, svc, rps, fc, observed, now) if f.no_regret else {}
    if gated:
        gated["plan_quantiles"] = {
            k: v for k, v in gated["plan_quantiles"].items() if k in keep
        }
    return {
        **gated,
        "forecast": data,
        "model": {
            "name": f.model if fallback is None else "seasonal_naive",
            "uri": model_uri,
            "fitted_at": fitted_at,
            "fallback": fallback or fc.fallback,
            "refit_reason": refit_reason,
        },
        "observed_rps": observed,
        "window_peak_rps": window_peak(rps, svc.stabilisation_s),
        "plan_quantile": f.plan_quantile,
    }


def _no_regret(
    store: ArtifactStore, svc: ServiceSettings, rps: pd.Series, fc, observed: float, now
) -> dict:
    """The forecast gate (:mod:`forecasting.trust`): the quantiles the planner gets
    (``plan_quantiles``) and the weights (``trust``), from the model's forecasts of the last
    hour (this service's forecast artifacts, as the model made them) scored on the history
    just read. A forecast artifact that cannot be read is left out of the score."""
    from forecasting.trust import WINDOW_S, PastForecast, gate

    past = []
    since = fc.cutoff - pd.Timedelta(seconds=WINDOW_S)
    for entry in store.entries("forecasts", svc.name, start=since, end=now):
        try:
            doc = store.read_doc(entry.uri)
            data = doc.get("forecast")
            if doc.get("error") is not None or not isinstance(data, dict):
                continue
            past.append(PastForecast(
                cutoff=pd.Timestamp(data["cutoff"]),
                observed_rps=float(doc["observed_rps"]),
                step_s=float(data["step_s"]),
                quantiles={float(q): np.asarray(v, dtype=np.float64)
                           for q, v in data["quantiles"].items()},
            ))
        except (ArtifactError, KeyError, TypeError, ValueError):
            continue
    raw = {float(q): fc.quantiles[q].to_numpy() for q in fc.quantiles}
    gated, trust = gate(raw, observed, past, rps, fc.cutoff)
    return {
        "plan_quantiles": {str(q): [float(v) for v in loads] for q, loads in gated.items()},
        "trust": trust.to_dict(),
    }


def window_peak(rps: pd.Series, window_s: float) -> float | None:
    """The highest load observed within ``window_s`` before the newest sample (rps), which a
    scale-in must carry (:func:`actuator.guards.confirm_scale_in`); None without data."""
    recent = rps.loc[rps.index[-1] - pd.Timedelta(seconds=window_s) :].to_numpy()
    recent = recent[np.isfinite(recent)]
    return float(recent.max()) if recent.size else None


def plan(
    settings: Settings,
    service: str,
    forecast_uri: str,
    now: Any,
    *,
    api: Any = None,
    budget: Budget | None = None,
) -> str:
    """Plan replicas × cores × batch for the forecast at ``forecast_uri``.

    The current state is read from the cluster (Deployment replicas, CPU of its pods) when the
    API answers, else assumed to be the reactive optimum for the observed load (the record says
    which). Decision records that cannot be read while looking for the last scale-up are
    skipped and listed under ``skipped``.

    Args:
        budget: the cycle's time budget; once it has passed, nothing is planned (``deadline``).

    Returns:
        URI of the plan artifact (``Plan.to_dict`` plus the state it started from), or the
        upstream/own error (``corrupt`` when the forecast artifact cannot be read).
    """
    from surgecast.planning import load_profile, plan_cycle

    svc = settings.service(service)
    now = as_now(now)
    store = store_for(settings)
    doc: dict[str, Any] = {
        "kind": "plan",
        "service": svc.name,
        "run_at": iso(now),
        "forecast_uri": forecast_uri,
        "history_uri": None,
        "error": None,
        "skipped": [],
    }
    try:
        fc_doc = _read(forecast_uri)
        doc["history_uri"] = fc_doc.get("history_uri")
        doc["error"] = fc_doc.get("error")
    except ArtifactError as exc:
        doc["error"] = _corrupt("plan", exc)
    if doc["error"] is None:
        try:
            fc = fc_doc["forecast"]
            q = svc.forecast.plan_quantile
            # The gated quantiles when the forecast stage wrote them (forecast.no_regret).
            planned = fc_doc.get("plan_quantiles") or fc["quantiles"]
            loads = np.asarray(planned[str(q)], dtype=np.float64)
            observed = float(fc_doc["observed_rps"])
            step_s, cutoff = float(fc["step_s"]), fc["cutoff"]
            if loads.ndim != 1 or not loads.size or not math.isfinite(observed):
                raise ValueError("the planning quantile is not a series, or no observed load")
        except (KeyError, TypeError, ValueError) as exc:
            doc["error"] = _corrupt(
                "plan", ArtifactError(f"{forecast_uri}: malformed forecast: {exc!r}")
            )
    if doc["error"] is None:
        doc["error"] = _over_budget(budget, "plan")
    if doc["error"] is None:
        try:
            pipeline = load_profile(svc.profile)
            policy = svc.policy()
            state, source = current_state(settings, svc, pipeline, observed, api=api)
            last_up = last_scale_up(store, svc, now, skipped=doc["skipped"])
            # The one planning function the backtest runs too: cores for the planning
            # quantile, replicas for the surge quantile, a receding horizon.
            result = plan_cycle(
                svc.name,
                pipeline,
                state,
                observed,
                _plan_quantiles(planned, q, loads),
                step_s,
                cutoff,
                policy,
                run_interval_s=settings.run_interval_s,
                last_scale_up_at=last_up,
            )
            doc.update(
                plan=result.to_dict(),
                state={
                    "replicas": list(state.replicas),
                    "cores": list(state.cores),
                    "batch": list(state.batch),
                    "source": source,
                },
                observed_rps=observed,
                window_peak_rps=fc_doc.get("window_peak_rps"),
                quantile=q,
                peak_rps=float(loads.max()),
                last_scale_up_at=None if last_up is None else iso(last_up),
            )
        except BadInputError as exc:
            doc["error"] = _error("plan", "planner", str(exc))
    return store.write_json("plans", svc.name, now, doc)


def _plan_quantiles(stored: dict, plan_q: float, loads: np.ndarray) -> dict[float, np.ndarray]:
    """The planning quantile's loads, and the surge quantile's when the forecast carries it as
    a finite series of the same length (else the plan has no surge floor)."""
    from surgecast.planning import SURGE_QUANTILE

    out = {float(plan_q): loads}
    try:
        surge = np.asarray(stored[str(SURGE_QUANTILE)], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        return out
    if surge.shape == loads.shape and np.all(np.isfinite(surge)) and np.all(surge >= 0):
        out[SURGE_QUANTILE] = surge
    return out


class StageFailed(RuntimeError):
    """An unexpected exception in a stage, after its decision record (outcome ``error``) was
    written; the original exception is the ``__cause__``.

    Attributes:
        record_uri: the decision record, or None when even it could not be written.
    """

    def __init__(self, message: str, record_uri: str | None) -> None:
        super().__init__(message)
        self.record_uri = record_uri


def actuate(
    settings: Settings,
    service: str,
    plan_uri: str,
    now: Any,
    *,
    api: Any = None,
    options: Any = None,
    budget: Budget | None = None,
) -> str:
    """Apply the due part of the plan at ``plan_uri`` (shadow: dry-run only) and record it.

    Always writes a decision record (``decisions/<service>/...json``) and pushes the run's
    metrics; on an upstream error, an unreadable plan (``corrupt``) or a passed budget
    (``deadline``) nothing is touched and the record says why. Forecast and history artifacts
    that cannot be read only leave their inputs out of the record (listed in ``errors``).

    Args:
        api: an ``actuator.kube.KubeApi`` (default: from ``settings.kubernetes``).
        options: ``actuator.apply.RunOptions`` (retries, polling, sleep, wall clock); its
            ``last_scale_up_s`` is filled in from the store, everything else is kept.
        budget: the cycle's time budget; once it has passed, nothing is applied.

    Returns:
        URI of the decision record.

    Raises:
        StageFailed: an unexpected exception while applying, after the record (outcome
            ``error``) and the metric were written.
    """
    svc = settings.service(service)
    now = as_now(now)
    store = store_for(settings)
    notes: list[str] = []
    error = None
    try:
        plan_doc = _read(plan_uri)
    except ArtifactError as exc:
        plan_doc, error = {}, _corrupt("actuate", exc)
    fc_doc = _read_for_record(plan_doc.get("forecast_uri"), notes)
    hist_doc = _read_for_record(plan_doc.get("history_uri"), notes)
    if error is None:
        error = _checked_error(plan_doc.get("error"), plan_uri)
    skipped = plan_doc.get("skipped")
    record: dict[str, Any] = {
        "kind": "decision",
        "service": svc.name,
        "run_at": iso(now),
        "mode": svc.mode,
        "ok": False,
        "outcome": "no action",
        "summary": "",
        "quantile": svc.forecast.plan_quantile,
        "inputs": _inputs(plan_doc, fc_doc, hist_doc),
        "artifacts": {
            "history": _text(plan_doc.get("history_uri")),
            "forecast": _text(plan_doc.get("forecast_uri")),
            "plan": plan_uri,
        },
        "plan": plan_doc.get("plan"),
        "bound_by": [],
        "applied": [],
        "error": error,
        "errors": [f"skipped {n}" for n in skipped if isinstance(n, str)]
        if isinstance(skipped, list)
        else [],
        "actuator": None,
        "metrics": None,
    }
    record["errors"] += notes
    if record["error"] is None:
        record["error"] = _over_budget(budget, "actuate")
    if record["error"] is None:
        try:
            _actuate(settings, svc, plan_doc, now, record, api=api, options=options)
        except Exception as exc:
            # Recorded before it propagates: the task is retried, but this run's attempt and
            # whatever the actuator did are on record (its own line lists every change).
            log.exception("%s: actuate failed", svc.name)
            uri = _write_failure(settings, svc, now, "actuate", exc, record)
            raise StageFailed(f"{svc.name}: actuate: {type(exc).__name__}: {exc}", uri) from exc
    if record["error"] is not None and record["actuator"] is None:
        err = record["error"]
        record["errors"].insert(0, f"{err['stage']}: {err['message']}")
        record["summary"] = f"no action ({err['stage']}: {err['reason']}): {err['message']}"
    record["metrics"] = push_run_metrics(settings.pushgateway_url, record)
    return store.write_json("decisions", svc.name, now, record)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _read_for_record(uri: Any, notes: list[str]) -> dict:
    """An upstream artifact read only for the record's inputs: {} (and a note) if unreadable."""
    if uri is None:
        return {}
    try:
        return _read(uri)
    except ArtifactError as exc:
        notes.append(f"skipped {exc}")
        return {}


def _checked_error(err: Any, uri: str) -> dict | None:
    """An upstream ``error`` as passed on, or a ``corrupt`` error when it is not one."""
    if err is None:
        return None
    if isinstance(err, dict) and all(isinstance(err.get(k), str)
                                     for k in ("stage", "reason", "message")):
        return err
    return _corrupt("actuate", ArtifactError(f"{uri}: malformed error field {err!r:.200}"))


def _failure_record(svc: ServiceSettings, now: pd.Timestamp, stage: str, exc: BaseException,
                    record: dict | None = None) -> dict:
    """A decision record with outcome ``error`` for an unexpected exception in ``stage``."""
    message = f"{type(exc).__name__}: {exc}"
    record = dict(record) if record is not None else {
        "kind": "decision",
        "service": svc.name,
        "run_at": iso(now),
        "mode": svc.mode,
        "quantile": svc.forecast.plan_quantile,
        "inputs": {},
        "artifacts": {},
        "plan": None,
        "bound_by": [],
        "applied": [],
        "errors": [],
        "actuator": None,
    }
    record.update(
        ok=False,
        outcome="error",
        error=_error(stage, "internal", message),
        summary=f"error ({stage}): {message}",
        metrics=None,
    )
    record["errors"] = [*record.get("errors", []), f"{stage}: internal error: {message}"]
    return record


def _write_failure(settings: Settings, svc: ServiceSettings, now: pd.Timestamp, stage: str,
                   exc: BaseException, record: dict | None = None) -> str | None:
    """Record an unexpected exception in ``stage`` (decision record + metric); the record's URI,
    or None when the store itself fails (logged)."""
    doc = _failure_record(svc, now, stage, exc, record)
    doc["metrics"] = push_run_metrics(settings.pushgateway_url, doc)
    try:
        return store_for(settings).write_json("decisions", svc.name, now, doc)
    except Exception:  # the store is what failed; the log and the metric are what is left
        log.exception("%s: cannot write the decision record of a failed run", svc.name)
        return None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _inputs(plan_doc: dict, fc_doc: dict, hist_doc: dict) -> dict:
    fc = _dict(fc_doc.get("forecast"))
    model = _dict(fc_doc.get("model"))
    return {
        "query": hist_doc.get("query"),
        "history": hist_doc.get("quality"),
        "history_for_fit": hist_doc.get("for_fit"),
        "model": model.get("name"),
        "model_uri": model.get("uri"),
        "model_fitted_at": model.get("fitted_at"),
        "fallback": model.get("fallback"),
        "model_refit_reason": model.get("refit_reason"),
        "forecast_cutoff": fc.get("cutoff"),
        "observed_rps": fc_doc.get("observed_rps"),
        "forecast_peak_rps": plan_doc.get("peak_rps"),
        "state": plan_doc.get("state"),
        "last_scale_up_at": plan_doc.get("last_scale_up_at"),
    }


def _actuate(settings, svc, plan_doc, now, record, *, api, options) -> None:
    from dataclasses import replace

    from actuator.apply import RunOptions
    from actuator.apply import actuate as apply_plan
    from surgecast.planning import load_profile

    try:
        result_plan = Plan.from_dict(plan_doc["plan"])
        observed_rps = float(plan_doc["observed_rps"])
        peak = plan_doc.get("window_peak_rps")
        window_peak_rps = None if peak is None else float(peak)
    except BadInputError as exc:
        record["error"] = _error("actuate", "plan", str(exc))
        return
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        record["error"] = _error("actuate", "corrupt", f"malformed plan artifact: {exc!r:.300}")
        return
    # The plan names the service the actuator touches and the folder its record goes to:
    # only this service's own plan is applied, whatever a plan file says (see also
    # surgecast.live.artifacts.check_service_name).
    if result_plan.service != svc.name or plan_doc.get("service") != svc.name:
        record["error"] = _error(
            "actuate",
            "plan",
            f"plan is for service {str(result_plan.service)[:100]!r}, not {svc.name!r}: refused",
        )
        return
    try:
        pipeline = load_profile(svc.profile)
        floors = reactive_floors(pipeline, svc, observed_rps, window_peak_rps)
    except BadInputError as exc:
        record["error"] = _error("actuate", "plan", str(exc))
        return
    if api is None:
        try:
            api = kube_api(settings)
        except (BadInputError, OSError) as exc:
            record["error"] = _error("actuate", "kubernetes", str(exc))
            return
    store = store_for(settings)
    skipped: list[str] = []
    last_up = last_scale_up(store, svc, now, skipped=skipped)
    record["errors"] += [f"skipped {n}" for n in skipped if f"skipped {n}" not in record["errors"]]
    # replace() keeps everything the caller set (retries, sleep, wall_clock, max_clock_skew_s):
    # the actuator's clock check runs against the caller's wall clock.
    options = RunOptions() if options is None else options
    options = replace(options, last_scale_up_s=None if last_up is None else last_up.timestamp())
    rec = apply_plan(
        result_plan,
        [settings.actuator_config(svc.name)],
        api,
        now=now,
        artifacts=actuator_dir(settings),
        floors=floors,
        options=options,
    )
    data = rec.to_dict()
    record["actuator"] = data
    record["errors"] += list(rec.errors)
    record["bound_by"] = [
        f"{w['deployment']}: {note}" for w in data["workloads"] for note in w["bound_by"]
    ]
    record["applied"] = [c for c in data["changes"] if c["outcome"] not in ("unchanged",)]
    record["summary"] = rec.summary()
    record["held"] = rec.held
    if rec.refused:
        record["outcome"] = "refused"
        record["error"] = _error("actuate", "refused", rec.refused)
    elif rec.errors:
        record["outcome"] = "failed"
        record["error"] = _error("actuate", "kubernetes", rec.errors[-1])
    else:
        record["ok"] = True
        record["outcome"] = (
            ("applied" if rec.applied else "unchanged")
            if svc.active and rec.held is None
            else ("dry-run" if record["applied"] else "unchanged")
        )


def reactive_floors(
    pipeline, svc: ServiceSettings, observed_rps: float, window_peak_rps: float | None = None
) -> dict:
    """The actuator's reactive floor per stage (:func:`surgecast.planning.reactive_floors`,
    which the backtest calls too)."""
    from surgecast.planning import reactive_floors as floors_for

    return floors_for(pipeline, svc.policy(), observed_rps, window_peak_rps)


def current_state(
    settings: Settings, svc: ServiceSettings, pipeline, observed_rps: float, *, api: Any = None
):
    """(ClusterState, where it came from): read from the cluster, else the reactive optimum."""
    from actuator import pods as P
    from actuator.kube import RetryPolicy, read_with_retries
    from planner.dp import horizontal
    from planner.policy import ClusterState

    policy = svc.policy()
    default = horizontal(
        pipeline,
        observed_rps,
        policy.slo_ms,
        min_replicas=policy.min_replicas,
        max_replicas=policy.max_replicas,
    )
    assumed = ClusterState.of(default.stages)
    note = "assumed (reactive optimum for the observed load): "
    if api is None:
        try:
            api = kube_api(settings)
        except BadInputError as exc:
            return assumed, note + str(exc)
    retry = RetryPolicy(attempts=2, backoff_s=0.2)
    by_stage = {w.stage: w for w in svc.workloads}
    replicas, cores, batch = [], [], []
    for i, name in enumerate(pipeline.stage_names):
        wl = svc.workloads[0] if len(svc.workloads) == 1 else by_stage[name]
        ns = svc.namespace
        dep, errors = read_with_retries(
            lambda wl=wl, ns=ns: api.deployment(ns, wl.deployment), retry=retry, sleep=time.sleep
        )
        if dep is None:
            return assumed, note + f"deployments/{wl.deployment}: {errors[-1] if errors else ''}"
        labels = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        pods, errors = read_with_retries(
            lambda labels=labels, ns=ns: api.pods(ns, labels), retry=retry, sleep=time.sleep
        )
        template_m = P.template_millicores(dep, wl.container)
        if pods is None or template_m is None:
            why = errors[-1] if pods is None and errors else "no CPU request in the template"
            return assumed, note + f"{wl.deployment}: {why}"
        replicas.append(int((dep.get("spec") or {}).get("replicas", 1)))
        cores.append(max(1, P.typical_cores(pods, wl.container, template_m)))
        value = P.template_env(dep, wl.container, wl.batch_env) if wl.batch_env else None
        batch.append(int(value) if value and value.isdigit() else assumed.batch[i])
    return ClusterState(tuple(replicas), tuple(cores), tuple(batch)), "cluster"


def kube_api(settings: Settings):
    """The actuator's API from ``settings.kubernetes``.

    Raises:
        BadInputError: no usable kubeconfig or in-cluster account.
    """
    from actuator.kube import KubeApi, api_client_for

    k = settings.kubernetes
    try:
        client = api_client_for(kubeconfig=k.kubeconfig, context=k.context, host=k.host)
    except Exception as exc:  # kubernetes.config.ConfigException and file errors
        if type(exc).__module__.startswith("kubernetes") or isinstance(exc, OSError | ValueError):
            raise BadInputError(f"kubernetes: no usable configuration: {exc}") from None
        raise
    return KubeApi(client)


def actuator_dir(settings: Settings) -> Path:
    """Local folder for the actuator's own record lines (it writes local files)."""
    store = store_for(settings)
    if store.local:
        return Path(store.base)
    if settings.artifacts.actuator_dir:
        return Path(settings.artifacts.actuator_dir)
    return Path(tempfile.gettempdir()) / "surgecast-actuator"


def last_scale_up(
    store: ArtifactStore,
    svc: ServiceSettings,
    now: pd.Timestamp,
    *,
    skipped: list[str] | None = None,
):
    """When this service's capacity was last raised in its current mode, within the
    stabilisation window before ``now`` (from the decision records), or None.

    A record that cannot be read (missing, truncated, corrupt) is skipped, never fatal, and
    described in ``skipped`` when a list is given.
    """
    start = now - pd.Timedelta(seconds=svc.stabilisation_s)
    for entry in reversed(store.entries("decisions", svc.name, start=start, end=now)):
        try:
            doc = store.read_doc(entry.uri)
        except ArtifactError as exc:
            if skipped is not None:
                skipped.append(str(exc))
            continue
        act = _dict(doc.get("actuator"))
        if doc.get("mode") == svc.mode and act.get("scaled_up") is True:
            return entry.at
    return None


# --------------------------------------------------------------------------------------------
# metrics


def push_run_metrics(url: str | None, record: dict, *, timeout_s: float = 5.0) -> str:
    """Push the run's outcome to the Pushgateway (job ``surgecast_pipeline``, group service).

    Metrics: ``surgecast_run_ok`` (1/0), ``surgecast_run_error`` (1, labelled ``stage`` and
    ``reason``; absent when ok), ``surgecast_run_timestamp_seconds``, ``surgecast_forecast_
    fallback`` (1 when the seasonal naive answered), ``surgecast_history_staleness_seconds``,
    ``surgecast_forecast_peak_rps``, ``surgecast_active`` (1 active, 0 shadow).

    Returns:
        ``pushed``, ``no pushgateway configured`` or ``failed: <why>`` (never raises).
    """
    if not url:
        return "no pushgateway configured"
    err = record.get("error")
    inputs = record.get("inputs") or {}
    history = inputs.get("history") or {}
    samples = [
        Sample("surgecast_run_ok", "1 when the run could act on a good forecast",
               1 if record["ok"] else 0),
        Sample("surgecast_run_timestamp_seconds", "Time of the run (its now)",
               pd.Timestamp(record["run_at"]).timestamp()),
        Sample("surgecast_forecast_fallback", "1 when the seasonal naive forecast answered",
               1 if inputs.get("fallback") else 0),
        Sample("surgecast_active", "1 active, 0 shadow", 1 if record["mode"] == "active" else 0),
    ]
    if err is not None:
        samples.append(Sample("surgecast_run_error", "Why the run did not act (1 per stage and "
                              "reason)", 1, {"stage": err["stage"], "reason": err["reason"]}))
    if history.get("staleness_s") is not None:
        samples.append(Sample("surgecast_history_staleness_seconds",
                              "Age of the newest sample at the run", history["staleness_s"]))
    if inputs.get("forecast_peak_rps") is not None:
        samples.append(Sample("surgecast_forecast_peak_rps",
                              "Peak of the planning quantile over the horizon",
                              inputs["forecast_peak_rps"]))
    try:
        push(url, PIPELINE_JOB, record["service"], samples, timeout_s=timeout_s)
    except (OSError, ValueError) as exc:  # unreachable, HTTP error, malformed URL
        return f"failed: {exc}"
    return "pushed"


# --------------------------------------------------------------------------------------------
# one cycle


@dataclass(frozen=True)
class ServiceRun:
    """One service's cycle in ``run_once``.

    Attributes:
        service: its name.
        record_uri: the decision record.
        ok: the run acted on a good forecast (or had nothing to do).
        line: one line for the terminal.
        seconds: wall time of the four stages (s).
        stage_seconds: wall time of each stage (s): ingest, forecast, plan, actuate.
    """

    service: str
    record_uri: str
    ok: bool
    line: str
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)


def run_service(
    settings: Settings,
    service: str,
    now: Any,
    *,
    source: PrometheusSource | None = None,
    api: Any = None,
    options: Any = None,
    clock: Callable[[], float] = time.monotonic,
) -> ServiceRun:
    """ingest -> forecast -> plan -> actuate for one service, within its time budget.

    Never raises for a problem of this service: an unexpected exception in any stage becomes
    its decision record (outcome ``error``, reason ``internal``, the stage named) and metric,
    and the returned run is not ok. The budget (``Settings.run_timeout_s``) starts here; the
    ingest hands its deadline to the source and every later stage checks it before working,
    so a run that is late records ``deadline`` and applies nothing.

    Args:
        clock: monotonic seconds for the budget (``time.monotonic``; tests pass a test clock).
    """
    svc = settings.service(service)
    now = as_now(now)
    budget = Budget.for_settings(settings, clock)
    laps = [time.perf_counter()]
    stages: dict[str, float] = {}

    def lap(name: str) -> None:
        laps.append(time.perf_counter())
        stages[name] = laps[-1] - laps[-2]

    stage = "ingest"
    try:
        history_uri = ingest(settings, service, now, source=source, budget=budget)
        lap(stage)
        stage = "forecast"
        forecast_uri = forecast(settings, service, history_uri, now, budget=budget)
        lap(stage)
        stage = "plan"
        plan_uri = plan(settings, service, forecast_uri, now, api=api, budget=budget)
        lap(stage)
        stage = "actuate"
        record_uri = actuate(
            settings, service, plan_uri, now, api=api, options=options, budget=budget
        )
        lap(stage)
        record = ArtifactStore.read_doc(record_uri)
    except StageFailed as exc:  # actuate recorded it already
        lap(stage)
        return _failed_run(svc, exc.record_uri, str(exc), laps, stages)
    except Exception as exc:
        # One service's failure is its own: recorded, and the fleet goes on (DESIGN 6).
        log.exception("%s: %s failed", svc.name, stage)
        lap(stage)
        uri = _write_failure(settings, svc, now, stage, exc)
        return _failed_run(svc, uri, f"{stage}: {type(exc).__name__}: {exc}", laps, stages)
    line = f"{service}: {record.get('mode')} {record.get('outcome')}: {record.get('summary')}"
    return ServiceRun(
        service, record_uri, record.get("ok") is True, line, laps[-1] - laps[0], stages
    )


def _failed_run(svc, uri: str | None, message: str, laps: list[float], stages) -> ServiceRun:
    where = uri if uri is not None else "no record written"
    line = f"{svc.name}: {svc.mode} error: {message} ({where})"
    return ServiceRun(svc.name, uri or "", False, line, laps[-1] - laps[0], stages)


def run_once(
    settings: Settings,
    now: Any,
    *,
    services: Sequence[str] | None = None,
    source: PrometheusSource | None = None,
    api: Any = None,
    options: Any = None,
    progress: Callable[[ServiceRun], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[ServiceRun]:
    """One full cycle for every service (or those named), in config order.

    One Prometheus session and one Kubernetes client serve every service. Services are
    isolated: each has its own budget, and one that fails (even unexpectedly) gets its
    decision record while the others still run; the result has one entry per service. A
    service whose cluster client cannot be built still gets its decision record (the error
    says why).

    Args:
        clock: monotonic seconds for the budgets (tests pass a test clock).
    """
    now = as_now(now)
    names = list(services) if services is not None else settings.names
    for name in names:
        settings.service(name)  # unknown names fail before anything runs
    if api is None:
        try:
            api = kube_api(settings)
        except Exception as exc:  # each service's actuate meets (and records) it again
            log.warning("kubernetes client: %s", exc)
            api = None
    runs = []
    with _source(settings, source) as src:
        for name in names:
            run = run_service(
                settings, name, now, source=src, api=api, options=options, clock=clock
            )
            runs.append(run)
            if progress is not None:
                progress(run)
    return runs


# --------------------------------------------------------------------------------------------
# daily work: refit, accuracy, retention


def retrain(
    settings: Settings,
    service: str,
    now: Any,
    *,
    source: PrometheusSource | None = None,
    force: bool = False,
) -> str:
    """Refit the service's model on ``forecast.fit_days`` of history and store it.

    A stored model younger than ``forecast.refit_every_h`` (less :data:`REFIT_SLACK_H`) is kept
    unless ``force``.

    Returns:
        URI of the model's metadata (the new one, or the kept one).

    Raises:
        SourceError: the history cannot be read or must not be used (the task fails; the scaling
            runs keep the previous model).
        BadInputError: the history is too short for the model.
    """
    svc = settings.service(service)
    now = as_now(now)
    store = store_for(settings)
    entry = usable_model(store, svc, now)
    if entry is not None and not force:
        age_h = (now - entry.at).total_seconds() / 3600
        if age_h < svc.forecast.refit_every_h - REFIT_SLACK_H:
            return entry.uri
    with _source(settings, source) as src:
        raw = src.read(
            svc.query, end=now, span=pd.Timedelta(days=svc.forecast.fit_days), step_s=svc.step_s
        )
    rps, _ = check_history(raw, now=now, data=svc.data, source=f"service {svc.name}")
    _, uri = fit_and_store(store, svc, rps, now)
    return uri


def accuracy(
    settings: Settings,
    service: str,
    now: Any,
    *,
    source: PrometheusSource | None = None,
    days: float = 1.0,
) -> str:
    """Score the forecasts made in the ``days`` before ``now`` against what Prometheus recorded.

    Metrics (``forecasting.metrics``): MAE, RMSE, sMAPE, MASE (scaled by the seasonal-naive
    error of the day before), pinball loss per quantile, coverage, under-prediction rate at the
    planning quantile; MAE per horizon step. Targets after ``now`` are not scored.

    Returns:
        URI of the accuracy report (``accuracy/<service>/...json``); metrics are pushed too.
    """
    from forecasting.metrics import by_horizon, model_metrics, seasonal_naive_scale
    from forecasting.models import steps_per_day

    svc = settings.service(service)
    now = as_now(now)
    store = store_for(settings)
    start = now - pd.Timedelta(days=days)
    entries = store.entries("forecasts", svc.name, start=start, end=now)
    rows = []
    fallbacks = 0
    quantiles: list[float] = []
    skipped: list[str] = []
    for entry in entries:
        try:
            doc = store.read_doc(entry.uri)
            fc = doc.get("forecast")
            if doc.get("error") is not None or fc is None:
                continue
            found, cutoff = _forecast_rows(fc)
            if (found and found[0]["ds"].tzinfo is None) or cutoff.tzinfo is None:
                raise ValueError("times without a zone")
        except ArtifactError as exc:
            skipped.append(str(exc))
            continue
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            skipped.append(f"{entry.uri}: malformed forecast: {exc!r:.200}")
            continue
        fallbacks += bool(_dict(doc.get("model")).get("fallback"))
        quantiles = sorted(float(q) for q in fc["quantiles"])
        rows += found
    report: dict[str, Any] = {
        "kind": "accuracy",
        "service": svc.name,
        "run_at": iso(now),
        "window": {"start": iso(start), "end": iso(now)},
        "forecasts": len({r["cutoff"] for r in rows}),
        "fallbacks": fallbacks,
        "skipped": skipped,
        "error": None,
    }
    if not rows:
        report["error"] = _error("accuracy", "missing", "no forecasts in the window")
    else:
        try:
            step = pd.Timedelta(seconds=svc.step_s)
            season = steps_per_day(step)
            with _source(settings, source) as src:
                actual = src.read(
                    svc.query, end=now, span=pd.Timedelta(days=days + 1), step_s=svc.step_s
                )
            frame = pd.DataFrame(rows)
            frame = frame[frame["ds"] <= now]
            frame["y"] = actual.reindex(pd.DatetimeIndex(frame["ds"])).to_numpy()
            scale = seasonal_naive_scale(actual.loc[: start - step], season)
            for q in (0.5, 0.9, 0.95, 0.99):
                col = f"surgecast-q{q:g}"
                if col not in frame:
                    frame[col] = np.nan
            metrics = model_metrics(frame, ["surgecast"], scale)["surgecast"]
            horizon = by_horizon(frame, ["surgecast"])
            report.update(
                scored_points=int(frame["y"].notna().sum()),
                quantiles=quantiles,
                mase_scale_rps=scale,
                metrics=metrics,
                mae_by_horizon=[None if not math.isfinite(v) else float(v)
                                for v in horizon["surgecast"].to_numpy()],
            )
        except (SourceError, BadInputError) as exc:
            report["error"] = _error("accuracy", getattr(exc, "reason", "data"), str(exc))
    report["metrics_push"] = push_accuracy_metrics(settings.pushgateway_url, report)
    return store.write_json("accuracy", svc.name, now, report)


def _forecast_rows(fc: dict) -> tuple[list[dict], pd.Timestamp]:
    """One row per horizon step of a stored forecast (``ds, cutoff, h, surgecast, -q...``)."""
    cutoff = pd.Timestamp(fc["cutoff"])
    rows = []
    for h, ds in enumerate(fc["ds"]):
        row = {"ds": pd.Timestamp(ds), "cutoff": cutoff, "h": h + 1,
               "surgecast": float(fc["mean"][h])}
        for q, values in fc["quantiles"].items():
            row[f"surgecast-q{float(q):g}"] = values[h]
        rows.append(row)
    return rows, cutoff


def push_accuracy_metrics(url: str | None, report: dict, *, timeout_s: float = 5.0) -> str:
    """Push the accuracy report's headline figures (job ``surgecast_accuracy``)."""
    if not url:
        return "no pushgateway configured"
    metrics = report.get("metrics") or {}
    samples = [
        Sample("surgecast_accuracy_ok", "1 when the day could be scored",
               0 if report.get("error") else 1),
        Sample("surgecast_accuracy_forecasts", "Forecasts scored", report.get("forecasts", 0)),
    ]
    samples += [
        Sample(f"surgecast_accuracy_{key}", f"{key} of the day's forecasts", metrics[key])
        for key in ("mae", "rmse", "smape", "mase", "under_rate_q95")
        if metrics.get(key) is not None
    ]
    samples += [
        Sample("surgecast_accuracy_coverage", "Share of actuals at or below the quantile", value,
               {"quantile": str(q)})
        for q, value in (metrics.get("coverage") or {}).items()
        if value is not None
    ]
    try:
        push(url, "surgecast_accuracy", report["service"], samples, timeout_s=timeout_s)
    except (OSError, ValueError) as exc:
        return f"failed: {exc}"
    return "pushed"


def prune(
    settings: Settings, now: Any, *, wall_clock: Callable[[], float] = time.time
) -> list[str]:
    """Delete artifacts older than the retention, counted from the earlier of ``now`` and
    ``wall_clock()`` (epoch seconds), keeping the newest day of every kind and service (see
    :meth:`ArtifactStore.prune`)."""
    return store_for(settings).prune(
        as_now(now), settings.artifacts.retention_days, wall_clock=wall_clock
    )
