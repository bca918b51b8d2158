"""The ``surgecast`` command line. Each command is one call deep into a stage function."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from forecasting.errors import BadInputError
from planner.errors import PlannerInputError

app = typer.Typer(
    help="Workload forecasting and proactive scaling for ML inference services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def main() -> None:
    """surgecast: see surges coming and have capacity ready when they land."""


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@app.command()
def decompose(
    trace: Annotated[
        str | None,
        typer.Argument(help="timestamp,rps CSV file, or the name of a bundled trace."),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(help="Cutoff (ISO 8601, UTC): the window ends here. Default: trace end."),
    ] = None,
    window: Annotated[int, typer.Option(help="Window length in steps.")] = 1440,
    step: Annotated[str, typer.Option(help="Resample to this step (mean), e.g. 1min.")] = "1min",
    imfs: Annotated[
        int, typer.Option(help="K: IMFs returned (lower rows merge into residue).")
    ] = 8,
    trials: Annotated[int, typer.Option(help="CEEMDAN noise realisations.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the noise realisations.")] = 0,
    backend: Annotated[
        str, typer.Option(help="fast | pyemd (EMD-signal, the reference).")
    ] = "fast",
    max_gap: Annotated[
        int, typer.Option(help="Longest run of missing steps filled; longer is refused.")
    ] = 60,
    plot: Annotated[Path | None, typer.Option(help="Write a stacked plot (PNG) here.")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write a JSON summary here.")
    ] = None,
) -> None:
    """CEEMDAN decomposition of the RPS window that ends at --at."""
    from surgecast.stages import decompose_trace

    try:
        result = decompose_trace(
            trace,
            at=at,
            window=window,
            step=step,
            n_imfs=imfs,
            trials=trials,
            seed=seed,
            backend=backend,
            max_gap_steps=max_gap,
        )
    except BadInputError as exc:
        raise _fail(str(exc)) from None

    summary = result.summary()
    table = Table(title=f"CEEMDAN of {result.source}, {window} x {step} ending {result.cutoff}")
    table.add_column("component")
    table.add_column("std (rps)", justify="right")
    table.add_column("share of variance", justify="right")
    table.add_column("mean period", justify="right")
    for row in result.component_stats():
        table.add_row(
            row["name"], f"{row['std_rps']:.3f}", f"{row['variance_share']:.1%}", row["period"]
        )
    console.print(table)
    console.print(
        f"backend {result.backend}, {trials} trials, seed {seed}: {summary['seconds']:.3f} s; "
        f"{summary['imfs_found_text']}; filled {summary['filled_points']} missing points; "
        f"reconstruction error {summary['reconstruction_error']:.2e} rps",
        highlight=False,
    )
    if plot is not None:
        from surgecast.plots import plot_decomposition

        plot_decomposition(result, plot)
        console.print(f"plot: {plot}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        payload = {k: v for k, v in summary.items() if k != "imfs_found_text"}
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"summary: {json_out}")


@app.command("forecast-report")
def forecast_report_cmd(
    trace: Annotated[
        str | None, typer.Argument(help="timestamp,rps CSV file, or a bundled trace name.")
    ] = None,
    step: Annotated[str, typer.Option(help="Resample to this step (mean).")] = "1min",
    horizon: Annotated[int, typer.Option(help="Forecast steps.")] = 15,
    test_days: Annotated[float, typer.Option(help="Days at the end of the trace to test.")] = 2.0,
    every: Annotated[int, typer.Option(help="Steps between forecast origins.")] = 5,
    refit_days: Annotated[float, typer.Option(help="Refit cadence (days).")] = 1.0,
    models: Annotated[str, typer.Option(help="Comma-separated models, or 'all'.")] = "all",
    seed: Annotated[int, typer.Option(help="Seed of every model.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/forecast-report"),
) -> None:
    """Rolling-origin accuracy report of the hybrid and every baseline."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from forecasting.models import MODELS
    from surgecast.stages import forecast_report

    names = list(MODELS) if models == "all" else [m.strip() for m in models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise _fail(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} origins"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task("rolling-origin forecasts", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            result = forecast_report(
                trace,
                step=step,
                horizon=horizon,
                test_days=test_days,
                every=every,
                refit_days=refit_days,
                models=names,
                seed=seed,
                out=out,
                progress=progress,
            )
        except BadInputError as exc:
            raise _fail(str(exc)) from None
    table = Table(title=f"{result.origins} origins, horizon {horizon} x {step}")
    for col in ("model", "MAE", "MASE", "pinball q0.95", "coverage q0.95", "under q0.95"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, m in result.metrics.items():
        mark = " (selected)" if name == result.selected else ""
        table.add_row(
            name + mark,
            f"{m['mae']:.3f}",
            f"{m['mase']:.3f}",
            f"{m['pinball']['0.95']:.3f}",
            f"{m['coverage']['0.95']:.3f}",
            f"{m['under_rate_q95']:.3f}",
        )
    console.print(table)
    console.print(
        f"{result.seconds:.0f} s; report: {result.report_html}; metrics: {result.metrics_json}"
    )


@app.command()
def forecast(
    trace: Annotated[
        str | None, typer.Argument(help="timestamp,rps CSV file, or a bundled trace name.")
    ] = None,
    at: Annotated[
        str | None, typer.Option(help="Cutoff (ISO 8601, UTC). Default: the end of the trace.")
    ] = None,
    step: Annotated[str, typer.Option(help="Resample to this step (mean).")] = "1min",
    horizon: Annotated[int, typer.Option(help="Forecast steps.")] = 15,
    model: Annotated[str, typer.Option(help="Model name.")] = "hybrid",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write it as JSON here.")] = None,
) -> None:
    """Fit a model on the history before --at and print its forecast with quantiles."""
    from surgecast.stages import forecast_at

    try:
        fc = forecast_at(trace, at=at, step=step, horizon=horizon, model=model, seed=seed)
    except BadInputError as exc:
        raise _fail(str(exc)) from None
    title = f"{fc.model} forecast at {fc.cutoff.strftime('%Y-%m-%dT%H:%M:%SZ')} (rps)"
    table = Table(title=title)
    for col in ("time (UTC)", "mean", *(f"q{q}" for q in fc.quantiles.columns)):
        table.add_column(col, justify="right")
    for ts, mean in fc.mean.items():
        qs = [f"{fc.quantiles.loc[ts, q]:.2f}" for q in fc.quantiles.columns]
        table.add_row(ts.strftime("%Y-%m-%d %H:%M"), f"{mean:.2f}", *qs)
    console.print(table)
    if fc.fallback:
        console.print(f"[yellow]fallback:[/] {fc.fallback}", highlight=False)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(fc.to_dict(), indent=2) + "\n")
        console.print(f"forecast: {json_out}")


@app.command()
def plan(
    profile: Annotated[
        str,
        typer.Option(
            help="Profile or pipeline file (.toml/.json), measurements (.csv: cores,batch,p99_ms)"
            ", or a bundled name: resnet18, yolov5n, video."
        ),
    ],
    slo_ms: Annotated[float, typer.Option(help="End-to-end latency SLO (ms, at p99).")],
    rps: Annotated[
        float | None,
        typer.Option(help="Load to size for; with --forecast, the observed load."),
    ] = None,
    forecast_file: Annotated[
        Path | None,
        typer.Option("--forecast", help="Forecast JSON (surgecast forecast --json): plan ahead."),
    ] = None,
    replicas: Annotated[
        str | None, typer.Option(help="Current replicas: N, or one per stage (N1,N2).")
    ] = None,
    cores: Annotated[
        str | None, typer.Option(help="Current cores per replica (C or C1,C2).")
    ] = None,
    batch: Annotated[str | None, typer.Option(help="Current batch size (B or B1,B2).")] = None,
    quantile: Annotated[float, typer.Option(help="Forecast quantile to size for.")] = 0.95,
    cold_start_s: Annotated[float, typer.Option(help="New replica start-up time (s).")] = 30.0,
    resize_s: Annotated[float, typer.Option(help="In-place resize time (s).")] = 2.0,
    stabilisation_s: Annotated[
        float, typer.Option(help="Time after a scale-up before a scale-in (s).")
    ] = 300.0,
    last_scale_up_at: Annotated[
        str | None, typer.Option(help="When capacity was last raised (ISO 8601, UTC).")
    ] = None,
    min_replicas: Annotated[int, typer.Option(help="Lower bound on every stage.")] = 1,
    max_replicas: Annotated[int | None, typer.Option(help="Upper bound on every stage.")] = None,
    max_cores: Annotated[
        int | None, typer.Option(help="CSV profile only: cores limit (default: largest measured).")
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="CSV profile only: batch limit (default: largest measured).")
    ] = None,
    service: Annotated[
        str | None, typer.Option(help="Service name (default: the profile's).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the Plan JSON here (with --forecast).")
    ] = None,
) -> None:
    """Replicas x cores x batch for a load (the two DPs), or a timed plan for a forecast."""
    from planner.policy import PolicySettings
    from surgecast.planning import decide, load_profile, parse_counts, plan_from_forecast

    try:
        pipeline = load_profile(profile, max_cores=max_cores, max_batch=max_batch)
        stages = len(pipeline.stages)
        counts = [
            parse_counts(value, stages, name)
            for value, name in ((replicas, "--replicas"), (cores, "--cores"), (batch, "--batch"))
        ]
        if forecast_file is None:
            if rps is None:
                raise _fail("--rps: give the load to size for, or a --forecast file")
            result = decide(
                pipeline,
                rps,
                slo_ms,
                replicas=counts[0],
                cores=counts[1],
                batch=counts[2],
                max_replicas=max_replicas,
            )
            _print_decisions(pipeline, result, rps, slo_ms)
            return
        from surgecast.planning import read_forecast_json

        settings = PolicySettings(
            slo_ms=slo_ms,
            cold_start_s=cold_start_s,
            resize_s=resize_s,
            stabilisation_s=stabilisation_s,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            quantile=quantile,
        )
        fc = read_forecast_json(forecast_file)
        result_plan = plan_from_forecast(
            service or pipeline.name,
            pipeline,
            fc,
            settings,
            observed_rps=rps,
            replicas=counts[0],
            cores=counts[1],
            batch=counts[2],
            last_scale_up_at=last_scale_up_at,
        )
    except (BadInputError, PlannerInputError) as exc:
        raise _fail(str(exc)) from None
    _print_plan(result_plan)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result_plan.to_dict(), indent=2) + "\n")
        console.print(f"plan: {out}")


def _print_decisions(pipeline, result, rps: float, slo_ms: float) -> None:
    table = Table(title=f"{pipeline.name}: {rps:g} rps, SLO {slo_ms:g} ms")
    for col in ("decision", "stage", "replicas", "cores", "batch", "latency ms", "capacity rps"):
        table.add_column(col, justify="left" if col in ("decision", "stage") else "right")
    rows = [("horizontal", result.horizontal), ("vertical", result.vertical)]
    if result.current is not None:
        rows.insert(0, ("current", result.current))
    for label, decision in rows:
        for i, (profile, config) in enumerate(zip(pipeline.stages, decision.stages, strict=True)):
            capacity = config.replicas * float(profile.throughput_rps(config.batch, config.cores))
            table.add_row(
                label if i == 0 else "",
                profile.name,
                str(config.replicas),
                str(config.cores),
                str(config.batch),
                f"{decision.stage_latency_ms[i]:.1f}",
                f"{capacity:.1f}",
            )
    console.print(table)
    for label, decision in rows:
        status = "meets the SLO" if decision.feasible else "[bold red]INFEASIBLE[/]"
        line = (
            f"{label}: {decision.cost_cores} cores, {decision.latency_ms:.1f} ms end to end, "
            f"carries {decision.capacity_rps:.1f} rps (sized for {decision.target_rps:.1f}); "
            f"bound by {decision.binding}; {status}"
        )
        if decision.detail:
            line += f" ({decision.detail})"
        console.print(line, highlight=False, soft_wrap=True)


@app.command()
def backtest(
    trace: Annotated[
        str | None,
        typer.Argument(help="timestamp,rps CSV (1 s or coarser), or a bundled trace name."),
    ] = None,
    profile: Annotated[
        str, typer.Option(help="Latency profile or pipeline: file or bundled name.")
    ] = "resnet18",
    slo_ms: Annotated[float, typer.Option(help="End-to-end latency SLO (ms).")] = 750.0,
    policies: Annotated[str, typer.Option(help="Comma-separated policies, or 'all'.")] = "all",
    start: Annotated[
        str | None, typer.Option(help="Start of the simulated span (UTC, ISO 8601).")
    ] = None,
    end: Annotated[str | None, typer.Option(help="End of the simulated span (UTC).")] = None,
    train_days: Annotated[
        float, typer.Option(help="Days of history the forecaster is first fitted on.")
    ] = 4.0,
    refit_days: Annotated[float, typer.Option(help="Refit cadence of the forecaster.")] = 1.0,
    every: Annotated[int, typer.Option(help="Minutes between surgecast's plans.")] = 5,
    model: Annotated[str, typer.Option(help="Forecasting model surgecast uses.")] = "hybrid",
    quantile: Annotated[
        float, typer.Option(help="Forecast quantile the cores are sized for.")
    ] = 0.9,
    surge_quantile: Annotated[
        float, typer.Option(help="Forecast quantile in-place resizing must reach.")
    ] = 0.99,
    cold_start_s: Annotated[int, typer.Option(help="Seconds before a new replica serves.")] = 30,
    resize_s: Annotated[int, typer.Option(help="Seconds an in-place resize takes.")] = 2,
    stabilisation_s: Annotated[
        int, typer.Option(help="No scale-in within this long after a scale-up.")
    ] = 300,
    hpa_target: Annotated[
        float, typer.Option(help="CPU target of the HPA above surgecast's planned floor.")
    ] = 0.9,
    rps_scale: Annotated[float, typer.Option(help="Multiply the trace's rate.")] = 1.0,
    max_replicas: Annotated[
        int | None, typer.Option(help="Replica bound (default: none that binds).")
    ] = None,
    max_cores: Annotated[
        int | None, typer.Option(help="Cores-per-replica bound (default: the profile's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the arrivals and the model.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/backtest"),
) -> None:
    """Replay a trace through surgecast and today's autoscalers on a simulated cluster."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from forecasting.models import MODELS
    from surgecast.backtest import POLICIES, BacktestSettings
    from surgecast.stages import backtest_trace

    names = POLICIES if policies == "all" else tuple(p.strip() for p in policies.split(",") if p)
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise _fail(f"--policies: unknown {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    if model not in MODELS:
        raise _fail(f"--model: unknown {model!r}; choose from {', '.join(MODELS)}")
    problems = [
        f"{flag} must be {rule}"
        for flag, ok, rule in (
            ("--slo-ms", slo_ms > 0, "> 0"),
            ("--every", every >= 1, ">= 1 minute"),
            ("--train-days", train_days > 0, "> 0"),
            ("--refit-days", refit_days > 0, "> 0"),
            ("--quantile", quantile in (0.5, 0.9, 0.95, 0.99), "one of 0.5, 0.9, 0.95, 0.99"),
            (
                "--surge-quantile",
                surge_quantile in (0.5, 0.9, 0.95, 0.99),
                "one of 0.5, 0.9, 0.95, 0.99",
            ),
            ("--cold-start-s", cold_start_s >= 0, ">= 0"),
            ("--resize-s", resize_s >= 0, ">= 0"),
            ("--stabilisation-s", stabilisation_s >= 0, ">= 0"),
            ("--rps-scale", rps_scale > 0, "> 0"),
            ("--hpa-target", 0 < hpa_target <= 1, "in (0, 1]"),
        )
        if not ok
    ]
    if problems:
        raise _fail(problems[0])
    settings = BacktestSettings(
        slo_ms=slo_ms,
        policies=names,
        train_days=train_days,
        refit_days=refit_days,
        every_s=60 * every,
        quantile=quantile,
        surge_quantile=surge_quantile,
        model=model,
        cold_start_s=cold_start_s,
        resize_s=resize_s,
        stabilisation_s=stabilisation_s,
        rps_scale=rps_scale,
        hpa_target_above_plan=hpa_target,
        max_replicas=max_replicas,
        max_cores=max_cores,
        seed=seed,
    )
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f} %"),
        TimeElapsedColumn(),
        console=err_console,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(policy: str, done: int, total: int) -> None:
            if policy not in tasks:
                tasks[policy] = bar.add_task(f"{policy:>11}", total=total)
            bar.update(tasks[policy], completed=done)

        try:
            run = backtest_trace(
                trace,
                profile=profile,
                settings=settings,
                start=start,
                end=end,
                out=out,
                progress=progress,
            )
        except (BadInputError, PlannerInputError) as exc:
            raise _fail(str(exc)) from None
    summary = run.summary
    requests = next(iter(summary["policies"].values()), {}).get("requests", 0)
    table = Table(
        title=(
            f"{summary['trace']}, {summary['profile']}, SLO {slo_ms:g} ms, "
            f"{summary['seconds_simulated'] / 3600:.1f} h from {summary['start']}, "
            f"{requests:,} requests"
        )
    )
    for col in ("policy", "over SLO", "share", "bad min", "core-h", "actions", "util"):
        table.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    for name, row in summary["policies"].items():
        table.add_row(
            name,
            f"{row['violations']:,}",
            f"{100 * row['violation_rate']:.3f} %",
            f"{row['violation_minutes']:,}",
            f"{row['core_hours']:.1f}",
            f"{row['actions']:,}",
            f"{100 * row['mean_utilisation']:.0f} %",
        )
    console.print(table)
    console.print(f"{run.seconds:.0f} s; report: {run.report_html}; results: {run.results_json}")


def _print_plan(plan) -> None:
    title = (
        f"plan for {plan.service} at {plan.cutoff.strftime('%Y-%m-%dT%H:%M:%SZ')} "
        f"(q{plan.quantile:g}, SLO {plan.slo_ms:g} ms)"
    )
    table = Table(title=title)
    for col in ("apply", "effective", "kind", "replicas", "cores", "batch", "p99 ms", "rps"):
        table.add_column(col, justify="left" if col == "kind" else "right", no_wrap=True)
    for step in plan.steps:
        mark = "" if step.feasible else " (!)"
        table.add_row(
            step.apply_at.strftime("%H:%M:%S"),
            step.effective_at.strftime("%H:%M:%S"),
            step.kind + mark,
            ",".join(map(str, step.replicas)),
            ",".join(map(str, step.cores)),
            ",".join(map(str, step.batch)),
            f"{step.expected_latency_ms:.1f}",
            f"{step.capacity_rps:.1f}",
        )
    console.print(table)
    for i, step in enumerate(plan.steps, start=1):
        console.print(f"{i}. {step.reason}", highlight=False, soft_wrap=True)


@app.command("apply")
def apply_cmd(
    plan_file: Annotated[Path, typer.Argument(help="Plan JSON (surgecast plan --out).")],
    service_config: Annotated[
        Path | None,
        typer.Option(help="Service config (.json/.toml): Deployments, bounds, mode, limits."),
    ] = None,
    kubeconfig: Annotated[
        str | None, typer.Option(help="kubeconfig file (default: ~/.kube/config, in-cluster).")
    ] = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context.")] = None,
    active: Annotated[
        bool, typer.Option("--active", help="Patch the cluster (default: shadow, dry runs only).")
    ] = False,
    now: Annotated[
        str | None, typer.Option(help="The run's time (ISO 8601, UTC). Default: now.")
    ] = None,
    artifacts: Annotated[
        Path, typer.Option(help="Artifact store root; records go to decisions/<service>/.")
    ] = Path("artifacts"),
    namespace: Annotated[
        str, typer.Option(help="Without --service-config: the Deployment's namespace.")
    ] = "default",
    deployment: Annotated[
        str | None,
        typer.Option(help="Without --service-config: the Deployment (default: plan's service)."),
    ] = None,
    container: Annotated[
        str, typer.Option(help="Without --service-config: the container to resize.")
    ] = "server",
) -> None:
    """Apply a plan's due steps to the cluster through the guards; one line per change."""
    from actuator.errors import ActuatorInputError
    from surgecast.actuation import apply_plan_file

    try:
        result = apply_plan_file(
            plan_file,
            service_config=service_config,
            namespace=namespace,
            deployment=deployment,
            container=container,
            kubeconfig=kubeconfig,
            context=context,
            active=active,
            now=now,
            artifacts=artifacts,
        )
    except ActuatorInputError as exc:
        raise _fail(str(exc)) from None
    record = result.record
    if record.refused:
        console.print(f"{record.service}: refused: {record.refused}", highlight=False,
                      soft_wrap=True)
    for workload in record.workloads:
        for note in workload.bound_by:
            console.print(f"{workload.deployment}: {note}", highlight=False, soft_wrap=True)
    for change in record.changes:
        console.print(change.line(), highlight=False, soft_wrap=True)
    if not record.changes and not record.refused:
        step = record.chosen_step
        what = f"{step['kind']} step due" if step else "no plan step due"
        console.print(f"{record.service}: {record.mode}: {what}; nothing to change",
                      highlight=False)
    for error in record.errors:
        console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    console.print(f"{record.mode} run; record: {result.record_file}", highlight=False)


def run() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


@app.command("run")
def run_cmd(
    config: Annotated[
        Path, typer.Option(help="Service config (YAML), e.g. data/services.example.yaml.")
    ],
    once: Annotated[
        bool, typer.Option("--once", help="One cycle for every service, then exit.")
    ] = False,
    now: Annotated[
        str | None,
        typer.Option(help="The cycle's time (ISO 8601, UTC); with --once. Default: now."),
    ] = None,
    service: Annotated[
        list[str] | None, typer.Option(help="Only this service (repeatable).")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Validate the config, list the services, exit.")
    ] = False,
    prune: Annotated[
        bool, typer.Option(help="Delete artifacts older than the retention after each cycle.")
    ] = True,
) -> None:
    """ingest -> forecast -> plan -> actuate for every service; one line per service.

    Exit code 1 when a service could not act (the line and its decision record say why).
    Without --once, runs a cycle at every multiple of run_interval_s until interrupted.
    """
    import time

    import pandas as pd

    from surgecast.pipeline import prune as prune_store
    from surgecast.pipeline import run_once
    from surgecast.settings import load_settings
    from surgecast.stages import parse_utc

    try:
        settings = load_settings(config)
        for name in service or []:
            settings.service(name)
        when = parse_utc(now, "--now") if now is not None else None
    except BadInputError as exc:
        raise _fail(str(exc)) from None
    if check:
        for svc in settings.services:
            console.print(
                f"{svc.name}: {svc.mode}, {svc.namespace}/"
                f"{','.join(w.deployment for w in svc.workloads)}, profile {svc.profile}, "
                f"model {svc.forecast.model}, SLO {svc.slo_ms:g} ms",
                highlight=False,
                soft_wrap=True,
            )
        return
    if when is not None and not once:
        raise _fail("--now: only with --once (a loop takes its time from the clock)")

    def cycle(at: pd.Timestamp) -> bool:
        def show(run) -> None:
            console.print(run.line, highlight=False, soft_wrap=True, markup=False)

        runs = run_once(settings, at, services=service or None, progress=show)
        if prune:
            prune_store(settings, at)
        return all(r.ok for r in runs)

    interval = pd.Timedelta(seconds=settings.run_interval_s)
    if once:
        ok = cycle(when if when is not None else pd.Timestamp.now(tz="UTC").floor(interval))
        raise typer.Exit(code=0 if ok else 1)
    while True:  # pragma: no cover - a daemon loop; each cycle is tested through --once
        wall = pd.Timestamp.now(tz="UTC")
        time.sleep(max(0.0, ((wall.floor(interval) + interval) - wall).total_seconds()))
        cycle(pd.Timestamp.now(tz="UTC").floor(interval))
