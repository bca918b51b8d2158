"""The evaluation's bars (docs/evaluation.md), checked on a backtest's results.json.

Each bar is stated for the code that ships (the ``surgecast`` row) against the rows a run
carries; a bar whose comparison row is missing is reported as not checked, never as met.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HPA_ROW = re.compile(r"^hpa(-(\d+))?$")

STATE = {True: "met", False: "NOT met", None: "not checked"}
"""How a bar's outcome reads."""


@dataclass(frozen=True)
class Bar:
    """One bar on one run."""

    name: str
    met: bool | None
    """True, False, or None when the run lacks what the bar compares with."""
    detail: str

    def line(self) -> str:
        return f"{self.name}: {STATE[self.met]} ({self.detail})"


def best_costlier_hpa(results: dict) -> tuple[str, dict] | None:
    """The CPU HPA setting with the fewest violations among those that cost at least as much
    as surgecast (the point of the HPA's curve that bar 1 compares with), or None."""
    rows = results.get("policies", {})
    ours = rows.get("surgecast")
    if ours is None:
        return None
    # "hpa" is the 70 % setting under its old name when "hpa-70" is there too
    names = [n for n in rows if HPA_ROW.match(n) and not (n == "hpa" and "hpa-70" in rows)]
    costlier = [(rows[n]["violations"], n, rows[n]) for n in names
                if rows[n]["core_hours"] >= ours["core_hours"]]
    if not costlier:
        return None
    _, name, row = min(costlier, key=lambda t: (t[0], t[1]))
    return name, row


def check_bars(results: dict) -> list[Bar]:
    """The bars for one run's ``results.json`` (as :meth:`BacktestResult.to_json` writes it)."""
    rows = results.get("policies", {})
    ours = rows.get("surgecast")
    if ours is None:
        return [Bar("surgecast", None, "no surgecast row")]
    v, c = ours["violations"], ours["core_hours"]
    bars = []

    themis = rows.get("themis")
    hpas = {
        name: row for name, row in rows.items() if HPA_ROW.match(name)
    }
    costlier = {n: r for n, r in hpas.items() if r["core_hours"] >= c}
    if themis is None or not hpas:
        bars.append(Bar("violations <= themis and every HPA that costs as much", None,
                        "needs themis and an HPA row"))
    else:
        worse = [n for n, r in costlier.items() if v > r["violations"]]
        ok = v <= themis["violations"] and not worse
        bars.append(Bar(
            "violations <= themis and every HPA that costs as much",
            ok,
            f"surgecast {v:,} vs themis {themis['violations']:,}"
            + (f"; more than {', '.join(sorted(worse))}" if worse else "")
            + f"; {len(costlier)} HPA setting(s) cost as much or more",
        ))

    hpa70 = rows.get("hpa-70", rows.get("hpa"))
    if hpa70 is None:
        bars.append(Bar("core-hours <= HPA at 70 %, >= 10x fewer violations", None,
                        "no HPA at 70 %"))
    else:
        cheaper = c <= hpa70["core_hours"]
        needs_ratio = hpa70["violation_rate"] >= 0.001
        ratio = hpa70["violations"] / v if v else float("inf")
        ok = cheaper and (not needs_ratio or ratio >= 10.0)
        bars.append(Bar(
            "core-hours <= HPA at 70 %, >= 10x fewer violations",
            ok,
            f"{c / hpa70['core_hours']:.2f}x its core-hours; "
            + (f"{ratio:.1f}x fewer violations" if needs_ratio
               else "the HPA is under 0.1 % over the SLO"),
        ))

    bound = results.get("lower_bound", {}).get("core_hours")
    if not bound:
        bars.append(Bar("core-hours <= 1.3x the lower bound", None, "no lower bound"))
    else:
        bars.append(Bar("core-hours <= 1.3x the lower bound", c <= 1.3 * bound,
                        f"{c / bound:.2f}x"))

    reactive = rows.get("surgecast-no-forecast")
    if reactive is None:
        bars.append(Bar("no regret against the reactive policy", None,
                        "no surgecast-no-forecast row"))
    else:
        regret = v > reactive["violations"] and c > reactive["core_hours"]
        bars.append(Bar(
            "no regret against the reactive policy",
            not regret,
            f"{v:,} vs {reactive['violations']:,} violations, "
            f"{c:.1f} vs {reactive['core_hours']:.1f} core-hours",
        ))
    return bars
