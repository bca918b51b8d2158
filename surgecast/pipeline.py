"""The live pipeline: ingest -> forecast -> plan -> actuate, one service at a time.

Each stage function takes the settings, a service name, the URI of the previous stage's
artifact and the run's time ``now`` (from the scheduler: never the wall clock), writes its own
artifact to the store and returns its URI. The command line (``surgecast run --once``) and the
Airflow DAGs call the same functions, so XCom carries only URIs.

A problem with the data (Prometheus unreachable or answering errors, stale, missing or gappy
history, a model that cannot forecast) does not raise: the stage writes an artifact that carries
the error, every later stage passes it on without acting, and ``actuate`` writes a decision
record that says why nothing was changed and pushes a metric with the reason. Nothing is ever
applied from a bad forecast. Programming errors still raise (the task fails and is retried).

Fitted models come from the store (the retraining DAG refits them); when a service has none, the
first forecast fits one and stores it; a model that cannot be fitted is replaced by the seasonal
naive forecast, and the forecast and the record say so.
"""

from __future__ import annotations

import gzip
import math
import pickle
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecasting.cleaning import format_time
from forecasting.errors import BadInputError
from planner.errors import PlannerInputError
from planner.plan import Plan, iso, utc_timestamp
from surgecast.artifacts import ArtifactStore, Entry
from surgecast.prometheus import PrometheusSource, SourceError, check_history
from surgecast.settings import ServiceSettings, Settings

PIPELINE_JOB = "surgecast_pipeline"
"""Pushgateway job of the pipeline's run metrics (the actuator pushes ``surgecast_actuator``)."""

MODEL_FORMAT = 1
"""Version of the stored model layout; a model of another version is refitted."""

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
    try:
        return utc_timestamp(now, "now")
    except PlannerInputError as exc:
        raise BadInputError(str(exc)) from None


def _error(stage: str, reason: str, message: str) -> dict:
    return {"stage": stage, "reason": reason, "message": message}


def _floats(values: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in values]


def _read(uri: str) -> dict:
    if uri.endswith(".gz"):
        import json

        return json.loads(gzip.decompress(ArtifactStore.read_bytes(uri)).decode("utf-8"))
    return ArtifactStore.read_json(uri)


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
    start = pd.Timestamp(doc["start"])
    values = np.array([np.nan if v is None else v for v in doc["values"]], dtype=np.float64)
    index = pd.date_range(start, periods=len(values), freq=pd.Timedelta(seconds=doc["step_s"]))
    return pd.Series(values, index=index, name="rps")


# --------------------------------------------------------------------------------------------
# models in the store


def usable_model(store: ArtifactStore, svc: ServiceSettings, now: pd.Timestamp) -> Entry | None:
    """The newest stored model of ``svc`` fitted at or before ``now`` that matches its settings
    (model, horizon, step, seed), or None."""
    for entry in reversed(store.entries("models", svc.name, end=now)):
        try:
            meta = store.read_json(entry.uri)
        except (FileNotFoundError, ValueError):
            continue
        if _model_matches(meta, svc):
            return entry
    return None


def _model_matches(meta: dict, svc: ServiceSettings) -> bool:
    f = svc.forecast
    return (
        meta.get("format") == MODEL_FORMAT
        and meta.get("model") == f.model
        and meta.get("horizon_steps") == f.horizon_steps
        and meta.get("step_s") == svc.step_s
        and meta.get("seed") == f.seed
    )


def fit_and_store(
    store: ArtifactStore, svc: ServiceSettings, rps: pd.Series, now: pd.Timestamp
) -> tuple[Any, str]:
    """Fit the service's model on ``rps`` and store it; return (model, URI of its metadata).

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
    pkl = store.write_bytes("models", svc.name, now, pickle.dumps(model), "pkl")
    meta = {
        "format": MODEL_FORMAT,
        "service": svc.name,
        "model": f.model,
        "horizon_steps": f.horizon_steps,
        "step_s": svc.step_s,
        "seed": f.seed,
        "fitted_at": iso(now),
        "history_start": format_time(rps.index[0]),
        "history_end": format_time(rps.index[-1]),
        "history_points": len(rps),
        "fit_seconds": round(seconds, 3),
        "fit_error": model.fit_error_,
        "pickle": pkl,
    }
    return model, store.write_json("models", svc.name, now, meta)


def load_model(meta_uri: str) -> tuple[Any, dict]:
    """A stored model and its metadata."""
    meta = ArtifactStore.read_json(meta_uri)
    model = pickle.loads(ArtifactStore.read_bytes(meta["pickle"]))  # our own store only
    return model, meta


def _shed_caches(model: Any) -> None:
    """Drop memoised decompositions (they are rebuilt on demand) so a stored model stays small."""
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
    settings: Settings, service: str, now: Any, *, source: PrometheusSource | None = None
) -> str:
    """Read the service's RPS history up to ``now`` from Prometheus and check it.

    Reads ``forecast.history_days``, or ``forecast.fit_days`` when the service has no usable
    stored model yet (the forecast stage will fit one).

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
    try:
        with _source(settings, source) as src:
            raw = src.read(
                svc.query, end=now, span=pd.Timedelta(days=days), step_s=svc.step_s
            )
        rps, quality = check_history(raw, now=now, data=svc.data, source=f"service {svc.name}")
        doc.update(
            start=iso(rps.index[0]), quality=quality.to_dict(), values=_floats(rps.to_numpy())
        )
    except SourceError as exc:
        doc["error"] = _error("ingest", exc.reason, str(exc))
    return _write_gz(store, "history", svc.name, now, doc)


def forecast(settings: Settings, service: str, history_uri: str, now: Any) -> str:
    """Forecast the service's load from the history artifact at ``history_uri``.

    Returns:
        URI of the forecast artifact: the Forecast (``Forecast.to_dict``), the model used and
        any fallback, the observed load; or the upstream/own error.
    """
    svc = settings.service(service)
    now = as_now(now)
    store = store_for(settings)
    history = _read(history_uri)
    doc: dict[str, Any] = {
        "kind": "forecast",
        "service": svc.name,
        "run_at": iso(now),
        "history_uri": history_uri,
        "error": history.get("error"),
    }
    if doc["error"] is None:
        try:
            doc.update(_forecast(store, svc, _history_series(history), now))
        except BadInputError as exc:
            doc["error"] = _error("forecast", "model", str(exc))
    return store.write_json("forecasts", svc.name, now, doc)


def _forecast(store: ArtifactStore, svc: ServiceSettings, rps: pd.Series, now) -> dict:
    from forecasting.models import make_model

    f = svc.forecast
    entry = usable_model(store, svc, now)
    fallback = None
    model_uri = None
    if entry is not None:
        try:
            model, meta = load_model(entry.uri)
            model_uri, fitted_at = entry.uri, meta["fitted_at"]
        except (pickle.UnpicklingError, AttributeError, ImportError, EOFError, KeyError,
                FileNotFoundError, ValueError) as exc:
            # e.g. stored by another version of a library: refit on what this run read
            entry, fallback_note = None, f"stored model {entry.uri} unreadable ({exc!r}); refitted"
    else:
        fallback_note = None
    if entry is None:
        try:
            model, model_uri = fit_and_store(store, svc, rps, now)
            fitted_at = iso(now)
        except BadInputError as exc:
            # The configured model cannot be fitted on this history: the seasonal naive
            # forecast answers (DESIGN: baselines double as fallbacks), and the record says so.
            fallback = f"seasonal naive answered: {f.model} could not be fitted: {exc}"
            if fallback_note:
                fallback += f" ({fallback_note})"
            model = make_model("seasonal_naive", horizon=f.horizon_steps, seed=f.seed)
            model.fit(rps)  # raises BadInputError too when even that is impossible
            fitted_at = iso(now)
    fc = model.forecast(rps)
    data = fc.to_dict()
    keep = {str(q) for q in f.quantiles} | {str(f.plan_quantile)}
    data["quantiles"] = {k: v for k, v in data["quantiles"].items() if k in keep}
    values = rps.to_numpy()
    return {
        "forecast": data,
        "model": {
            "name": f.model if fallback is None else "seasonal_naive",
            "uri": model_uri,
            "fitted_at": fitted_at,
            "fallback": fallback or fc.fallback,
        },
        "observed_rps": float(values[np.isfinite(values)][-1]),
        "plan_quantile": f.plan_quantile,
    }


def plan(
    settings: Settings, service: str, forecast_uri: str, now: Any, *, api: Any = None
) -> str:
    """Plan replicas × cores × batch for the forecast at ``forecast_uri``.

    The current state is read from the cluster (Deployment replicas, CPU of its pods) when the
    API answers, else assumed to be the reactive optimum for the observed load (the record says
    which).

    Returns:
        URI of the plan artifact (``Plan.to_dict`` plus the state it started from), or the
        upstream/own error.
    """
    from planner.policy import plan_two_stage
    from surgecast.planning import load_profile

    svc = settings.service(service)
    now = as_now(now)
    store = store_for(settings)
    fc_doc = _read(forecast_uri)
    doc: dict[str, Any] = {
        "kind": "plan",
        "service": svc.name,
        "run_at": iso(now),
        "forecast_uri": forecast_uri,
        "history_uri": fc_doc.get("history_uri"),
        "error": fc_doc.get("error"),
    }
    if doc["error"] is None:
        try:
            fc = fc_doc["forecast"]
            q = svc.forecast.plan_quantile
            loads = np.asarray(fc["quantiles"][str(q)], dtype=np.float64)
            observed = float(fc_doc["observed_rps"])
            pipeline = load_profile(svc.profile)
            policy = svc.policy()
            state, source = current_state(settings, svc, pipeline, observed, api=api)
            last_up = last_scale_up(store, svc, now)
            result = plan_two_stage(
                svc.name,
                pipeline,
                state,
                observed,
                loads,
                float(fc["step_s"]),
                fc["cutoff"],
                policy,
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
                quantile=q,
                peak_rps=float(loads.max()),
                last_scale_up_at=None if last_up is None else iso(last_up),
            )
        except (PlannerInputError, BadInputError) as exc:
            doc["error"] = _error("plan", "planner", str(exc))
    return store.write_json("plans", svc.name, now, doc)


def actuate(
    settings: Settings,
    service: str,
    plan_uri: str,
    now: Any,
    *,
    api: Any = None,
    options: Any = None,
) -> str:
    """Apply the due part of the plan at ``plan_uri`` (shadow: dry-run only) and record it.

    Always writes a decision record (``decisions/<service>/...json``) and pushes the run's
    metrics; on an upstream error nothing is touched and the record says why.

    Args:
        api: an ``actuator.kube.KubeApi`` (default: from ``settings.kubernetes``).
        options: ``actuator.apply.RunOptions`` (retries, polling, sleep); its
            ``last_scale_up_s`` is filled in from the store.

    Returns:
        URI of the decision record.
    """
    svc = settings.service(service)
    now = as_now(now)
    store = store_for(settings)
    plan_doc = _read(plan_uri)
    fc_doc = _read(plan_doc["forecast_uri"]) if plan_doc.get("forecast_uri") else {}
    hist_doc = _read(plan_doc["history_uri"]) if plan_doc.get("history_uri") else {}
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
            "history": plan_doc.get("history_uri"),
            "forecast": plan_doc.get("forecast_uri"),
            "plan": plan_uri,
        },
        "plan": plan_doc.get("plan"),
        "bound_by": [],
        "applied": [],
        "error": plan_doc.get("error"),
        "errors": [],
        "actuator": None,
        "metrics": None,
    }
    if record["error"] is None:
        _actuate(settings, svc, plan_doc, now, record, api=api, options=options)
    if record["error"] is not None and record["actuator"] is None:
        err = record["error"]
        record["errors"].insert(0, f"{err['stage']}: {err['message']}")
        record["summary"] = f"no action ({err['stage']}: {err['reason']}): {err['message']}"
    record["metrics"] = push_run_metrics(settings.pushgateway_url, record)
    return store.write_json("decisions", svc.name, now, record)


def _inputs(plan_doc: dict, fc_doc: dict, hist_doc: dict) -> dict:
    fc = fc_doc.get("forecast") or {}
    model = fc_doc.get("model") or {}
    return {
        "query": hist_doc.get("query"),
        "history": hist_doc.get("quality"),
        "history_for_fit": hist_doc.get("for_fit"),
        "model": model.get("name"),
        "model_uri": model.get("uri"),
        "model_fitted_at": model.get("fitted_at"),
        "fallback": model.get("fallback"),
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
    from actuator.errors import ActuatorInputError
    from surgecast.planning import load_profile

    try:
        result_plan = Plan.from_dict(plan_doc["plan"])
        pipeline = load_profile(svc.profile)
        floors = reactive_floors(pipeline, svc, float(plan_doc["observed_rps"]))
    except (PlannerInputError, BadInputError) as exc:
        record["error"] = _error("actuate", "plan", str(exc))
        return
    if api is None:
        try:
            api = kube_api(settings)
        except (ActuatorInputError, OSError) as exc:
            record["error"] = _error("actuate", "kubernetes", str(exc))
            return
    store = store_for(settings)
    last_up = last_scale_up(store, svc, now)
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
            if svc.active
            else ("dry-run" if record["applied"] else "unchanged")
        )


def reactive_floors(pipeline, svc: ServiceSettings, observed_rps: float) -> dict:
    """The actuator's reactive floor per stage: the horizontal optimum for the observed load."""
    from actuator.target import Floor
    from planner.dp import horizontal
    from planner.queueing import load_within_headroom

    policy = svc.policy()
    decision = horizontal(
        pipeline,
        observed_rps,
        policy.slo_ms,
        min_replicas=policy.min_replicas,
        max_replicas=policy.max_replicas,
    )
    floors = {}
    for i, (profile, config) in enumerate(zip(pipeline.stages, decision.stages, strict=True)):

        def capacity(cfg, profile=profile) -> float:
            return load_within_headroom(cfg.replicas * profile.throughput_rps(cfg.batch, cfg.cores))

        floors[i] = Floor(observed_rps=observed_rps, capacity_rps=capacity, floor=config)
    return floors


def current_state(
    settings: Settings, svc: ServiceSettings, pipeline, observed_rps: float, *, api: Any = None
):
    """(ClusterState, where it came from): read from the cluster, else the reactive optimum."""
    from actuator import pods as P
    from actuator.errors import ActuatorInputError
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
        except ActuatorInputError as exc:
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
        ActuatorInputError: no usable kubeconfig or in-cluster account.
    """
    from actuator.errors import ActuatorInputError
    from actuator.kube import KubeApi, api_client_for

    k = settings.kubernetes
    try:
        client = api_client_for(kubeconfig=k.kubeconfig, context=k.context, host=k.host)
    except Exception as exc:  # kubernetes.config.ConfigException and file errors
        if type(exc).__module__.startswith("kubernetes") or isinstance(exc, OSError | ValueError):
            raise ActuatorInputError(f"kubernetes: no usable configuration: {exc}") from None
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


def last_scale_up(store: ArtifactStore, svc: ServiceSettings, now: pd.Timestamp):
    """When this service's capacity was last raised in its current mode, within the
    stabilisation window before ``now`` (from the decision records), or None."""
    start = now - pd.Timedelta(seconds=svc.stabilisation_s)
    for entry in reversed(store.entries("decisions", svc.name, start=start, end=now)):
        try:
            doc = store.read_json(entry.uri)
        except (FileNotFoundError, ValueError):
            continue
        act = doc.get("actuator") or {}
        if doc.get("mode") == svc.mode and act.get("scaled_up"):
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
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    Gauge("surgecast_run_ok", "1 when the run could act on a good forecast",
          registry=registry).set(1 if record["ok"] else 0)
    err = record.get("error")
    if err is not None:
        Gauge("surgecast_run_error", "Why the run did not act (1 per stage and reason)",
              ["stage", "reason"], registry=registry).labels(err["stage"], err["reason"]).set(1)
    Gauge("surgecast_run_timestamp_seconds", "Time of the run (its now)",
          registry=registry).set(pd.Timestamp(record["run_at"]).timestamp())
    inputs = record.get("inputs") or {}
    Gauge("surgecast_forecast_fallback", "1 when the seasonal naive forecast answered",
          registry=registry).set(1 if inputs.get("fallback") else 0)
    history = inputs.get("history") or {}
    if history.get("staleness_s") is not None:
        Gauge("surgecast_history_staleness_seconds", "Age of the newest sample at the run",
              registry=registry).set(history["staleness_s"])
    if inputs.get("forecast_peak_rps") is not None:
        Gauge("surgecast_forecast_peak_rps", "Peak of the planning quantile over the horizon",
              registry=registry).set(inputs["forecast_peak_rps"])
    Gauge("surgecast_active", "1 active, 0 shadow", registry=registry).set(
        1 if record["mode"] == "active" else 0
    )
    try:
        push_to_gateway(
            url,
            job=PIPELINE_JOB,
            registry=registry,
            grouping_key={"service": record["service"]},
            timeout=timeout_s,
        )
    except OSError as exc:
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
) -> ServiceRun:
    """ingest -> forecast -> plan -> actuate for one service."""
    clock = [time.perf_counter()]
    stages: dict[str, float] = {}

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        stages[name] = clock[-1] - clock[-2]

    history_uri = ingest(settings, service, now, source=source)
    lap("ingest")
    forecast_uri = forecast(settings, service, history_uri, now)
    lap("forecast")
    plan_uri = plan(settings, service, forecast_uri, now, api=api)
    lap("plan")
    record_uri = actuate(settings, service, plan_uri, now, api=api, options=options)
    lap("actuate")
    record = ArtifactStore.read_json(record_uri)
    line = f"{service}: {record['mode']} {record['outcome']}: {record['summary']}"
    return ServiceRun(
        service, record_uri, bool(record["ok"]), line, clock[-1] - clock[0], stages
    )


def run_once(
    settings: Settings,
    now: Any,
    *,
    services: Sequence[str] | None = None,
    source: PrometheusSource | None = None,
    api: Any = None,
    options: Any = None,
    progress: Callable[[ServiceRun], None] | None = None,
) -> list[ServiceRun]:
    """One full cycle for every service (or those named), in config order.

    One Prometheus session and one Kubernetes client serve every service. A service whose
    cluster client cannot be built still gets its decision record (the error says why).
    """
    from actuator.errors import ActuatorInputError

    now = as_now(now)
    names = list(services) if services is not None else settings.names
    for name in names:
        settings.service(name)  # unknown names fail before anything runs
    if api is None:
        try:
            api = kube_api(settings)
        except ActuatorInputError:
            api = None  # each service's actuate records the error
    runs = []
    with _source(settings, source) as src:
        for name in names:
            run = run_service(settings, name, now, source=src, api=api, options=options)
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
    for entry in entries:
        doc = store.read_json(entry.uri)
        fc = doc.get("forecast")
        if doc.get("error") is not None or fc is None:
            continue
        fallbacks += bool((doc.get("model") or {}).get("fallback"))
        quantiles = sorted(float(q) for q in fc["quantiles"])
        cutoff = pd.Timestamp(fc["cutoff"])
        for h, ds in enumerate(fc["ds"]):
            row = {"ds": pd.Timestamp(ds), "cutoff": cutoff, "h": h + 1,
                   "surgecast": fc["mean"][h]}
            for q, values in fc["quantiles"].items():
                row[f"surgecast-q{float(q):g}"] = values[h]
            rows.append(row)
    report: dict[str, Any] = {
        "kind": "accuracy",
        "service": svc.name,
        "run_at": iso(now),
        "window": {"start": iso(start), "end": iso(now)},
        "forecasts": len({r["cutoff"] for r in rows}),
        "fallbacks": fallbacks,
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


def push_accuracy_metrics(url: str | None, report: dict, *, timeout_s: float = 5.0) -> str:
    """Push the accuracy report's headline figures (job ``surgecast_accuracy``)."""
    if not url:
        return "no pushgateway configured"
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    Gauge("surgecast_accuracy_ok", "1 when the day could be scored", registry=registry).set(
        0 if report.get("error") else 1
    )
    Gauge("surgecast_accuracy_forecasts", "Forecasts scored", registry=registry).set(
        report.get("forecasts", 0)
    )
    metrics = report.get("metrics") or {}
    for key in ("mae", "rmse", "smape", "mase", "under_rate_q95"):
        if metrics.get(key) is not None:
            Gauge(f"surgecast_accuracy_{key}", f"{key} of the day's forecasts",
                  registry=registry).set(metrics[key])
    coverage = Gauge("surgecast_accuracy_coverage", "Share of actuals at or below the quantile",
                     ["quantile"], registry=registry)
    for q, value in (metrics.get("coverage") or {}).items():
        if value is not None:
            coverage.labels(q).set(value)
    try:
        push_to_gateway(url, job="surgecast_accuracy", registry=registry,
                        grouping_key={"service": report["service"]}, timeout=timeout_s)
    except OSError as exc:
        return f"failed: {exc}"
    return "pushed"


def prune(settings: Settings, now: Any) -> list[str]:
    """Delete artifacts older than the retention (see :meth:`ArtifactStore.prune`)."""
    return store_for(settings).prune(as_now(now), settings.artifacts.retention_days)
