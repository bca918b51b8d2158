"""The ``surgecast`` command line. Each command is one call deep into a stage function.

Every bad input - a flag out of its range, a file that breaks its schema, an output path that
cannot be written - ends the command before any work with ONE line on stderr that names the input
(the flag with its ``--``, or the file) and the problem, and exit code 2. A plan or decision that
cannot meet the SLO exits 1 (after printing and, for ``plan --out``, writing it). The ranges below
keep every command bounded in time and memory.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from forecasting import DEFAULT_MODEL
from forecasting.errors import BadInputError

try:  # typer >= 0.20 ships its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer on the real click
    from click.exceptions import ClickException, NoArgsIsHelpError

MAX_SEED = 2**31 - 1
"""Seeds are passed to numpy and LightGBM; LightGBM's is a C ``int``."""
MAX_WINDOW = 20_160
"""Longest decomposition window: two weeks of 1-minute steps."""
MAX_TRIALS = 1_000
"""Most CEEMDAN noise realisations (the literature uses 50-500)."""
MAX_IMFS = 16
"""Most IMFs: a window of N points holds at most about log2(N) of them (14 for MAX_WINDOW)."""
MAX_DECOMPOSE_POINT_TRIALS = 2_880_000
"""window x trials bound of one decomposition (two days of minutes x 1,000 trials): CEEMDAN's
cost grows with their product."""
MAX_HORIZON = 1_440
"""Longest forecast horizon in steps: a day of minutes."""
MAX_ORIGIN_EVERY = 10_080
"""Largest spacing of forecast origins in steps: a week of minutes."""
MAX_DAYS = 366.0
"""Longest span given in days (test span, refit cadence, training span)."""
MAX_SLO_MS = 60_000.0
"""Largest latency SLO: a minute. The DP discretises the SLO, so it bounds the DP's size."""
MAX_RPS = 1e6
"""Largest load: a million requests per second to one service."""
MAX_SECONDS = 86_400
"""Longest cold start, resize delay or stabilisation: a day."""
MAX_REPLICAS = 150_000
"""No Deployment can exceed the pods of a whole cluster: Kubernetes supports at most 150,000
(https://kubernetes.io/docs/setup/best-practices/cluster-large/)."""
MAX_CORES = 256
"""Most cores per replica: a pod runs on one node, and the largest nodes have a few hundred."""
MAX_BATCH = 1_024
"""Largest batch size of a fitted profile."""
MAX_RPS_SCALE = 1_000.0
"""Largest load multiplier of a backtest (stress scenarios go to 50x)."""
MAX_NODE_CORES = 1_024
"""Largest --node-cores (the largest cloud instances have a few hundred vCPUs)."""
MAX_NODES = 5_000
"""Largest --nodes/--max-nodes (Kubernetes' tested limit of nodes per cluster)."""
QUANTILES = (0.5, 0.9, 0.95, 0.99)
"""The quantiles the forecasters produce."""



class _OneLineErrors(TyperGroup):
    """Prints every usage error (bad flag value, missing or unknown option) as ONE line with
    the flag and the problem, like the commands' own errors, instead of a usage panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # pragma: no cover - embedding callers handle errors
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except ClickException as exc:
            _print_error(exc.format_message())
            sys.exit(exc.exit_code)
        except typer.Abort:
            _print_error("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
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


def _print_error(message: str) -> None:
    """``error: <message>`` on stderr, folded onto one line; the message is not markup."""
    line = " ".join(str(message).split())
    err_console.print("[bold red]error:[/] ", end="", highlight=False)
    err_console.print(line, highlight=False, soft_wrap=True, markup=False)


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as the one error line; return the Exit to raise (code 2: bad input)."""
    _print_error(message)
    return typer.Exit(code=code)


def _int(low: int, high: int):
    """A parser for an integer flag in [low, high]; refuses floats such as ``1e8`` or ``2.0``."""

    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise typer.BadParameter(f"{value!r} is not an integer")
        if isinstance(value, int):
            number = value
        else:
            text = str(value).strip()
            if not re.fullmatch(r"[+-]?\d+", text):
                raise typer.BadParameter(f"{text!r} is not an integer")
            if len(text) > 20:
                raise typer.BadParameter(f"{text[:20]}... is not in [{low}, {high}]")
            number = int(text)
        if not low <= number <= high:
            raise typer.BadParameter(f"{number} is not in [{low}, {high}]")
        return number

    return parse


def _float(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    """A parser for a finite float flag in [low, high]; ``low_open``/``high_open`` exclude the
    ends."""

    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise typer.BadParameter(f"{value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"{str(value)[:40]!r} is not a number") from None
        if not math.isfinite(number):
            raise typer.BadParameter(f"{value} is not a finite number")
        above = number > low if low_open else number >= low
        below = number < high if high_open else number <= high
        if not (above and below):
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            raise typer.BadParameter(f"{number:g} is not in {left}{low:g}, {high:g}{right}")
        return number

    return parse


def _name(value: str | None, flag: str, *, label: bool = False) -> None:
    """Refuse a Kubernetes object name that is not a DNS-1123 subdomain (or ``label``), by the
    service spec's one rule (:func:`actuator.spec.check_name`)."""
    if value is None:
        return
    from actuator.spec import DNS_LABEL, DNS_SUBDOMAIN, check_name

    try:
        check_name(value, flag, DNS_LABEL if label else DNS_SUBDOMAIN)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _step(value: str) -> None:
    """Refuse a --step that is not a duration of 1 s .. 1 day."""
    import pandas as pd

    from forecasting.cleaning import parse_step

    try:
        step = parse_step(value, source="--step")
    except BadInputError as exc:
        raise _fail(str(exc)) from None
    if not pd.Timedelta(seconds=1) <= step <= pd.Timedelta(days=1):
        raise _fail(f"--step: {value!r} is not between 1 s and 1 day")


def _names(text: str, flag: str, known) -> list[str]:
    """A comma-separated list of known names, or 'all'; empty or duplicate entries refused."""
    if text.strip() == "all":
        return list(known)
    names = [n.strip() for n in text.split(",")]
    if not names or any(n == "" for n in names):
        raise _fail(f"{flag}: {text!r} has an empty name; give a comma-separated list or 'all'")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise _fail(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    if len(set(names)) != len(names):
        raise _fail(f"{flag}: {text!r} names one twice")
    return names


def _check_files(*checks) -> None:
    """Run output-path checks (``(function, path, flag, kwargs)``); the first refusal fails."""
    try:
        for check, path, flag, kwargs in checks:
            if path is not None:
                check(path, flag, **kwargs)
    except BadInputError as exc:
        raise _fail(str(exc)) from None


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
    window: Annotated[
        int, typer.Option(parser=_int(4, MAX_WINDOW), help="Window length in steps.")
    ] = 1440,
    step: Annotated[str, typer.Option(help="Resample to this step (mean), e.g. 1min.")] = "1min",
    imfs: Annotated[
        int,
        typer.Option(
            parser=_int(1, MAX_IMFS), help="K: IMFs returned (lower rows merge into residue)."
        ),
    ] = 8,
    trials: Annotated[
        int, typer.Option(parser=_int(1, MAX_TRIALS), help="CEEMDAN noise realisations.")
    ] = 100,
    seed: Annotated[
        int, typer.Option(parser=_int(0, MAX_SEED), help="Seed of the noise realisations.")
    ] = 0,
    backend: Annotated[
        str, typer.Option(help="fast | pyemd (EMD-signal, the reference).")
    ] = "fast",
    max_gap: Annotated[
        int,
        typer.Option(
            parser=_int(0, MAX_WINDOW),
            help="Longest run of missing steps filled; longer is refused.",
        ),
    ] = 60,
    plot: Annotated[
        Path | None, typer.Option(help="Write a stacked plot (.png, .svg or .pdf) here.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write a JSON summary here.")
    ] = None,
) -> None:
    """CEEMDAN decomposition of the RPS window that ends at --at."""
    import json

    from forecasting.decomposition import BACKENDS
    from surgecast.offline.stages import check_output_file, decompose_trace, write_text_atomic

    if backend not in BACKENDS:
        raise _fail(f"--backend: unknown {backend!r}; choose one of {', '.join(BACKENDS)}")
    if window * trials > MAX_DECOMPOSE_POINT_TRIALS:
        raise _fail(
            f"--trials: {trials} trials on a --window of {window} points is more than "
            f"{MAX_DECOMPOSE_POINT_TRIALS:,} point-trials; lower one of them"
        )
    _step(step)
    _check_files(
        (check_output_file, plot, "--plot", {"suffixes": (".png", ".svg", ".pdf")}),
        (check_output_file, json_out, "--json", {}),
    )
    if plot is not None and json_out is not None and plot.resolve() == json_out.resolve():
        raise _fail(f"--json: {json_out} is also the --plot file")
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
        _write_plot(result, plot)
        console.print(f"plot: {plot}")
    if json_out is not None:
        payload = {k: v for k, v in summary.items() if k != "imfs_found_text"}
        write_text_atomic(json_out, json.dumps(payload, indent=2) + "\n")
        console.print(f"summary: {json_out}")


def _write_plot(result, plot: Path) -> None:
    """Render to a temporary file beside ``plot``, then rename: never a half-written picture."""
    import os
    import tempfile

    from surgecast.offline.plots import plot_decomposition

    fd, tmp = tempfile.mkstemp(prefix=f".{plot.name}.", suffix=plot.suffix, dir=plot.parent)
    os.close(fd)
    try:
        plot_decomposition(result, Path(tmp))
        os.replace(tmp, plot)
    finally:
        Path(tmp).unlink(missing_ok=True)


@app.command("forecast-report")
def forecast_report_cmd(
    trace: Annotated[
        str | None, typer.Argument(help="timestamp,rps CSV file, or a bundled trace name.")
    ] = None,
    step: Annotated[str, typer.Option(help="Resample to this step (mean).")] = "1min",
    horizon: Annotated[int, typer.Option(parser=_int(1, MAX_HORIZON), help="Forecast steps.")] = 15,
    test_days: Annotated[
        float,
        typer.Option(
            parser=_float(0, MAX_DAYS, low_open=True), help="Days at the end of the trace to test."
        ),
    ] = 2.0,
    every: Annotated[
        int, typer.Option(parser=_int(1, MAX_ORIGIN_EVERY), help="Steps between forecast origins.")
    ] = 5,
    refit_days: Annotated[
        float,
        typer.Option(parser=_float(0, MAX_DAYS, low_open=True), help="Refit cadence (days)."),
    ] = 1.0,
    models: Annotated[str, typer.Option(help="Comma-separated models, or 'all'.")] = "all",
    seed: Annotated[int, typer.Option(parser=_int(0, MAX_SEED), help="Seed of every model.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/forecast-report"),
) -> None:
    """Rolling-origin accuracy report of the hybrid and every baseline."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from forecasting.models import MODELS
    from surgecast.offline.stages import check_output_dir, forecast_report

    names = _names(models, "--models", list(MODELS))
    _step(step)
    _check_files((check_output_dir, out, "--out", {}))
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} origins"),
        TimeElapsedColumn(),
        console=err_console,
    )
    task = bar.add_task("rolling-origin forecasts", total=None)

    def progress(done: int, total: int) -> None:
        # Started with the first origin: an input refused before prints one line, no bar.
        if not bar.live.is_started:
            bar.start()
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
    finally:
        bar.stop()
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
    horizon: Annotated[int, typer.Option(parser=_int(1, MAX_HORIZON), help="Forecast steps.")] = 15,
    model: Annotated[str, typer.Option(help="Model name.")] = DEFAULT_MODEL,
    seed: Annotated[int, typer.Option(parser=_int(0, MAX_SEED), help="Seed.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write it as JSON here.")] = None,
) -> None:
    """Fit a model on the history before --at and print its forecast with quantiles."""
    import json

    from forecasting.models import MODELS
    from surgecast.offline.stages import check_output_file, forecast_at, write_text_atomic

    if model not in MODELS:
        raise _fail(f"--model: unknown {model!r}; choose from {', '.join(MODELS)}")
    _step(step)
    _check_files((check_output_file, json_out, "--json", {}))
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
        write_text_atomic(json_out, json.dumps(fc.to_dict(), indent=2) + "\n")
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
    slo_ms: Annotated[
        float,
        typer.Option(
            parser=_float(0, MAX_SLO_MS, low_open=True), help="End-to-end latency SLO (ms, p99)."
        ),
    ],
    rps: Annotated[
        float | None,
        typer.Option(
            parser=_float(0, MAX_RPS),
            help="Load to size for; with --forecast, the observed load.",
        ),
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
    quantile: Annotated[
        float,
        typer.Option(
            parser=_float(0, 1, low_open=True, high_open=True),
            help="Forecast quantile to size for, in (0, 1).",
        ),
    ] = 0.95,
    cold_start_s: Annotated[
        float | None,
        typer.Option(
            parser=_float(0, MAX_SECONDS),
            help="New replica start-up time (s); default: the service spec's cold_start_s.",
        ),
    ] = None,
    resize_s: Annotated[
        float | None,
        typer.Option(
            parser=_float(0, MAX_SECONDS),
            help="In-place resize time (s); default: the service spec's resize_s.",
        ),
    ] = None,
    stabilisation_s: Annotated[
        float | None,
        typer.Option(
            parser=_float(0, MAX_SECONDS),
            help="Time after a scale-up before a scale-in (s); default: the service spec's "
            "stabilisation_s.",
        ),
    ] = None,
    last_scale_up_at: Annotated[
        str | None, typer.Option(help="When capacity was last raised (ISO 8601, UTC).")
    ] = None,
    min_replicas: Annotated[
        int, typer.Option(parser=_int(1, MAX_REPLICAS), help="Lower bound on every stage.")
    ] = 1,
    max_replicas: Annotated[
        int | None,
        typer.Option(
            parser=_int(1, MAX_REPLICAS),
            help=f"Upper bound on every stage (default: {MAX_REPLICAS:,}, a cluster's pods).",
        ),
    ] = None,
    max_cores: Annotated[
        int | None,
        typer.Option(
            parser=_int(1, MAX_CORES),
            help="CSV profile only: cores limit (default: largest measured).",
        ),
    ] = None,
    max_batch: Annotated[
        int | None,
        typer.Option(
            parser=_int(1, MAX_BATCH),
            help="CSV profile only: batch limit (default: largest measured).",
        ),
    ] = None,
    service: Annotated[
        str | None, typer.Option(help="Service name (default: the profile's).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the Plan JSON here (with --forecast).")
    ] = None,
) -> None:
    """Replicas x cores x batch for a load (the two DPs), or a timed plan for a forecast.

    Exit code 1 when the answer is INFEASIBLE (no shape within the bounds meets the SLO for
    the load); the plan is still printed and, with --out, written, so its reasons can be read.
    """
    import json

    from surgecast.offline.stages import check_output_file, parse_utc, write_text_atomic
    from surgecast.planning import plan_stage

    if forecast_file is None:
        for flag, value in (
            ("--out", out),
            ("--last-scale-up-at", last_scale_up_at),
            ("--service", service),
        ):
            if value is not None:
                raise _fail(f"{flag}: only with --forecast (a plan ahead)")
    _name(service, "--service", label=True)
    _check_files((check_output_file, out, "--out", {}))
    try:
        if last_scale_up_at is not None:
            parse_utc(last_scale_up_at, "--last-scale-up-at")  # UTC only, as every time flag
        outcome = plan_stage(
            profile,
            slo_ms,
            rps=rps,
            forecast_file=forecast_file,
            replicas=replicas,
            cores=cores,
            batch=batch,
            quantile=quantile,
            cold_start_s=cold_start_s,
            resize_s=resize_s,
            stabilisation_s=stabilisation_s,
            last_scale_up_at=last_scale_up_at,
            min_replicas=min_replicas,
            max_replicas=MAX_REPLICAS if max_replicas is None else max_replicas,
            max_cores=max_cores,
            max_batch=max_batch,
            service=service,
            limits=(MAX_REPLICAS, MAX_CORES, MAX_BATCH),
        )
    except BadInputError as exc:
        raise _fail(str(exc)) from None
    if outcome.plan is None:
        _print_decisions(outcome.pipeline, outcome.decisions, rps, slo_ms)
    else:
        _print_plan(outcome.plan)
        if out is not None:
            write_text_atomic(out, json.dumps(outcome.plan.to_dict(), indent=2) + "\n")
            console.print(f"plan: {out}")
    if outcome.infeasible:
        raise _fail(outcome.infeasible, code=1)


def _print_decisions(pipeline, result, rps: float, slo_ms: float) -> None:
    table = Table(title=f"{pipeline.name}: {rps:g} rps, SLO {slo_ms:g} ms")
    for col in ("decision", "stage", "replicas", "cores", "batch", "latency ms", "capacity rps"):
        table.add_column(col, justify="left" if col in ("decision", "stage") else "right")
    rows = [("horizontal", result.horizontal), ("vertical", result.vertical)]
    if result.current is not None:
        rows.insert(0, ("current", result.current))
    for label, decision in rows:
        for i, (profile, config) in enumerate(zip(pipeline.stages, decision.stages, strict=True)):
            capacity = profile.capacity_rps(config)
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
    slo_ms: Annotated[
        float,
        typer.Option(
            parser=_float(0, MAX_SLO_MS, low_open=True), help="End-to-end latency SLO (ms)."
        ),
    ] = 750.0,
    policies: Annotated[
        str,
        typer.Option(
            help="Comma-separated policies, or 'all': hpa-50..hpa-90 (CPU HPA targets; 'hpa' is "
            "hpa-70), keda-50..keda-90 (KEDA Prometheus trigger, % of a pod's capacity), "
            "hpa-sweep and keda-sweep (all five), vpa, themis, surgecast, perfect-forecast, "
            "static-peak."
        ),
    ] = "all",
    start: Annotated[
        str | None, typer.Option(help="Start of the simulated span (UTC, ISO 8601).")
    ] = None,
    end: Annotated[str | None, typer.Option(help="End of the simulated span (UTC).")] = None,
    train_days: Annotated[
        float,
        typer.Option(
            parser=_float(0, MAX_DAYS, low_open=True),
            help="Days of history the forecaster is first fitted on.",
        ),
    ] = 4.0,
    refit_days: Annotated[
        float,
        typer.Option(
            parser=_float(0, MAX_DAYS, low_open=True), help="Refit cadence of the forecaster."
        ),
    ] = 1.0,
    every: Annotated[
        int, typer.Option(parser=_int(1, 1440), help="Minutes between surgecast's plans.")
    ] = 5,
    model: Annotated[str, typer.Option(help="Forecasting model surgecast uses.")] = DEFAULT_MODEL,
    quantile: Annotated[
        float,
        typer.Option(
            parser=_float(0, 1, low_open=True, high_open=True),
            help="Forecast quantile the cores are sized for: 0.5, 0.9, 0.95 or 0.99.",
        ),
    ] = 0.9,
    surge_quantile: Annotated[
        float,
        typer.Option(
            parser=_float(0, 1, low_open=True, high_open=True),
            help="Forecast quantile in-place resizing must reach: 0.5, 0.9, 0.95 or 0.99.",
        ),
    ] = 0.99,
    cold_start_s: Annotated[
        int,
        typer.Option(parser=_int(0, MAX_SECONDS), help="Seconds before a new replica serves."),
    ] = 30,
    resize_s: Annotated[
        int,
        typer.Option(
            parser=_int(0, MAX_SECONDS),
            help="Seconds an in-place resize takes (the median, with --resize-spread).",
        ),
    ] = 2,
    resize_spread: Annotated[
        float,
        typer.Option(
            parser=_float(0, 5),
            help="Sigma of the resize time's seeded log-normal (0: every resize takes "
            "--resize-s).",
        ),
    ] = 0.5,
    stabilisation_s: Annotated[
        int,
        typer.Option(
            parser=_int(0, MAX_SECONDS), help="No scale-in within this long after a scale-up."
        ),
    ] = 300,
    hpa_target: Annotated[
        float,
        typer.Option(
            parser=_float(0, 1, low_open=True),
            help="CPU target of the HPA above surgecast's planned floor, in (0, 1].",
        ),
    ] = 0.9,
    rps_scale: Annotated[
        float,
        typer.Option(
            parser=_float(0, MAX_RPS_SCALE, low_open=True), help="Multiply the trace's rate."
        ),
    ] = 1.0,
    max_replicas: Annotated[
        int | None,
        typer.Option(
            parser=_int(1, MAX_REPLICAS), help="Replica bound (default: none that binds)."
        ),
    ] = None,
    max_cores: Annotated[
        int | None,
        typer.Option(
            parser=_int(1, MAX_CORES), help="Cores-per-replica bound (default: the profile's)."
        ),
    ] = None,
    node_cores: Annotated[
        int,
        typer.Option(
            parser=_int(0, MAX_NODE_CORES),
            help="Allocatable cores per node: a resize beyond it is Infeasible, one without "
            "room Deferred (0: one node that never binds, every resize succeeds; for "
            "comparison).",
        ),
    ] = 16,
    nodes: Annotated[
        int | None,
        typer.Option(
            parser=_int(1, MAX_NODES),
            help="Nodes at the start (default: as many as the starting pods need).",
        ),
    ] = None,
    max_nodes: Annotated[
        int | None,
        typer.Option(
            parser=_int(1, MAX_NODES),
            help="Node pool ceiling; above --nodes a cluster autoscaler adds and removes nodes "
            "(default: 64; equal to --nodes: a fixed pool).",
        ),
    ] = None,
    node_provision_s: Annotated[
        int,
        typer.Option(
            parser=_int(0, MAX_SECONDS),
            help="Seconds until a node the autoscaler adds takes pods.",
        ),
    ] = 120,
    seed: Annotated[
        int, typer.Option(parser=_int(0, MAX_SEED), help="Seed of the arrivals and the model.")
    ] = 0,
    scenario: Annotated[
        str | None,
        typer.Option(
            help="Stress scenario reshaping the trace, history included: flash-crowd, "
            "event-then-quiet, slow-ramp or x3 (see the README)."
        ),
    ] = None,
    scenario_seed: Annotated[
        int, typer.Option(parser=_int(0, MAX_SEED), help="Seed of the scenario.")
    ] = 0,
    no_regret: Annotated[
        bool,
        typer.Option(
            "--no-regret",
            help="Gate surgecast's forecast by its skill over the last hour (the service "
            "spec's forecast.no_regret).",
        ),
    ] = False,
    routing: Annotated[
        str,
        typer.Option(
            help="How the Service spreads requests over the pods' own queues: round-robin (a "
            "Kubernetes Service), least-outstanding (a queue-aware router), or pooled (one "
            "queue per stage, perfect balancing, for comparison)."
        ),
    ] = "round-robin",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/backtest"),
    config: Annotated[
        Path | None,
        typer.Option(
            help="Services file (YAML, as run/apply/bridge read it): backtest one service as it "
            "gives it (profile, SLO, forecast, timings, guards, bridge, bounds replace the flags)."
        ),
    ] = None,
    service: Annotated[
        str | None, typer.Option(help="The service of --config (default: its only one).")
    ] = None,
) -> None:
    """Replay a trace through surgecast and today's autoscalers on a simulated cluster."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from forecasting.models import MODELS
    from surgecast.offline.backtest import POLICIES, POLICY_NAMES, BacktestSettings
    from surgecast.offline.scenarios import SCENARIOS
    from surgecast.offline.simulator import ROUTINGS
    from surgecast.offline.stages import backtest_trace, check_output_dir

    if policies.strip() == "all":
        names = POLICIES
    else:
        names = tuple(_names(policies, "--policies", list(POLICY_NAMES)))
    if node_cores == 0:
        for flag, value in (("--nodes", nodes), ("--max-nodes", max_nodes)):
            if value is not None:
                raise _fail(f"{flag}: not with --node-cores 0 (one node that never binds)")
    if scenario is not None and scenario not in SCENARIOS:
        raise _fail(f"--scenario: unknown {scenario!r}; choose from {', '.join(SCENARIOS)}")
    if routing not in ROUTINGS:
        raise _fail(f"--routing: unknown {routing!r}; choose from {', '.join(ROUTINGS)}")
    if model not in MODELS:
        raise _fail(f"--model: unknown {model!r}; choose from {', '.join(MODELS)}")
    for flag, value in (("--quantile", quantile), ("--surge-quantile", surge_quantile)):
        if value not in QUANTILES:
            raise _fail(f"{flag}: {value:g} is not one of {', '.join(map(str, QUANTILES))}")
    _check_files((check_output_dir, out, "--out", {}))
    if nodes is not None and max_nodes is not None and max_nodes < nodes:
        raise _fail(f"--max-nodes: {max_nodes} is fewer than --nodes {nodes}")
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
        resize_spread=resize_spread,
        stabilisation_s=stabilisation_s,
        rps_scale=rps_scale,
        scenario=scenario,
        scenario_seed=scenario_seed,
        no_regret=no_regret,
        hpa_target_above_plan=hpa_target,
        max_replicas=max_replicas,
        max_cores=max_cores,
        node_cores=node_cores or None,
        nodes=nodes,
        max_nodes=(
            None if node_cores == 0
            else max_nodes if max_nodes is not None
            else max(nodes or 0, BacktestSettings.max_nodes)
        ),
        node_provision_s=float(node_provision_s),
        seed=seed,
        routing=routing,
    )
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f} %"),
        TimeElapsedColumn(),
        console=err_console,
    )
    tasks: dict[str, int] = {}

    def progress(policy: str, done: int, total: int) -> None:
        # The bar starts with the first simulated policy, so an input refused before the
        # simulation prints its one error line and nothing else.
        if not tasks:
            bar.start()
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
            config=config,
            service=service,
        )
    except BadInputError as exc:
        raise _fail(str(exc)) from None
    finally:
        bar.stop()
    summary = run.summary
    requests = next(iter(summary["policies"].values()), {}).get("requests", 0)
    table = Table(
        title=(
            f"{summary['trace']}, {summary['profile']}, SLO {summary['slo_ms']:g} ms, "
            f"{summary['seconds_simulated'] / 3600:.1f} h from {summary['start']}, "
            f"{requests:,} requests"
        )
    )
    nodes_held = any("node_core_hours" in row for row in summary["policies"].values())
    columns = ("policy", "over SLO", "share", "bad min", "core-h",
               *(("node core-h",) if nodes_held else ()), "actions", "util")
    for col in columns:
        table.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    for name, row in summary["policies"].items():
        node_cell = (f"{row['node_core_hours']:.1f}" if "node_core_hours" in row else "-",)
        table.add_row(
            name,
            f"{row['violations']:,}",
            f"{100 * row['violation_rate']:.3f} %",
            f"{row['violation_minutes']:,}",
            f"{row['core_hours']:.1f}",
            *(node_cell if nodes_held else ()),
            f"{row['actions']:,}",
            f"{100 * row['mean_utilisation']:.0f} %",
        )
    console.print(table)
    if summary.get("scenario"):
        console.print(f"scenario: {summary['scenario']}", highlight=False, soft_wrap=True)
    bound = summary.get("lower_bound")
    if bound:
        ratios = ", ".join(
            f"{name} {row['core_hours_vs_lower_bound']:.2f}×"
            for name, row in summary["policies"].items()
            if name.startswith("surgecast") and "core_hours_vs_lower_bound" in row
        )
        console.print(
            f"lower bound: {bound['core_hours']:.1f} core-hours (the optimal shape every second, "
            f"no cold start){'; ' + ratios if ratios else ''}",
            highlight=False,
            soft_wrap=True,
        )
    from surgecast.offline.bars import STATE

    for bar in summary.get("bars", []):
        console.print(
            f"bar: {bar['bar']}: {STATE[bar['met']]} ({bar['detail']})",
            highlight=False,
            soft_wrap=True,
        )
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
        typer.Option(
            "--config",
            "--service-config",
            help="Service config (YAML, the file `surgecast run` reads): Deployments, bounds, "
            "mode, limits. Required for --active; without it the run is shadow-only (dry runs "
            "and a record).",
        ),
    ] = None,
    kubeconfig: Annotated[
        str | None,
        typer.Option(help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config, in-cluster)."),
    ] = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context.")] = None,
    active: Annotated[
        bool,
        typer.Option(
            "--active",
            help="Patch the cluster for the plan's service (needs --config; default: "
            "shadow, dry runs only). Other services in the config keep their mode.",
        ),
    ] = False,
    now: Annotated[
        str | None, typer.Option(help="The run's time (ISO 8601, UTC). Default: now.")
    ] = None,
    artifacts: Annotated[
        Path, typer.Option(help="Artifact store root; records go to decisions/<service>/.")
    ] = Path("artifacts"),
    namespace: Annotated[
        str | None,
        typer.Option(help="Without --config: the Deployment's namespace [default]."),
    ] = None,
    deployment: Annotated[
        str | None,
        typer.Option(help="Without --config: the Deployment (default: plan's service)."),
    ] = None,
    container: Annotated[
        str | None,
        typer.Option(help="Without --config: the container to resize [server]."),
    ] = None,
) -> None:
    """Apply a plan's due steps to the cluster through the guards; one line per change."""
    from surgecast.live.actuation import apply_plan_file
    from surgecast.offline.stages import check_output_dir, parse_utc

    if active and service_config is None:
        raise _fail(
            "--active: needs --config (the allow-list, bounds and step limits of the "
            "service); without it apply runs in shadow mode only"
        )
    if service_config is not None:
        for flag, value in (
            ("--namespace", namespace),
            ("--deployment", deployment),
            ("--container", container),
        ):
            if value is not None:
                raise _fail(f"{flag}: only without --config (the config names it)")
    _name(namespace, "--namespace", label=True)
    _name(deployment, "--deployment")
    _name(container, "--container", label=True)
    if context is not None and not context.strip():
        raise _fail("--context: empty context name")
    _check_files((check_output_dir, artifacts, "--artifacts", {}))
    try:
        if now is not None:
            parse_utc(now, "--now")
    except BadInputError as exc:
        raise _fail(str(exc)) from None
    try:
        result = apply_plan_file(
            plan_file,
            service_config=service_config,
            namespace=namespace or "default",
            deployment=deployment,
            container=container or "server",
            kubeconfig=kubeconfig,
            context=context,
            active=active,
            now=now,
            artifacts=artifacts,
        )
    except BadInputError as exc:
        raise _fail(str(exc)) from None
    record = result.record
    if result.switched_active:
        console.print(
            f"{record.service}: --active: this run acts for {record.service} only "
            f"(its config says {result.switched_active}); other services keep their mode",
            highlight=False,
            soft_wrap=True,
        )
    if record.refused:
        console.print(
            f"{record.service}: refused: {record.refused}", highlight=False, soft_wrap=True
        )
    for workload in record.workloads:
        for note in workload.bound_by:
            console.print(f"{workload.deployment}: {note}", highlight=False, soft_wrap=True)
    for change in record.changes:
        console.print(change.line(), highlight=False, soft_wrap=True)
    if not record.changes and not record.refused:
        step = record.chosen_step
        what = f"{step['kind']} step due" if step else "no plan step due"
        console.print(
            f"{record.service}: {record.mode}: {what}; nothing to change", highlight=False
        )
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

    from surgecast.live.pipeline import prune as prune_store
    from surgecast.live.pipeline import run_once
    from surgecast.offline.stages import parse_utc
    from surgecast.settings import load_settings

    if now is not None and not once:
        raise _fail("--now: only with --once (a loop takes its time from the clock)")
    try:
        when = parse_utc(now, "--now") if now is not None else None
        settings = load_settings(config)
        for name in service or []:
            settings.service(name)
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


@app.command("bridge")
def bridge_cmd(
    config: Annotated[
        Path, typer.Option(help="Service config (YAML), e.g. data/services.example.yaml.")
    ],
    service: Annotated[
        list[str] | None, typer.Option(help="Only this service (repeatable).")
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="One tick for every service, then exit.")
    ] = False,
    interval: Annotated[
        float | None,
        typer.Option(help="Seconds between ticks, for every service (default: bridge.interval_s)."),
    ] = None,
) -> None:
    """The in-place bridge controller: resize ready pods inside the plan's envelope.

    Every few seconds, per service: read the load from Prometheus, resize the ready pods in
    place when they do not carry it (down again once the plan's cores have carried it for a
    while). Leader election per service; SIGTERM releases the Leases and exits.
    """
    from actuator.errors import ActuatorInputError
    from surgecast.live.bridge import run_bridge

    def show(result) -> None:
        if result.record is not None and (once or result.written):
            console.print(f"{result.service}: {result.record.summary()}", highlight=False,
                          soft_wrap=True)

    try:
        if config.exists() and not config.is_file():  # a FIFO would block the read
            raise BadInputError(f"{config}: not a regular file (--config needs a YAML file)")
        run_bridge(config, services=service, once=once, interval_s=interval, on_tick=show)
    except (BadInputError, ActuatorInputError) as exc:
        raise _fail(str(exc)) from None


@app.command("rbac")
def rbac_cmd(
    config: Annotated[
        Path, typer.Option(help="Service config (YAML), e.g. data/services.example.yaml.")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Write the manifests here (default: standard output).")
    ] = None,
    account: Annotated[
        str, typer.Option(help="The actuator's ServiceAccount.")
    ] = "surgecast-actuator",
) -> None:
    """Least-privilege RBAC for the services in the config: apply it with kubectl.

    Deployments, scale subresources, HPAs, Leases and the kill switch are scoped with
    resourceNames to what the config names; nothing outside the allow-list can be patched.
    """
    import yaml

    from actuator.rbac import rbac_manifests
    from surgecast.offline.stages import check_output_file, write_text_atomic
    from surgecast.settings import load_settings

    try:
        settings = load_settings(config)
        if out is not None:
            check_output_file(out, "--out")
        docs = rbac_manifests(
            [settings.actuator_config(name) for name in settings.names],
            account=account,
            bridge=True,
        )
    except (BadInputError, ValueError) as exc:
        raise _fail(str(exc)) from None
    text = (
        f"# Generated by `surgecast rbac --config {config.name}`: the actuator may touch only\n"
        "# the workloads this config names.\n" + yaml.safe_dump_all(docs, sort_keys=False)
    )
    if out is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(out, text)
        console.print(f"{len(docs)} manifests written to {out}", highlight=False)
