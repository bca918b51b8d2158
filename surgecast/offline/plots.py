"""Pictures for the reports: matplotlib with the non-interactive Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from surgecast.offline.stages import DecompositionResult


def plot_decomposition(result: DecompositionResult, path: Path) -> Path:
    """Stacked plot: the input window, every IMF and the residue, sharing the time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = result.decomposition.components
    panels = [("input", result.window)] + [(name, comps[name]) for name in comps.columns]
    fig, axes = plt.subplots(
        len(panels), 1, sharex=True, figsize=(11, 1.15 * len(panels) + 1.2), squeeze=False
    )
    stats = {row["name"]: row for row in result.component_stats()}
    for ax, (name, values) in zip(axes[:, 0], panels, strict=True):
        color = "black" if name == "input" else ("tab:red" if name == "residue" else "tab:blue")
        ax.plot(values.index, values.to_numpy(), lw=0.7, color=color)
        label = name
        if name in stats:
            label += f"\n{stats[name]['variance_share']:.0%}, {stats[name]['period']}"
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    summary = result.summary()
    fig.suptitle(
        f"CEEMDAN of {Path(result.source).name}: {summary['window']} x {result.step} ending "
        f"{result.cutoff} ({summary['backend']}, {summary['trials']} trials, "
        f"{summary['seconds']:.2f} s; rps)",
        fontsize=10,
    )
    axes[-1, 0].set_xlabel("time (UTC)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
