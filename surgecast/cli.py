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


def run() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
