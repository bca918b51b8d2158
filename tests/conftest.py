"""Shared fixtures: the bundled traces and the other public traces beside the repository."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from surgecast.offline.sources import load_rps_csv

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
# The other public traces (NASA, Twitter at 1 s) live in shared/data/traces beside the
# repository when it is checked out there; tests that need a trace not bundled in data/ skip
# without it.
SHARED_TRACES = REPO.parent / "shared" / "data" / "traces"


@pytest.fixture(scope="session")
def twitter_1min() -> pd.Series:
    """The bundled Twitter trace at 1 minute, gaps as NaN."""
    return load_rps_csv(DATA / "twitter_1min.csv")


@pytest.fixture(scope="session")
def azure_1min() -> pd.Series:
    """The bundled Azure LLM code trace, 10 s mean-resampled to 1 minute."""
    return load_rps_csv(DATA / "azure_llm_code_2024_10s.csv", step="1min")


@pytest.fixture(scope="session")
def nasa_1min() -> pd.Series:
    path = SHARED_TRACES / "nasa_http_1995_1min.csv"
    if not path.exists():
        pytest.skip(f"NASA trace not present: {path.name} is not bundled")
    return load_rps_csv(path)
