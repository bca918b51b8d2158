"""Tests for surgecast.offline.sources: CSV refusals, the bundled traces and bundled-file lookup."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import surgecast
from forecasting.cleaning import infer_step
from forecasting.errors import BadInputError
from surgecast.offline.sources import DEFAULT_TRACE, bundled_trace, load_rps_csv

SHARED_TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
HEADER = "timestamp,rps\n"


def write(tmp_path: Path, text: str | bytes, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def rows(*lines: str) -> str:
    return HEADER + "".join(f"{line}\n" for line in lines)


def refused(path: Path, **kwargs) -> str:
    """The message of the BadInputError that loading ``path`` raises, checked to be one line
    naming the file."""
    with pytest.raises(BadInputError) as err:
        load_rps_csv(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message and "\r" not in message
    assert str(path) in message
    return message


# -- refusals --------------------------------------------------------------------------------

REFUSALS = {
    "empty_bytes": (b"", [r"empty file \(no bytes\)"]),
    "whitespace_only": ("\n\n", ["empty file"]),
    "header_only": (HEADER, [r"empty file \(header only"]),
    "missing_rps": (
        "timestamp,value\n2024-01-01T00:00:00Z,1\n",
        ["missing column 'rps'", "'timestamp', 'value'"],
    ),
    "missing_timestamp": (
        "time,rps\n2024-01-01T00:00:00Z,1\n",
        ["missing column 'timestamp'", "'time', 'rps'"],
    ),
    "missing_both": ("a;b\n1;2\n", ["missing columns 'timestamp' and 'rps'", "'a;b'"]),
    "unparsable_timestamp": (
        rows("2024-01-01T00:00:00Z,1", "yesterday,2"),
        ["cannot parse timestamp at row 2", "'yesterday'"],
    ),
    "unparsable_timestamp_with_z": (
        rows("2024-01-01T00:00:00Z,1", "2024-13-45T99:00:00Z,2"),
        ["cannot parse timestamp at row 2", "2024-13-45T99:00:00Z"],
    ),
    "empty_timestamp": (rows("2024-01-01T00:00:00Z,1", ",2"), ["cannot parse timestamp at row 2"]),
    "naive_timestamp": (
        rows("2024-01-01T00:00:00Z,1", "2024-01-01T00:01:00,2"),
        ["row 2 has no UTC offset", "'2024-01-01T00:01:00'"],
    ),
    "non_utc_offset": (
        rows("2024-01-01T00:00:00+02:00,1", "2024-01-01T00:01:00+02:00,2"),
        ["row 1 is not UTC", r"\+02:00"],
    ),
    "zero_offset_other_spelling": (
        rows("2024-01-01T00:00:00Z,1", "2024-01-01T00:01:00-00:00,2"),
        ["row 2 is not ISO 8601 UTC ending in 'Z' or '\\+00:00'"],
    ),
    "unsorted": (
        rows("2024-01-01T00:00:00Z,1", "2024-01-01T00:02:00Z,2", "2024-01-01T00:01:00Z,3"),
        [
            r"timestamps not strictly increasing at row 3 "
            r"\(2024-01-01T00:01:00Z after 2024-01-01T00:02:00Z\)"
        ],
    ),
    "duplicate": (
        rows("2024-01-01T00:00:00Z,1", "2024-01-01T00:01:00Z,2", "2024-01-01T00:01:00Z,3"),
        [r"duplicate timestamp at row 3 \(2024-01-01T00:01:00Z, same as row 2\)"],
    ),
    "unparsable_rps": (
        rows("2024-01-01T00:00:00Z,1", "2024-01-01T00:01:00Z,lots"),
        ["cannot parse rps at row 2", "'lots'"],
    ),
    "unparsable_rps_na": (
        rows("2024-01-01T00:00:00Z,1", "2024-01-01T00:01:00Z,NA"),
        ["cannot parse rps at row 2", "'NA'"],
    ),
    "negative_rps": (
        rows("2024-01-01T00:00:00Z,1", "2024-01-01T00:01:00Z,2", "2024-01-01T00:02:00Z,-1.5"),
        [r"negative rps at row 3 \(2024-01-01T00:02:00Z\): -1.5"],
    ),
    "infinite_rps": (
        rows("2024-01-01T00:00:00Z,1", "2024-01-01T00:01:00Z,inf"),
        [r"infinite rps at row 2 \(2024-01-01T00:01:00Z\)", "inf"],
    ),
    "off_grid": (
        rows(
            "2024-01-01T00:00:00Z,1",
            "2024-01-01T00:01:00Z,2",
            "2024-01-01T00:02:00Z,3",
            "2024-01-01T00:02:30Z,4",
        ),
        [r"row 4 \(2024-01-01T00:02:30Z\) is off the 1 min grid"],
    ),
    "single_row": (rows("2024-01-01T00:00:00Z,1"), ["need at least 2 timestamps"]),
    "ragged_row": (
        rows("2024-01-01T00:00:00Z,1", "2024-01-01T00:01:00Z,2,3,4"),
        ["not a valid CSV"],
    ),
    "not_utf8": (HEADER.encode() + b"2024-01-01T00:00:00Z,\xff\xfe\n", ["not UTF-8 text"]),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_file_is_refused_with_one_line_naming_file_and_problem(tmp_path, case):
    content, problems = REFUSALS[case]
    message = refused(write(tmp_path, content))
    for problem in problems:
        assert re.search(problem, message), (problem, message)


def test_missing_file_is_refused(tmp_path):
    message = refused(tmp_path / "nowhere.csv")
    assert message.endswith("file not found")


def test_directory_is_refused(tmp_path):
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    assert "is a directory" in refused(folder)


def test_first_bad_row_is_named_when_several_are_bad(tmp_path):
    path = write(tmp_path, rows("2024-01-01T00:00:00Z,1", "2024-01-01T00:01:00Z,-2", "x,-3"))
    # Timestamps are checked before values: row 3's timestamp is the first problem reported.
    assert "cannot parse timestamp at row 3" in refused(path)


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        ("30s", "step 30 s is finer than the native step 1 min"),
        ("90s", "step 90 s is not a whole multiple of the native step 1 min"),
        ("soon", "cannot parse step 'soon'"),
        ("-1min", "step must be a positive duration"),
    ],
)
def test_bad_step_is_refused(tmp_path, step, problem):
    path = write(tmp_path, rows("2024-01-01T00:00:00Z,1", "2024-01-01T00:01:00Z,2"))
    assert problem in refused(path, step=step)


# -- small happy paths -----------------------------------------------------------------------


def test_utc_spellings_and_no_data_fields(tmp_path):
    path = write(
        tmp_path,
        rows(
            "2024-01-01T00:00:00Z,1.5",
            "2024-01-01T00:01:00+00:00,nan",
            "2024-01-01T00:02:00Z,",
            "2024-01-01T00:03:00Z,NaN",
            "2024-01-01T00:04:00Z,4",
        ),
    )
    rps = load_rps_csv(path)
    assert rps.name == "rps"
    assert rps.dtype == np.float64
    assert str(rps.index.tz) == "UTC"
    assert rps.index[0] == pd.Timestamp("2024-01-01T00:00:00Z")
    np.testing.assert_array_equal(rps.to_numpy(), [1.5, np.nan, np.nan, np.nan, 4.0])


def test_integer_rps_become_float(tmp_path):
    rps = load_rps_csv(write(tmp_path, rows("2024-01-01T00:00:00Z,1", "2024-01-01T00:00:01Z,2")))
    assert rps.dtype == np.float64
    assert infer_step(rps.index) == pd.Timedelta("1s")


def test_rows_missing_from_the_grid_become_nan(tmp_path):
    path = write(
        tmp_path,
        rows(
            "2024-01-01T00:00:00Z,1",
            "2024-01-01T00:01:00Z,2",
            "2024-01-01T00:02:00Z,3",
            "2024-01-01T00:05:00Z,6",
        ),
    )
    rps = load_rps_csv(path)
    expected_index = pd.date_range("2024-01-01T00:00:00Z", periods=6, freq="1min")
    pd.testing.assert_index_equal(rps.index, expected_index, exact=False, check_names=False)
    np.testing.assert_array_equal(rps.to_numpy(), [1, 2, 3, np.nan, np.nan, 6])


def test_extra_columns_bom_and_spaces_are_tolerated(tmp_path):
    text = "\ufefftimestamp, rps, host\n2024-01-01T00:00:00Z, 1, a\n2024-01-01T00:01:00Z, 2, b\n"
    rps = load_rps_csv(write(tmp_path, text))
    np.testing.assert_array_equal(rps.to_numpy(), [1.0, 2.0])


def test_resampling_a_small_file(tmp_path):
    lines = [f"2024-01-01T00:{m:02d}:{s:02d}Z,{m * 60 + s}" for m in range(2) for s in (5, 35)]
    rps = load_rps_csv(write(tmp_path, rows(*lines)), step=pd.Timedelta("1min"))
    assert list(rps.index) == list(pd.date_range("2024-01-01T00:00Z", periods=2, freq="1min"))
    np.testing.assert_allclose(rps.to_numpy(), [20.0, 80.0])


# -- the bundled traces ----------------------------------------------------------------------


def test_twitter_1min_bundled_trace():
    rps = load_rps_csv(bundled_trace("twitter_1min.csv"))
    assert len(rps) == 31_652
    assert rps.name == "rps"
    assert rps.dtype == np.float64
    assert str(rps.index.tz) == "UTC"
    assert rps.index.is_monotonic_increasing and rps.index.is_unique
    assert infer_step(rps.index) == pd.Timedelta("1min")
    assert (rps.index[1:] - rps.index[:-1] == pd.Timedelta("1min")).all()
    assert rps.index[0] == pd.Timestamp("2024-01-01T00:00:00Z")
    assert rps.index[-1] == pd.Timestamp("2024-01-22T23:31:00Z")
    assert int(rps.isna().sum()) == 624
    assert np.isnan(rps.iloc[-1])  # the trace ends at the start of a daily gap
    assert rps.min() >= 0


def test_azure_10s_resampled_to_1min():
    path = bundled_trace("azure_llm_code_2024_10s.csv")
    rps = load_rps_csv(path, step="1min")
    assert rps.index[0] == pd.Timestamp("2024-05-10T00:00:00Z")
    assert rps.index[-1] == pd.Timestamp("2024-05-16T23:59:00Z")
    assert len(rps) == 7 * 1440
    assert not rps.isna().any()
    assert (rps.index.second == 0).all()
    # The 13:37 bin from the raw rows, read with the csv module, not pandas.
    with path.open(newline="") as handle:
        raw = [
            float(r["rps"])
            for r in csv.DictReader(handle)
            if r["timestamp"][:16] == "2024-05-12T13:37"
        ]
    assert len(raw) == 6
    assert rps.loc[pd.Timestamp("2024-05-12T13:37:00Z")] == pytest.approx(sum(raw) / 6, rel=1e-12)


def test_azure_native_step_is_10s_at_5s_past():
    rps = load_rps_csv(bundled_trace("azure_llm_code_2024_10s.csv"))
    assert len(rps) == 60_479
    assert infer_step(rps.index) == pd.Timedelta("10s")
    assert rps.index[0] == pd.Timestamp("2024-05-10T00:00:05Z")


def test_default_trace_is_bundled():
    assert bundled_trace(DEFAULT_TRACE).is_file()
    assert bundled_trace("twitter_1min") == bundled_trace("twitter_1min.csv")


def test_unknown_bundled_trace_lists_what_is_available():
    with pytest.raises(BadInputError) as err:
        bundled_trace("no_such_trace.csv")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("no_such_trace.csv: no such bundled trace")
    assert "azure_llm_code_2024_10s.csv" in message and "twitter_1min.csv" in message


def test_bundled_trace_refuses_paths():
    with pytest.raises(BadInputError, match="no such bundled trace"):
        bundled_trace("../pyproject.toml")


def test_wheel_data_folder_is_searched_first(tmp_path, monkeypatch):
    package = tmp_path / "site" / "surgecast"
    (package / "_bundled_data").mkdir(parents=True)
    (package / "_bundled_data" / "wheel.csv").write_text(rows("2024-01-01T00:00:00Z,1"))
    (tmp_path / "site" / "data").mkdir()
    (tmp_path / "site" / "data" / "wheel.csv").write_text("shadowed")
    (tmp_path / "site" / "data" / "checkout.csv").write_text("x")
    monkeypatch.setattr(surgecast, "__file__", str(package / "__init__.py"))
    assert bundled_trace("wheel.csv") == package / "_bundled_data" / "wheel.csv"
    assert bundled_trace("checkout.csv") == tmp_path / "site" / "data" / "checkout.csv"


# -- the shared, unbundled traces ------------------------------------------------------------


def shared(name: str) -> Path:
    path = SHARED_TRACES / name
    if not path.exists():
        pytest.skip(f"shared trace folder absent: {name} is not bundled and not beside the repo")
    return path


def test_twitter_1s_loads_at_native_resolution():
    rps = load_rps_csv(shared("twitter_1s_first7d.csv"))
    assert len(rps) == 604_800
    assert rps.index.freq is None or rps.index.freq == pd.Timedelta("1s")
    assert int(rps.isna().sum()) == 12_577


def test_twitter_1s_resampled_matches_the_published_1min_file():
    rps = load_rps_csv(shared("twitter_1s_first7d.csv"), step="1min")
    published = load_rps_csv(bundled_trace("twitter_1min.csv")).loc[: rps.index[-1]]
    pd.testing.assert_index_equal(rps.index, published.index, exact=False, check_names=False)
    # The published file makes a minute NaN below 30 valid seconds; mean-resampling keeps any
    # minute with one. Where the published value exists, the two agree to its 6 digits.
    both = published.notna()
    assert rps[both].notna().all()
    np.testing.assert_allclose(rps[both], published[both], rtol=1e-5)
    assert rps.isna().sum() <= published.isna().sum()
