"""Shared fixtures: the bundled traces and the other public traces beside the repository."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
# The full set of public traces (NASA, Twitter at 1 s) lives beside the repository when it is
# checked out in the team's workspace; tests that need a trace not bundled in data/ skip without it.
SHARED_TRACES = REPO.parent / "shared" / "data" / "traces"


def _read(path: Path) -> pd.Series:
    frame = pd.read_csv(path)
    index = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"], utc=True))
    return pd.Series(frame["rps"].to_numpy(dtype=float), index=index, name="rps")


@pytest.fixture(scope="session")
def twitter_1min() -> pd.Series:
    """The bundled Twitter trace at 1 minute, gaps as NaN."""
    return _read(DATA / "twitter_1min.csv")


@pytest.fixture(scope="session")
def azure_1min() -> pd.Series:
    """The bundled Azure LLM code trace, 10 s mean-resampled to 1 minute."""
    raw = _read(DATA / "azure_llm_code_2024_10s.csv")
    return raw.resample("1min").mean().rename("rps")


@pytest.fixture(scope="session")
def nasa_1min() -> pd.Series:
    path = SHARED_TRACES / "nasa_http_1995_1min.csv"
    if not path.exists():
        pytest.skip(f"NASA trace not present at {path.name} beside the repository")
    return _read(path)
