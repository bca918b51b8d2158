"""A corpus of bad command-line inputs: every one is refused quickly, in one line, writing nothing.

The corpus is generated: per flag, values out of range, NaN, infinities, negatives, huge numbers,
empty and wrong-typed text; per file kind (trace CSV, forecast JSON, plan JSON, profile,
measurements, service config, kubeconfig), files that are malformed, truncated, empty, binary,
oversized, extreme, wrongly typed, missing fields, directories, FIFOs or absent; and output paths
that are directories or sit in missing folders. It also holds inputs that look plausible but are
wrong (a percentage for a fraction, 0 replicas, a load of 10^12 rps) and must be refused.

Each case runs in-process through typer's CliRunner, in an empty working folder, under a time
budget enforced with SIGALRM (a hang fails the case instead of blocking the suite), and must:
exit with code 2 (or 1 where documented: an INFEASIBLE plan), print exactly one ``error:`` line
on stderr that names the input, no traceback, and leave no file behind.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass

import pytest
import typer.main
import typer.testing
from typer.testing import CliRunner

from surgecast.cli import app

BUDGET_S = 10
"""Per-case time budget (s). Every case is refused before any expensive work; the slowest read
the bundled 22-day trace first (under a second)."""

GOOD_AT = "2024-01-03T00:00:00Z"
NOW = "2024-01-08T07:31:00Z"


@dataclass(frozen=True)
class Case:
    """One bad input: ``args`` (``{name}`` = a file of the corpus, ``{tmp}`` = the empty working
    folder), the exit code, and the text the error line must contain (``{name}`` as well)."""

    id: str
    args: tuple[str, ...]
    needle: str
    code: int = 2


CASES: list[Case] = []


def case(id_: str, args, needle: str, code: int = 2) -> None:
    CASES.append(Case(id_, tuple(args), needle, code))


# --------------------------------------------------------------------------------------------
# flags: every numeric flag of every command gets the generic bad values and its own ones

NOT_A_NUMBER = ["nan", "NaN", "inf", "-inf", "", "abc", "1e400", "0x10", "true", "--"]
NOT_AN_INTEGER = ["1.5", "1e8", "nan", "inf", "", "abc", "99999999999999999999999", "2.0"]

DECOMPOSE = ["decompose", "--at", GOOD_AT]
FORECAST = ["forecast", "{trace_short}"]
REPORT = ["forecast-report", "{trace_short}", "--out", "{tmp}/report"]
PLAN = ["plan", "--profile", "resnet18"]
BACKTEST = ["backtest", "{trace_short}", "--out", "{tmp}/bt"]

INT_FLAGS = {
    # command prefix, flag, values out of range (beyond the generic non-integers)
    ("decompose", "--window"): (DECOMPOSE, ["-5", "0", "3", "100000", "2147483648"]),
    ("decompose", "--imfs"): (DECOMPOSE, ["-1", "0", "17", "100000"]),
    ("decompose", "--trials"): (DECOMPOSE, ["-1", "0", "1001", "100000000"]),
    ("decompose", "--seed"): (DECOMPOSE, ["-1", "2147483648", "-99999999999"]),
    ("decompose", "--max-gap"): (DECOMPOSE, ["-1", "1000000"]),
    ("forecast", "--horizon"): (FORECAST, ["-5", "0", "1441", "1000000"]),
    ("forecast", "--seed"): (FORECAST, ["-1", "4294967296"]),
    ("forecast-report", "--horizon"): (REPORT, ["-5", "0", "100000"]),
    ("forecast-report", "--every"): (REPORT, ["-1", "0", "10081"]),
    ("forecast-report", "--seed"): (REPORT, ["-1"]),
    ("plan", "--min-replicas"): ([*PLAN, "--slo-ms", "750", "--rps", "10"], ["0", "-3", "150001"]),
    ("plan", "--max-replicas"): ([*PLAN, "--slo-ms", "750", "--rps", "10"], ["0", "-1", "10**9"]),
    ("plan", "--max-cores"): ([*PLAN, "--slo-ms", "750", "--rps", "10"], ["0", "257", "-2"]),
    ("plan", "--max-batch"): ([*PLAN, "--slo-ms", "750", "--rps", "10"], ["0", "1025", "-2"]),
    ("backtest", "--every"): (BACKTEST, ["0", "-5", "1441"]),
    ("backtest", "--cold-start-s"): (BACKTEST, ["-1", "86401", "1000000000"]),
    ("backtest", "--resize-s"): (BACKTEST, ["-1", "86401"]),
    ("backtest", "--stabilisation-s"): (BACKTEST, ["-1", "10000000"]),
    ("backtest", "--max-replicas"): (BACKTEST, ["0", "-1", "150001"]),
    ("backtest", "--max-cores"): (BACKTEST, ["0", "-1", "257"]),
    ("backtest", "--seed"): (BACKTEST, ["-1", "2147483648"]),
}
FLOAT_FLAGS = {
    ("forecast-report", "--test-days"): (REPORT, ["0", "-1", "367", "1e12"]),
    ("forecast-report", "--refit-days"): (REPORT, ["0", "-0.5", "1000"]),
    ("plan", "--slo-ms"): (["plan", "--profile", "resnet18", "--rps", "10"], ["0", "-3", "1e9"]),
    ("plan", "--rps"): ([*PLAN, "--slo-ms", "750"], ["-1", "1e12", "1000001"]),
    ("plan", "--quantile"): ([*PLAN, "--slo-ms", "750", "--rps", "1"], ["0", "1", "95", "-0.5"]),
    ("plan", "--cold-start-s"): ([*PLAN, "--slo-ms", "750", "--rps", "1"], ["-1", "86401"]),
    ("plan", "--resize-s"): ([*PLAN, "--slo-ms", "750", "--rps", "1"], ["-1", "1e9"]),
    ("plan", "--stabilisation-s"): ([*PLAN, "--slo-ms", "750", "--rps", "1"], ["-0.1", "1e7"]),
    ("backtest", "--slo-ms"): (BACKTEST, ["0", "-750", "1e9"]),
    ("backtest", "--train-days"): (BACKTEST, ["0", "-4", "400"]),
    ("backtest", "--refit-days"): (BACKTEST, ["0", "-1", "400"]),
    ("backtest", "--quantile"): (BACKTEST, ["0", "1", "90", "0.8"]),
    ("backtest", "--surge-quantile"): (BACKTEST, ["0", "99", "0.999"]),
    ("backtest", "--hpa-target"): (BACKTEST, ["0", "-0.5", "90", "1.01"]),
    ("backtest", "--rps-scale"): (BACKTEST, ["0", "-1", "1e12", "1001"]),
}
for (command, flag), (prefix, values) in INT_FLAGS.items():
    for value in dict.fromkeys(values + NOT_AN_INTEGER):
        case(f"{command} {flag}={value!r}", [*prefix, f"{flag}={value}"], f"'{flag}'")
for (command, flag), (prefix, values) in FLOAT_FLAGS.items():
    for value in dict.fromkeys(values + NOT_A_NUMBER):
        case(f"{command} {flag}={value!r}", [*prefix, f"{flag}={value}"], flag)

# text flags: times, steps, names, choices
BAD_TIMES = [
    "yesterday",
    "now",
    "2024-01-05T00:00:00",
    "2024-01-05T00:00:00+02:00",
    "9999-01-01T00:00:00Z",
    "1900-01-01T00:00:00Z",
    "2024-13-01T00:00:00Z",
    "",
    "nan",
    "NaT",
]
for value in BAD_TIMES:
    case(f"decompose --at {value!r}", ["decompose", f"--at={value}"], "--at")
    case(f"forecast --at {value!r}", [*FORECAST, f"--at={value}"], "--at")
    case(f"backtest --start {value!r}", [*BACKTEST, f"--start={value}"], "--start")
    case(f"backtest --end {value!r}", [*BACKTEST, f"--end={value}"], "--end")
    case(f"apply --now {value!r}", ["apply", "{plan_good}", f"--now={value}"], "--now")
    case(
        f"run --now {value!r}",
        ["run", "--config", "{tmp}/x.yaml", "--once", f"--now={value}"],
        "--now",
    )
    case(
        f"plan --last-scale-up-at {value!r}",
        [*PLAN, "--slo-ms", "750", "--forecast", "{forecast_good}", f"--last-scale-up-at={value}"],
        "--last-scale-up-at",
    )
for value in ["0s", "-1min", "abc", "", "1ns", "2days", "nan", "1e400s"]:
    case(f"decompose --step {value!r}", ["decompose", f"--step={value}"], "--step")
    case(f"forecast --step {value!r}", [*FORECAST, f"--step={value}"], "--step")
    case(f"forecast-report --step {value!r}", [*REPORT, f"--step={value}"], "--step")
for value in ["matlab", "", "FAST", "fast,pyemd"]:
    case(f"decompose --backend {value!r}", ["decompose", f"--backend={value}"], "--backend")
for value in [",", "", " ", "naive,", ",naive", "naive,naive", "arima", "all,naive", "NAIVE"]:
    case(f"forecast-report --models {value!r}", [*REPORT, f"--models={value}"], "--models")
for value in ["", "prophet", "Hybrid", "naive,hybrid"]:
    case(f"forecast --model {value!r}", [*FORECAST, f"--model={value}"], "--model")
    case(f"backtest --model {value!r}", [*BACKTEST, f"--model={value}"], "--model")
for value in [",", "", "hpa,hpa", "k8s", "hpa,", "ALL"]:
    case(f"backtest --policies {value!r}", [*BACKTEST, f"--policies={value}"], "--policies")
for value in ["", "random", "ROUND-ROBIN", "round-robin,pooled"]:
    case(f"backtest --routing {value!r}", [*BACKTEST, f"--routing={value}"], "--routing")
for value in ["-1", "1.5", "", "16,16", "1025"]:
    case(f"backtest --node-cores {value!r}", [*BACKTEST, f"--node-cores={value}"],
         "--node-cores")
for flag in ("--nodes", "--max-nodes"):  # one node that never binds has no pool to size
    case(f"backtest --node-cores 0 {flag}", [*BACKTEST, "--node-cores=0", f"{flag}=2"], flag)
case("backtest --max-nodes below --nodes", [*BACKTEST, "--nodes=4", "--max-nodes=2"],
     "--max-nodes")
for flag in ("--replicas", "--cores", "--batch"):
    for value in ["0", "-1", "1.5", "abc", "", "1,2", "1,,1", "1e3", "9999999999", "nan"]:
        case(
            f"plan {flag} {value!r}",
            [*PLAN, "--slo-ms", "750", "--rps", "10", f"{flag}={value}"],
            flag,
        )
for value in ["Payments", "../../..", "a_b", "", "-x", "x" * 64, "a/b"]:
    case(
        f"plan --service {value!r}",
        [*PLAN, "--slo-ms", "750", "--forecast", "{forecast_good}", f"--service={value}"],
        "--service",
    )
    case(
        f"apply --namespace {value!r}",
        ["apply", "{plan_good}", f"--namespace={value}"],
        "--namespace",
    )
    case(
        f"apply --container {value!r}",
        ["apply", "{plan_good}", f"--container={value}"],
        "--container",
    )
for value in ["../../etc", "UPPER", "", "a_b", "-x"]:
    case(
        f"apply --deployment {value!r}",
        ["apply", "{plan_good}", f"--deployment={value}"],
        "--deployment",
    )
# unknown options, missing required ones, extra arguments
case("decompose unknown option", ["decompose", "--imf", "3"], "--imf")
case("plan without --profile", ["plan", "--slo-ms", "750", "--rps", "1"], "--profile")
case("plan without --slo-ms", ["plan", "--profile", "resnet18", "--rps", "1"], "--slo-ms")
case("plan without --rps or --forecast", [*PLAN, "--slo-ms", "750"], "--rps")
case(
    "plan --out without --forecast",
    [*PLAN, "--slo-ms", "750", "--rps", "1", "--out", "{tmp}/p.json"],
    "--out",
)
case(
    "plan --service without --forecast",
    [*PLAN, "--slo-ms", "750", "--rps", "1", "--service", "x"],
    "--service",
)
case(
    "plan --max-replicas below --min-replicas",
    [*PLAN, "--slo-ms", "750", "--rps", "1", "--min-replicas", "5", "--max-replicas", "2"],
    "--max-replicas",
)
case("apply without a plan", ["apply"], "plan_file")
case("forecast extra argument", [*FORECAST, "extra"], "extra")
case("run without --config", ["run", "--once"], "--config")
case("run --now without --once", ["run", "--config", "{tmp}/x.yaml", "--now", NOW], "--now")
case("unknown command", ["deploy"], "deploy")

# --------------------------------------------------------------------------------------------
# wrong but plausible: accepted before, refused now (or exit 1 where the answer is INFEASIBLE)

case("plan 10^12 rps", [*PLAN, "--slo-ms", "750", "--rps", "1e12"], "--rps")
case("plan SLO of 1 ms is infeasible", [*PLAN, "--slo-ms", "1", "--rps", "100"], "INFEASIBLE", 1)
case(
    "plan 10^6 rps in 5 replicas is infeasible",
    [*PLAN, "--slo-ms", "750", "--rps", "1000000", "--max-replicas", "5"],
    "INFEASIBLE",
    1,
)
case(
    "plan a 95 % quantile written as 95",
    [*PLAN, "--slo-ms", "750", "--rps", "1", "--quantile", "95"],
    "--quantile",
)
case(
    "plan from a forecast with an impossible SLO",
    [*PLAN, "--slo-ms", "2", "--forecast", "{forecast_good}", "--out", "{tmp}/plan.json"],
    "INFEASIBLE",
    1,
)
case("forecast horizon 0", [*FORECAST, "--horizon", "0"], "--horizon")
case("decompose 100000 IMFs", ["decompose", "--imfs", "100000"], "--imfs")
case(
    "decompose window x trials too large",
    ["decompose", "--window", "20000", "--trials", "1000"],
    "--trials",
)
case("decompose --at before the trace", ["decompose", "--at", "2023-12-01T00:00:00Z"], "2023-12-01")
case(
    "decompose --window longer than the history",
    ["decompose", "--window", "20160", "--at", GOOD_AT],
    "too short",
)
case("forecast --at after the trace", [*FORECAST, "--at", "2030-01-01T00:00:00Z"], "--at")
case(
    "backtest --end before --start",
    [*BACKTEST, "--start", "2024-01-03T00:00:00Z", "--end", "2024-01-02T00:00:00Z"],
    "--end",
)
case(
    "backtest --start outside the trace", [*BACKTEST, "--start", "2030-01-01T00:00:00Z"], "--start"
)
case(
    "backtest peak x scale too large",
    ["backtest", "{trace_busy}", "--out", "{tmp}/bt", "--rps-scale", "500"],
    "--rps-scale",
)
case("apply --active without --config", ["apply", "{plan_good}", "--active"], "--active")
case(
    "apply --deployment with --config",
    ["apply", "{plan_good}", "--config", "{svc_good}", "--deployment", "x"],
    "--deployment",
)

# --------------------------------------------------------------------------------------------
# files: each kind, broken every way; {name} is created by the ``corpus`` fixture

TRACE_FILES = {
    "trace_empty": b"",
    "trace_header_only": b"timestamp,rps\n",
    "trace_no_header": b"2024-01-01T00:00:00Z,1\n2024-01-01T00:01:00Z,2\n",
    "trace_wrong_header": b"time,value\n2024-01-01T00:00:00Z,1\n",
    "trace_binary": bytes(range(256)) * 8,
    "trace_nul": b"timestamp,rps\n2024-01-01T00:00:00Z,1\x00\x00\n",
    "trace_latin1": "timestamp,rps\n2024-01-01T00:00:00Z,1\nd\xe9j\xe0,2\n".encode("latin-1"),
    "trace_negative": b"timestamp,rps\n2024-01-01T00:00:00Z,1\n2024-01-01T00:01:00Z,-3\n",
    "trace_inf": b"timestamp,rps\n2024-01-01T00:00:00Z,1\n2024-01-01T00:01:00Z,inf\n",
    "trace_huge_value": b"timestamp,rps\n2024-01-01T00:00:00Z,1\n2024-01-01T00:01:00Z,1e400\n",
    "trace_text_rps": b"timestamp,rps\n2024-01-01T00:00:00Z,1\n2024-01-01T00:01:00Z,lots\n",
    "trace_thousands": b'timestamp,rps\n2024-01-01T00:00:00Z,"1,000"\n2024-01-01T00:01:00Z,2\n',
    "trace_unsorted": b"timestamp,rps\n2024-01-01T00:01:00Z,1\n2024-01-01T00:00:00Z,2\n",
    "trace_duplicate": b"timestamp,rps\n2024-01-01T00:00:00Z,1\n2024-01-01T00:00:00Z,2\n",
    "trace_naive": b"timestamp,rps\n2024-01-01T00:00:00,1\n2024-01-01T00:01:00,2\n",
    "trace_offset": b"timestamp,rps\n2024-01-01T00:00:00+01:00,1\n2024-01-01T00:01:00+01:00,2\n",
    "trace_year_9999": b"timestamp,rps\n2024-01-01T00:00:00Z,1\n9999-01-01T00:01:00Z,2\n",
    "trace_year_1900": b"timestamp,rps\n1900-01-01T00:00:00Z,1\n1900-01-01T00:01:00Z,2\n",
    "trace_epoch_numbers": b"timestamp,rps\n1704067200,1\n1704067260,2\n",
    "trace_one_row": b"timestamp,rps\n2024-01-01T00:00:00Z,1\n",
    "trace_truncated": b"timestamp,rps\n2024-01-01T00:00:00Z,1\n2024-01-01T00:0",
    "trace_sparse": (
        b"timestamp,rps\n2024-01-01T00:00:00Z,1\n2024-01-01T00:00:01Z,1\n"
        b"2024-01-01T00:00:02Z,1\n2030-01-01T00:00:00Z,1\n"
    ),
    "trace_off_grid": (
        b"timestamp,rps\n2024-01-01T00:00:00Z,1\n2024-01-01T00:01:00Z,1\n"
        b"2024-01-01T00:02:00Z,1\n2024-01-01T00:02:30Z,1\n"
    ),
    "trace_all_nan": b"timestamp,rps\n"
    + b"".join(f"2024-01-01T00:{m:02d}:00Z,nan\n".encode() for m in range(60)),
}
for name in [*TRACE_FILES, "trace_dir", "trace_fifo", "trace_missing", "trace_oversized"]:
    needle = "{" + name + "}"
    case(f"decompose {name}", ["decompose", "{" + name + "}"], needle)
    case(f"forecast {name}", ["forecast", "{" + name + "}"], needle)
for name in ["trace_negative", "trace_year_9999", "trace_binary", "trace_fifo"]:
    case(
        f"forecast-report {name}",
        ["forecast-report", "{" + name + "}", "--out", "{tmp}/r"],
        "{" + name + "}",
    )
    case(f"backtest {name}", ["backtest", "{" + name + "}", "--out", "{tmp}/b"], "{" + name + "}")
case(
    "decompose a bundled name that does not exist", ["decompose", "no_such_trace"], "no_such_trace"
)
case("decompose --step finer than the trace", ["decompose", "--step", "10s"], "step")

FORECAST_GOOD = {
    "model": "hybrid",
    "cutoff": "2024-01-08T07:30:00Z",
    "step_s": 60.0,
    "fallback": None,
    "ds": [f"2024-01-08T07:{31 + h:02d}:00Z" for h in range(5)],
    "mean": [50.0, 60.0, 70.0, 60.0, 50.0],
    "quantiles": {"0.5": [45.0, 55.0, 65.0, 55.0, 45.0], "0.95": [60.0, 80.0, 90.0, 80.0, 60.0]},
}


def _mutate(base: dict, key: str, value) -> dict:
    data = json.loads(json.dumps(base))
    if value is _DELETE:
        del data[key]
    else:
        data[key] = value
    return data


_DELETE = object()
FORECAST_MUTATIONS = {
    **{
        f"fc_no_{k}": (k, _DELETE) for k in ("model", "cutoff", "step_s", "ds", "mean", "quantiles")
    },
    "fc_extra_key": ("horizon", 5),
    "fc_model_number": ("model", 7),
    "fc_model_empty": ("model", ""),
    "fc_cutoff_naive": ("cutoff", "2024-01-08T07:30:00"),
    "fc_cutoff_9999": ("cutoff", "9999-01-08T07:30:00Z"),
    "fc_cutoff_number": ("cutoff", 1704699000),
    "fc_step_zero": ("step_s", 0),
    "fc_step_negative": ("step_s", -60),
    "fc_step_text": ("step_s", "60"),
    "fc_step_bool": ("step_s", True),
    "fc_step_huge": ("step_s", 1e12),
    "fc_ds_off_grid": ("ds", [f"2024-01-08T07:{32 + h:02d}:00Z" for h in range(5)]),
    "fc_ds_short": ("ds", FORECAST_GOOD["ds"][:3]),
    "fc_ds_empty": ("ds", []),
    "fc_ds_numbers": ("ds", [1, 2, 3, 4, 5]),
    "fc_mean_negative": ("mean", [50.0, -1.0, 70.0, 60.0, 50.0]),
    "fc_mean_null": ("mean", [50.0, None, 70.0, 60.0, 50.0]),
    "fc_mean_text": ("mean", ["50", "60", "70", "60", "50"]),
    "fc_mean_huge": ("mean", [1e300] * 5),
    "fc_mean_long": ("mean", [1.0] * 6),
    "fc_mean_object": ("mean", {"a": 1}),
    "fc_quantiles_empty": ("quantiles", {}),
    "fc_quantiles_list": ("quantiles", [[1.0] * 5]),
    "fc_quantile_key_text": ("quantiles", {"high": [1.0] * 5}),
    "fc_quantile_key_95": ("quantiles", {"95": [1.0] * 5}),
    "fc_quantile_key_one": ("quantiles", {"1.0": [1.0] * 5}),
    "fc_quantiles_cross": ("quantiles", {"0.5": [90.0] * 5, "0.95": [60.0] * 5}),
    "fc_quantile_short": ("quantiles", {"0.95": [1.0] * 4}),
}
RAW_JSON = {
    "json_empty": b"",
    "json_truncated": b'{"model": "hybrid", "cutoff": "2024-01-08T07:30',
    "json_binary": bytes(range(256)),
    "json_list": b"[1, 2, 3]",
    "json_null": b"null",
    "json_deep": b"[" * 100_000 + b"]" * 100_000,
    "json_nan_top": b"NaN",
}
for name in [
    *FORECAST_MUTATIONS,
    *RAW_JSON,
    "trace_dir",
    "trace_fifo",
    "fc_missing",
    "fc_oversized",
    "fc_nan",
]:
    case(
        f"plan --forecast {name}",
        [*PLAN, "--slo-ms", "750", "--forecast", "{" + name + "}", "--out", "{tmp}/plan.json"],
        "{" + name + "}",
    )

PLAN_GOOD = {
    "service": "resnet18",
    "cutoff": "2024-01-08T07:30:00Z",
    "quantile": 0.95,
    "slo_ms": 750.0,
    "stage_names": ["resnet18"],
    "steps": [
        {
            "effective_at": "2024-01-08T07:35:00Z",
            "apply_at": "2024-01-08T07:34:30Z",
            "replicas": [4],
            "cores": [2],
            "batch": [1],
            "reason": "240 rps forecast at 07:35",
            "expected_latency_ms": 98.1,
            "capacity_rps": 260.0,
            "kind": "scale-out",
            "load_rps": 240.0,
            "feasible": True,
        }
    ],
}
PLAN_MUTATIONS = {
    "plan_service_traversal": ("service", "../../.."),
    "plan_service_upper": ("service", "Payments"),
    "plan_service_empty": ("service", ""),
    "plan_service_number": ("service", 42),
    "plan_service_slash": ("service", "a/b"),
    "plan_service_long": ("service", "a" * 64),
    "plan_quantile_null": ("quantile", None),
    "plan_quantile_text": ("quantile", "0.95"),
    "plan_quantile_percent": ("quantile", 95),
    "plan_quantile_bool": ("quantile", True),
    "plan_slo_negative": ("slo_ms", -750),
    "plan_slo_null": ("slo_ms", None),
    "plan_cutoff_naive": ("cutoff", "2024-01-08T07:30:00"),
    "plan_cutoff_9999": ("cutoff", "9999-12-31T00:00:00Z"),
    "plan_cutoff_number": ("cutoff", 0),
    "plan_cutoff_garbage": ("cutoff", "soon"),
    "plan_steps_object": ("steps", {"a": 1}),
    "plan_steps_null": ("steps", None),
    "plan_steps_numbers": ("steps", [1, 2]),
    "plan_stage_names_traversal": ("stage_names", ["../x"]),
    "plan_stage_names_two": ("stage_names", ["a", "b"]),
    "plan_stage_names_text": ("stage_names", "resnet18"),
    "plan_extra_key": ("mode", "active"),
    **{f"plan_no_{k}": (k, _DELETE) for k in ("service", "cutoff", "steps", "quantile", "slo_ms")},
}
STEP_MUTATIONS = {
    "step_replicas_float": ("replicas", [1.5]),
    "step_replicas_zero": ("replicas", [0]),
    "step_replicas_negative": ("replicas", [-1]),
    "step_replicas_bool": ("replicas", [True]),
    "step_replicas_text": ("replicas", ["2"]),
    "step_replicas_huge": ("replicas", [10**12]),
    "step_replicas_scalar": ("replicas", 4),
    "step_replicas_empty": ("replicas", []),
    "step_cores_zero": ("cores", [0]),
    "step_cores_huge": ("cores", [100000]),
    "step_batch_two_stages": ("batch", [1, 1]),
    "step_kind_unknown": ("kind", "explode"),
    "step_kind_null": ("kind", None),
    "step_apply_after_effective": ("apply_at", "2024-01-08T07:36:00Z"),
    "step_effective_naive": ("effective_at", "2024-01-08T07:35:00"),
    "step_effective_9999": ("effective_at", "9999-01-08T07:35:00Z"),
    "step_effective_number": ("effective_at", 1704699300),
    "step_feasible_text": ("feasible", "yes"),
    "step_capacity_negative": ("capacity_rps", -1),
    "step_capacity_text": ("capacity_rps", "260"),
    "step_load_null": ("load_rps", None),
    "step_reason_number": ("reason", 5),
    "step_extra_key": ("delta", 2),
    "step_no_replicas": ("replicas", _DELETE),
    "step_no_kind": ("kind", _DELETE),
}
for name in [
    *PLAN_MUTATIONS,
    *STEP_MUTATIONS,
    *RAW_JSON,
    "trace_dir",
    "trace_fifo",
    "plan_missing",
    "plan_oversized",
    "plan_nan_quantile",
    "plan_inf_slo",
]:
    case(
        f"apply {name}",
        ["apply", "{" + name + "}", "--now", NOW, "--artifacts", "{tmp}/a"],
        "{" + name + "}",
    )

PROFILE_GOOD = {
    "name": "m",
    "alpha": 28.08,
    "beta": 2.63,
    "gamma": 6.81,
    "zeta": 0.46,
    "max_cores": 16,
    "max_batch": 8,
    "memory_mb": 1024.0,
}
PROFILE_MUTATIONS = {
    **{f"prof_no_{k}": (k, _DELETE) for k in ("alpha", "max_cores", "memory_mb", "name")},
    "prof_alpha_text": ("alpha", "28"),
    "prof_alpha_negative": ("alpha", -1),
    "prof_alpha_null": ("alpha", None),
    "prof_alpha_bool": ("alpha", True),
    "prof_alpha_huge": ("alpha", 1e400),
    "prof_zeta_very_negative": ("zeta", -1000),
    "prof_max_cores_zero": ("max_cores", 0),
    "prof_max_cores_huge": ("max_cores", 100000),
    "prof_max_cores_float": ("max_cores", 16.0),
    "prof_max_batch_huge": ("max_batch", 10**9),
    "prof_memory_negative": ("memory_mb", -1),
    "prof_percentile_100": ("percentile", 100),
    "prof_name_number": ("name", 5),
    "prof_name_path": ("name", "../../x"),
    "prof_name_empty": ("name", ""),
    "prof_source_number": ("source", 5),
    "prof_unknown_key": ("delta", 1),
}
PIPELINES = {
    "pipe_traversal.toml": 'name = "p"\nstages = ["../../etc/passwd"]\n',
    "pipe_empty.toml": 'name = "p"\nstages = []\n',
    "pipe_missing_stage.toml": 'name = "p"\nstages = ["nope"]\n',
    "pipe_self.toml": 'name = "p"\nstages = ["pipe_self"]\n',
    "pipe_numbers.toml": 'name = "p"\nstages = [1, 2]\n',
    "pipe_bad_name.toml": 'name = "a/b"\nstages = ["prof_ok"]\n',
    "pipe_extra.toml": 'name = "p"\nstages = ["prof_ok"]\nslo = 5\n',
    "prof_bad_toml.toml": "name = \n",
    "prof_toml_nan.toml": 'name = "m"\nalpha = nan\nbeta = 1\ngamma = 1\nzeta = 1\n'
    "max_cores = 2\nmax_batch = 2\nmemory_mb = 1\n",
    "prof_wrong_suffix.yaml": "name: m\n",
}
MEASUREMENTS = {
    "meas_cores_zero.csv": "cores,batch,p99_ms\n0,1,5\n",
    "meas_cores_huge.csv": "cores,batch,p99_ms\n1e300,1,5\n1,2,6\n2,1,4\n2,2,5\n",
    "meas_p99_negative.csv": "cores,batch,p99_ms\n1,1,-5\n",
    "meas_p99_inf.csv": "cores,batch,p99_ms\n1,1,inf\n",
    "meas_p99_huge.csv": "cores,batch,p99_ms\n1,1,1e300\n1,2,1\n2,1,1\n2,2,1\n",
    "meas_text.csv": "cores,batch,p99_ms\n1,1,fast\n",
    "meas_no_header.csv": "1,1,5\n2,2,6\n",
    "meas_empty.csv": "",
    "meas_rank.csv": "cores,batch,p99_ms\n1,1,5\n1,1,6\n",
    "meas_binary.csv": None,
}
for name in [*PROFILE_MUTATIONS, *RAW_JSON]:
    case(
        f"plan --profile {name}.json",
        ["plan", "--profile", "{" + name + "_json}", "--slo-ms", "750", "--rps", "10"],
        "{" + name + "_json}",
    )
for name in [*PIPELINES, *MEASUREMENTS, "trace_dir", "trace_fifo", "prof_oversized.json"]:
    key = name.replace(".", "_")
    case(
        f"plan --profile {name}",
        ["plan", "--profile", "{" + key + "}", "--slo-ms", "750", "--rps", "10"],
        "{" + key + "}",
    )
for key in ["prof_alpha_text_json", "pipe_traversal_toml", "meas_rank_csv", "trace_fifo"]:
    case(f"backtest --profile {key}", [*BACKTEST, "--profile", "{" + key + "}"], "{" + key + "}")
case(
    "plan --max-cores on a CSV beyond the bound",
    [
        "plan",
        "--profile",
        "{meas_good_csv}",
        "--slo-ms",
        "500",
        "--rps",
        "40",
        "--max-cores",
        "1000",
    ],
    "--max-cores",
)

SERVICE_GOOD = {  # one service of the YAML file `surgecast run` and `surgecast apply` read
    "name": "resnet18",
    "query": "sum(rate(http_requests_total[1m]))",
    "profile": "resnet18",
    "slo_ms": 750,
    "namespace": "inference",
    "deployment": "resnet18",
    "container": "server",
    "bounds": {"min_replicas": 1, "max_replicas": 8, "min_cores": 1, "max_cores": 8},
}


def _services(**change) -> str:
    return json.dumps({"services": [{**SERVICE_GOOD, **change}]})  # JSON is YAML


SERVICE_CONFIGS = {
    "svc_old_json.json": json.dumps({**SERVICE_GOOD, "service": "resnet18"}),
    "svc_old_toml.toml": 'service = "resnet18"\n',
    "svc_bad_yaml.yaml": "services: [",
    "svc_empty.yaml": "",
    "svc_list.yaml": "[]",
    "svc_services_empty.yaml": "services: []",
    "svc_mode_live.yaml": _services(mode="live"),
    "svc_namespace_bad.yaml": _services(namespace="../x"),
    "svc_bounds_text.yaml": _services(bounds="big"),
    "svc_step_float.yaml": _services(max_replica_step=2.5),
    "svc_bridge_fast.yaml": _services(bridge={"interval_s": 0.01}),
    "svc_deep.yaml": "[" * 100_000 + "]" * 100_000,
}
for name in [*SERVICE_CONFIGS, "trace_dir", "trace_fifo", "svc_missing.yaml"]:
    key = name.replace(".", "_")
    case(
        f"apply --config {name}",
        [
            "apply",
            "{plan_good}",
            "--config",
            "{" + key + "}",
            "--now",
            NOW,
            "--artifacts",
            "{tmp}/a",
        ],
        "{" + key + "}",
    )
KUBECONFIGS = {
    "kube_empty": "",
    "kube_garbage": "{{{{ not: yaml: [",
    "kube_list": "- 1\n- 2\n",
    "kube_no_context": "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n",
}
for name in [*KUBECONFIGS, "trace_dir", "kube_missing"]:
    case(
        f"apply --kubeconfig {name}",
        [
            "apply",
            "{plan_good}",
            "--kubeconfig",
            "{" + name + "}",
            "--now",
            NOW,
            "--artifacts",
            "{tmp}/a",
        ],
        "--kubeconfig",
    )
case(
    "apply with no cluster configured",
    ["apply", "{plan_good}", "--now", NOW, "--artifacts", "{tmp}/a"],
    "KUBECONFIG",
)
for name in ["trace_dir", "trace_fifo", "trace_missing", "json_binary"]:
    case(f"run --config {name}", ["run", "--config", "{" + name + "}", "--check"], "{" + name + "}")

# --------------------------------------------------------------------------------------------
# output paths: directories, missing folders, files where a folder is needed

for flag, suffix in (("--json", "json"), ("--plot", "png")):
    case(f"decompose {flag} a directory", ["decompose", flag, "{tmp}"], flag)
    case(
        f"decompose {flag} in a missing folder",
        ["decompose", flag, f"{{tmp}}/missing/x.{suffix}"],
        flag,
    )
    case(
        f"decompose {flag} under a file",
        ["decompose", flag, f"{{trace_negative}}/x.{suffix}"],
        flag,
    )
    case(f"decompose {flag} empty", ["decompose", flag, ""], flag)
    case(f"decompose {flag} a FIFO", ["decompose", flag, "{trace_fifo}"], flag)
case("decompose --plot with an unknown format", ["decompose", "--plot", "{tmp}/x.txt"], "--plot")
case("forecast --json a directory", [*FORECAST, "--json", "{tmp}"], "--json")
case("forecast --json in a missing folder", [*FORECAST, "--json", "{tmp}/no/f.json"], "--json")
case(
    "plan --out a directory",
    [*PLAN, "--slo-ms", "750", "--forecast", "{forecast_good}", "--out", "{tmp}"],
    "--out",
)
case(
    "plan --out in a missing folder",
    [*PLAN, "--slo-ms", "750", "--forecast", "{forecast_good}", "--out", "{tmp}/a/b/p.json"],
    "--out",
)
case("forecast-report --out a file", ["forecast-report", "--out", "{trace_negative}"], "--out")
case(
    "forecast-report --out under a file",
    ["forecast-report", "--out", "{trace_negative}/r"],
    "--out",
)
case("backtest --out a file", ["backtest", "--out", "{trace_negative}"], "--out")
case("backtest --out under a file", ["backtest", "--out", "{trace_negative}/x/y"], "--out")
case(
    "apply --artifacts a file",
    ["apply", "{plan_good}", "--artifacts", "{trace_negative}"],
    "--artifacts",
)

# --------------------------------------------------------------------------------------------
# the corpus on disk


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, str]:
    """Write every file of the corpus; return placeholder name -> path."""
    root = tmp_path_factory.mktemp("corpus")
    files: dict[str, str] = {}

    def put(name: str, data: bytes | str, filename: str | None = None) -> None:
        path = root / (filename or name)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        files[name] = str(path)

    for name, data in TRACE_FILES.items():
        put(name, data, f"{name}.csv")
    (root / "a_directory").mkdir()
    files["trace_dir"] = str(root / "a_directory")
    os.mkfifo(root / "a_fifo.csv")
    files["trace_fifo"] = str(root / "a_fifo.csv")
    files["trace_missing"] = str(root / "missing.csv")
    sparse = root / "oversized.csv"
    with sparse.open("wb") as fh:  # a sparse file: no disk used, 600 MiB by its size
        fh.write(b"timestamp,rps\n")
        fh.truncate(600 * 1024 * 1024)
    files["trace_oversized"] = str(sparse)
    rows = ["timestamp,rps"] + [
        f"2024-01-01T{h:02d}:{m:02d}:00Z,{10 + h}" for h in range(24) for m in range(60)
    ]
    put("trace_short", "\n".join(rows) + "\n", "short.csv")
    busy = ["timestamp,rps"] + [
        f"2024-01-01T{h:02d}:{m:02d}:00Z,{5000 + h}" for h in range(24) for m in range(60)
    ]
    put("trace_busy", "\n".join(busy) + "\n", "busy.csv")

    put("forecast_good", json.dumps(FORECAST_GOOD), "forecast.json")
    for name, (key, value) in FORECAST_MUTATIONS.items():
        put(name, json.dumps(_mutate(FORECAST_GOOD, key, value)), f"{name}.json")
    for name, data in RAW_JSON.items():
        put(name, data, f"{name}.json")
    put("fc_nan", json.dumps(_mutate(FORECAST_GOOD, "mean", [math.nan] * 5)), "fc_nan.json")
    files["fc_missing"] = str(root / "no_forecast.json")
    for name in ("fc_oversized", "plan_oversized"):
        with (root / f"{name}.json").open("wb") as fh:
            fh.write(b"{")
            fh.truncate(20 * 1024 * 1024)
        files[name] = str(root / f"{name}.json")

    put("plan_good", json.dumps(PLAN_GOOD), "plan.json")
    for name, (key, value) in PLAN_MUTATIONS.items():
        put(name, json.dumps(_mutate(PLAN_GOOD, key, value)), f"{name}.json")
    for name, (key, value) in STEP_MUTATIONS.items():
        data = json.loads(json.dumps(PLAN_GOOD))
        data["steps"][0] = _mutate(data["steps"][0], key, value)
        put(name, json.dumps(data), f"{name}.json")
    put("plan_nan_quantile", json.dumps(_mutate(PLAN_GOOD, "quantile", math.nan)), "pq.json")
    put("plan_inf_slo", json.dumps(_mutate(PLAN_GOOD, "slo_ms", math.inf)), "ps.json")
    files["plan_missing"] = str(root / "no_plan.json")

    profiles = root / "profiles"
    profiles.mkdir()
    (profiles / "prof_ok.toml").write_text(
        "\n".join(f"{k} = {json.dumps(v)}" for k, v in PROFILE_GOOD.items()) + "\n"
    )
    for name, (key, value) in PROFILE_MUTATIONS.items():
        path = profiles / f"{name}.json"
        path.write_text(json.dumps(_mutate(PROFILE_GOOD, key, value)))
        files[f"{name}_json"] = str(path)
    for name, data in RAW_JSON.items():
        path = profiles / f"{name}.json"
        path.write_bytes(data)
        files[f"{name}_json"] = str(path)
    for name, text in PIPELINES.items():
        (profiles / name).write_text(text)
        files[name.replace(".", "_")] = str(profiles / name)
    for name, text in MEASUREMENTS.items():
        path = profiles / name
        path.write_bytes(bytes(range(256)) if text is None else text.encode())
        files[name.replace(".", "_")] = str(path)
    with (profiles / "prof_oversized.json").open("wb") as fh:
        fh.truncate(2 * 1024 * 1024)
    files["prof_oversized_json"] = str(profiles / "prof_oversized.json")
    rows = ["cores,batch,p99_ms"] + [
        f"{c},{b},{30 * b / c + 3 * b + 5 / c + 1:.3f}" for c in (1, 2, 4) for b in (1, 2, 4)
    ]
    (profiles / "measured.csv").write_text("\n".join(rows) + "\n")
    files["meas_good_csv"] = str(profiles / "measured.csv")

    for name, text in SERVICE_CONFIGS.items():
        put(name.replace(".", "_"), text, name)
    put("svc_good", _services(), "svc_good.yaml")
    files["svc_missing_yaml"] = str(root / "no_svc.yaml")
    for name, text in KUBECONFIGS.items():
        put(name, text, f"{name}.yaml")
    files["kube_missing"] = str(root / "no_kubeconfig")
    return files


def test_corpus_size() -> None:
    """The corpus is several hundred cases, with unique names (run with -s to see the count)."""
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids), [i for i in ids if ids.count(i) > 1][:5]
    kinds = {c.args[0] for c in CASES}
    assert {"decompose", "forecast", "forecast-report", "plan", "backtest", "apply", "run"} <= kinds
    print(f"\nbad-input corpus: {len(CASES)} cases over {len(kinds)} commands")
    assert len(CASES) >= 300


class _Hang(BaseException):
    """Raised by SIGALRM; a BaseException, so no ``except Exception`` on the way swallows it."""


def _alarm(signum, frame):
    raise _Hang(f"no answer within {BUDGET_S} s")


@pytest.fixture(scope="module")
def command():
    """The click command of the app, built once: typer rebuilds it on every invoke, which costs
    50 ms, more than refusing an input does. The stage modules the commands import lazily are
    imported here too, so a case's time budget measures the refusal, not the first import."""
    import forecasting.models  # noqa: F401
    import surgecast.live.pipeline
    import surgecast.offline.backtest
    import surgecast.planning  # noqa: F401

    return typer.main.get_command(app)


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused(bad: Case, corpus, command, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(typer.testing, "_get_command", lambda _app: command)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # No cluster may be found by accident: no kubeconfig, not in a pod.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    names = {**corpus, "tmp": str(work)}
    args = [a.format(**names) for a in bad.args]
    needle = bad.needle.format(**names)
    before = sorted(p.name for p in work.iterdir())

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(BUDGET_S)
    started = time.perf_counter()
    try:
        result = CliRunner().invoke(app, args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    seconds = time.perf_counter() - started

    if isinstance(result.exception, _Hang):
        pytest.fail(f"hung: {args}")
    assert seconds < BUDGET_S
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == bad.code, (args, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, (args, result.stderr)
    assert lines[0].startswith("error: "), lines[0]
    assert needle in lines[0], (needle, lines[0])
    if bad.code == 2:
        assert result.stdout == "", result.stdout
        after = sorted(p.name for p in work.iterdir())
        assert after == before, f"left behind: {sorted(set(after) - set(before))}"
