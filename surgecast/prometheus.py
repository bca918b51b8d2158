"""RPS histories from Prometheus (``prometheus-api-client``), in the RPS contract.

A history is read with range queries (``/api/v1/query_range``) on a grid aligned to the step
(epoch multiples), so two runs see the same timestamps. Prometheus refuses a query that returns
more than 11,000 points per series, so a long range is split into chunks of at most
``max_points`` points. Each chunk is tried ``attempts`` times: connection errors, timeouts, 429
and 5xx are retried after a backoff that doubles; a 4xx (a bad query) is not.

The index holds the evaluation times of the query: the value at ``t`` is the expression's value
at ``t`` (for ``rate(x[1m])`` the mean rate over the minute before ``t``). Points the query did
not return are NaN; so are non-finite or negative values (a rate is never negative).

:func:`check_history` then decides whether the history may be acted on; every refusal is a
:class:`SourceError` whose ``reason`` (``unreachable``, ``http_error``, ``bad_query``,
``bad_response``, ``missing``, ``stale``, ``gappy``) labels the metric of the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from forecasting.cleaning import format_time, nan_runs
from forecasting.errors import BadInputError
from surgecast.settings import DataSettings, PrometheusSettings

REASONS = (
    "unreachable",
    "http_error",
    "bad_query",
    "bad_response",
    "missing",
    "stale",
    "gappy",
)
RECENT_SPAN = pd.Timedelta(days=1)
"""Span before the newest sample in which long gaps are refused (the context a forecast reads)."""
RETRIABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class SourceError(BadInputError):
    """The history cannot be read, or must not be acted on. One line; ``reason`` is one of
    :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class HistoryQuality:
    """What :func:`check_history` found.

    Attributes:
        points: grid points in the history.
        missing_points: points without data (NaN), before any filling.
        longest_gap_steps: longest run of missing points within the checked recent span.
        last_sample_at: time of the newest point with data (UTC).
        staleness_s: ``now`` minus ``last_sample_at`` (s).
    """

    points: int
    missing_points: int
    longest_gap_steps: int
    last_sample_at: pd.Timestamp
    staleness_s: float

    def to_dict(self) -> dict:
        return {
            "points": self.points,
            "missing_points": self.missing_points,
            "longest_gap_steps": self.longest_gap_steps,
            "last_sample_at": format_time(self.last_sample_at),
            "staleness_s": self.staleness_s,
        }


def grid(end: pd.Timestamp, span: pd.Timedelta, step_s: float) -> pd.DatetimeIndex:
    """The epoch-aligned grid of ``step_s`` that ends at the last multiple at or before ``end``
    and covers ``span`` (both ends included)."""
    step_ns = round(step_s * 1e9)
    end_ns = (pd.Timestamp(end).value // step_ns) * step_ns
    n = int(pd.Timedelta(span).value // step_ns) + 1
    first = end_ns - (n - 1) * step_ns
    return pd.date_range(pd.Timestamp(first, tz="UTC"), periods=n, freq=pd.Timedelta(step_ns))


def chunks(index: pd.DatetimeIndex, max_points: int) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """(first, last) of consecutive pieces of ``index`` with at most ``max_points`` points."""
    return [
        (index[i], index[min(i + max_points, len(index)) - 1])
        for i in range(0, len(index), max_points)
    ]


class PrometheusSource:
    """Reads one-series PromQL expressions over a time range.

    Args:
        settings: URL, timeout, retries, TLS and auth.
        sleep: waits between retries (s); injected so tests need not wait.
        session: a ``requests.Session`` to use instead of a fresh one (tests).
    """

    def __init__(
        self,
        settings: PrometheusSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        session=None,
    ) -> None:
        import requests
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        self.settings = settings
        self.sleep = sleep
        if session is None:
            session = requests.Session()
        # verify: True (system CAs), a CA bundle path, or False (lab only).
        session.verify = (settings.ca_file or True) if settings.verify_tls else False
        self.client = PrometheusConnect(
            url=settings.url.rstrip("/"),
            headers=settings.auth.headers or None,
            auth=settings.auth.basic,
            session=session,
            timeout=settings.timeout_s,
            # Retries are ours (counted, backed off, recorded); urllib3's are off.
            retry=Retry(total=0, raise_on_status=False),
        )
        self.queries = 0

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> PrometheusSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(
        self, query: str, *, end: pd.Timestamp, span: pd.Timedelta, step_s: float
    ) -> pd.Series:
        """The expression's values on the grid of ``step_s`` ending at or before ``end``.

        Returns:
            An RPS history (float64 >= 0 or NaN, name ``"rps"``, UTC index, regular).

        Raises:
            SourceError: Prometheus unreachable or answering errors after the retries, a bad
                query, a malformed answer, or more than one series.
        """
        index = grid(end, span, step_s)
        values = np.full(len(index), np.nan)
        origin_ns = int(index.asi8[0])
        step_ns = round(step_s * 1e9)
        for first, last in chunks(index, self.settings.max_points):
            pairs = _one_series(self._query_range(query, first, last, step_s), query)
            if not pairs:
                continue
            stamps, got = np.array(pairs, dtype=np.float64).T
            pos = (np.round(stamps * 1e9).astype(np.int64) - origin_ns) // step_ns
            keep = (pos >= 0) & (pos < len(values))
            values[pos[keep]] = got[keep]
        values[~np.isfinite(values) | (values < 0)] = np.nan
        return pd.Series(values, index=index, name="rps")

    def _query_range(self, query: str, first, last, step_s: float) -> list:
        import requests
        from prometheus_api_client import PrometheusApiClientException

        s = self.settings
        backoff = s.backoff_s
        problem = ""
        for attempt in range(s.attempts):
            self.queries += 1
            try:
                return self.client.custom_query_range(
                    query,
                    start_time=_datetime(first),
                    end_time=_datetime(last),
                    step=f"{step_s:g}s",
                )
            except PrometheusApiClientException as exc:
                status = _status(exc)
                problem = f"HTTP {status}" if status else "error"
                detail = _detail(exc)
                if status is not None and status not in RETRIABLE_STATUS:
                    raise SourceError(
                        "bad_query",
                        f"prometheus {s.url}: query refused ({problem}): {detail}: {query}",
                    ) from None
                problem = f"{problem}: {detail}"
                reason = "http_error"
            except requests.exceptions.SSLError as exc:
                raise SourceError(
                    "unreachable", f"prometheus {s.url}: TLS verification failed: {_short(exc)}"
                ) from None
            except requests.exceptions.Timeout:
                problem, reason = f"timeout after {s.timeout_s:g} s", "unreachable"
            except requests.exceptions.RequestException as exc:
                problem, reason = _short(exc), "unreachable"
            except (ValueError, KeyError, TypeError) as exc:  # not the API's JSON
                raise SourceError(
                    "bad_response", f"prometheus {s.url}: malformed answer: {_short(exc)}"
                ) from None
            if attempt < s.attempts - 1:
                self.sleep(backoff)
                backoff *= 2
        raise SourceError(
            reason,
            f"prometheus {s.url}: {problem} (gave up after {s.attempts} attempt(s))",
        )


def check_history(
    rps: pd.Series,
    *,
    now: pd.Timestamp,
    data: DataSettings,
    recent: pd.Timedelta = RECENT_SPAN,
    source: str = "rps",
) -> tuple[pd.Series, HistoryQuality]:
    """Refuse a history that must not be acted on; trim the trailing points without data.

    Rules: some data at all; the newest sample at most ``data.max_staleness_s`` before ``now``;
    at most ``data.max_missing_share`` of the points missing; no run of missing points longer
    than ``data.max_gap_steps`` in the ``recent`` span before the newest sample (the context a
    forecast reads; older gaps are filled by the models).

    Returns:
        The history up to its newest sample (NaN gaps kept), and what was found.

    Raises:
        SourceError: ``missing``, ``stale`` or ``gappy``.
    """
    values = rps.to_numpy(dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(values))
    if valid.size == 0:
        raise SourceError(
            "missing",
            f"{source}: no data from {format_time(rps.index[0])} to {format_time(rps.index[-1])}"
            if len(rps)
            else f"{source}: no data",
        )
    last_at = rps.index[valid[-1]]
    staleness_s = (now - last_at).total_seconds()
    if staleness_s > data.max_staleness_s:
        raise SourceError(
            "stale",
            f"{source}: stale: newest sample {format_time(last_at)} is {staleness_s:g} s before "
            f"now {format_time(now)} (limit {data.max_staleness_s:g} s)",
        )
    trimmed = rps.iloc[: valid[-1] + 1]
    missing = np.isnan(trimmed.to_numpy())
    share = float(missing.mean())
    if share > data.max_missing_share:
        raise SourceError(
            "gappy",
            f"{source}: {missing.sum()} of {missing.size} points missing ({share:.0%}, limit "
            f"{data.max_missing_share:.0%})",
        )
    start = trimmed.index.searchsorted(last_at - recent)
    runs = nan_runs(missing[start:])
    longest = int(runs[:, 1].max()) if len(runs) else 0
    if longest > data.max_gap_steps:
        first, length = (int(x) for x in runs[np.argmax(runs[:, 1])])
        at = trimmed.index[start + first]
        raise SourceError(
            "gappy",
            f"{source}: gap of {length} missing points from {format_time(at)} is longer than "
            f"max_gap_steps={data.max_gap_steps}",
        )
    quality = HistoryQuality(
        points=int(missing.size),
        missing_points=int(missing.sum()),
        longest_gap_steps=longest,
        last_sample_at=last_at,
        staleness_s=staleness_s,
    )
    return trimmed, quality


def _one_series(result, query: str) -> list[tuple[float, float]]:
    if not isinstance(result, list):
        raise SourceError("bad_response", f"prometheus: malformed answer to {query}")
    if not result:
        return []
    if len(result) > 1:
        labels = [r.get("metric", {}) for r in result[:3]]
        raise SourceError(
            "bad_query",
            f"query returned {len(result)} series (e.g. {labels}); aggregate it into one "
            f"(sum(...)): {query}",
        )
    try:
        return [(float(ts), float(v)) for ts, v in result[0]["values"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise SourceError("bad_response", f"prometheus: malformed series: {exc}") from None


def _datetime(ts: pd.Timestamp) -> datetime:
    return pd.Timestamp(ts).to_pydatetime()


def _status(exc: Exception) -> int | None:
    text = str(exc)
    marker = "HTTP Status Code "
    if marker in text:
        digits = text.split(marker, 1)[1][:3]
        if digits.isdigit():
            return int(digits)
    return None


def _detail(exc: Exception) -> str:
    """The Prometheus error message from the response body, if it is there."""
    import json

    text = str(exc)
    start = text.find("b'")
    if start >= 0:
        body = text[start + 2 : text.rfind("'")]
        try:
            return str(json.loads(body.encode().decode("unicode_escape")).get("error", body))[:200]
        except (ValueError, AttributeError):
            return body[:200]
    return text[:200]


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    if "Connection refused" in text:
        return "connection refused"
    return f"{type(exc).__name__}: {text[:200]}"
