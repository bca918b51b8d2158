"""RPS histories from the Prometheus HTTP API, in the RPS contract.

A history is read with range queries (``/api/v1/query_range``) on a grid aligned to the step
(epoch multiples), so two runs see the same timestamps. Prometheus refuses a query that returns
more than 11,000 points per series, so a long range is split into chunks of at most
``max_points`` points. Each chunk is tried ``attempts`` times: connection errors, timeouts, 408,
429 and 5xx are retried after a backoff that doubles; another 4xx (a bad query) is not, and a
redirect is not followed (it could carry the credentials to another host).

Every HTTP exchange has a deadline on the monotonic clock (``query_deadline_s``, and the run's
own ``deadline`` when one is given) that holds whatever the server does: a watchdog thread shuts
the socket down when it passes, so a server that answers one byte per second, or that stalls
its headers or its TLS handshake, ends the exchange on time (a per-read socket timeout alone
would let it run for ``timeout_s`` per byte). The exchange speaks HTTP/1.1 itself, without
proxies from the environment, and reads at most :data:`MAX_ANSWER_BYTES`; it never sends
``Accept-Encoding``, so no compressed answer can expand. Only name resolution (the system
resolver) is outside the deadline.

The index holds the evaluation times of the query: the value at ``t`` is the expression's value
at ``t`` (for ``rate(x[1m])`` the mean rate over the minute before ``t``). Points the query did
not return, and ``NaN`` values, are NaN (no data); a negative or infinite value refuses the
read (a rate is never negative: the query is wrong).

:func:`check_history` then decides whether the history may be acted on; every refusal is a
:class:`SourceError` whose ``reason`` (one of :data:`REASONS`) labels the metric of the run.
No message carries the token or password: they are cut out of anything a server echoes.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

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
    "deadline",
    "missing",
    "stale",
    "implausible",
    "gappy",
)
RECENT_SPAN = pd.Timedelta(days=1)
"""Span before the newest sample in which long gaps are refused (the context a forecast reads),
and the span a sample's jump is measured against."""
RETRIABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_ANSWER_BYTES = 16 << 20
"""Largest answer read (16 MiB); one series of 11,000 points is about 0.4 MB of JSON."""


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
        missing_points: points without data (NaN) after dropping unconfirmed jumps.
        longest_gap_steps: longest run of missing points within the checked recent span.
        last_sample_at: time of the newest point with data (UTC).
        staleness_s: ``now`` minus ``last_sample_at`` (s).
        dropped_points: samples of older jumps that no later sample confirmed, set to NaN.
    """

    points: int
    missing_points: int
    longest_gap_steps: int
    last_sample_at: pd.Timestamp
    staleness_s: float
    dropped_points: int = 0

    def to_dict(self) -> dict:
        return {
            "points": self.points,
            "missing_points": self.missing_points,
            "longest_gap_steps": self.longest_gap_steps,
            "last_sample_at": format_time(self.last_sample_at),
            "staleness_s": self.staleness_s,
            "dropped_points": self.dropped_points,
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


class _Expired(Exception):
    """The exchange's deadline passed."""


class _Watchdog:
    """Shuts the watched socket down when ``delay_s`` has passed, waking any blocked read.

    ``socket.shutdown`` (not ``close``) is what interrupts a ``recv`` blocked in another thread
    on Linux; the base class's method is used on a TLS socket so the TLS state is left alone.
    """

    def __init__(self, delay_s: float) -> None:
        self.fired = False
        self._sock: socket.socket | None = None
        self._done = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(delay_s, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.fired:
                raise _Expired
            self._sock = sock

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            if self._sock is not None:
                try:
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed or never connected: nothing left to wake

    def stop(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._done = True


class PrometheusSource:
    """Reads one-series PromQL expressions over a time range.

    Args:
        settings: URL, timeouts and deadline, retries, TLS and auth.
        sleep: waits between retries (s); injected so tests need not wait.
    """

    def __init__(
        self,
        settings: PrometheusSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.sleep = sleep
        parts = urllib.parse.urlsplit(settings.url)
        self._https = parts.scheme == "https"
        self._host = str(parts.hostname)
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._tls: ssl.SSLContext | None = None
        self._headers = {
            "Host": self._host_header(),
            "Accept": "application/json",
            "User-Agent": "surgecast",
            "Connection": "close",
        }
        auth = settings.auth
        self._secrets: list[str] = []
        if auth.secret:
            self._secrets.append(auth.secret)
        self._headers.update(auth.headers)
        if auth.basic is not None:
            # RFC 7617: user-id ":" password, UTF-8, base64.
            token = base64.b64encode(":".join(auth.basic).encode("utf-8")).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
            self._secrets.append(token)
        self.queries = 0

    @property
    def tls_verify(self) -> bool | str:
        """What the server's certificate is checked against: True (the system's CAs), the CA
        bundle's path, or False (not checked: a lab only)."""
        s = self.settings
        return (s.ca_file or True) if s.verify_tls else False

    def close(self) -> None:
        """Nothing stays open between queries (each exchange has its own connection)."""

    def __enter__(self) -> PrometheusSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(
        self,
        query: str,
        *,
        end: pd.Timestamp,
        span: pd.Timedelta,
        step_s: float,
        deadline: float | None = None,
    ) -> pd.Series:
        """The expression's values on the grid of ``step_s`` ending at or before ``end``.

        Args:
            query: a PromQL expression returning one series.
            end: the newest evaluation time wanted.
            span: how far back from ``end``.
            step_s: the grid's step (s).
            deadline: absolute ``time.monotonic()`` value by which the whole read, retries
                and backoffs included, is over (the run's budget); None: only each
                exchange's ``query_deadline_s``.

        Returns:
            An RPS history (float64 >= 0 or NaN, name ``"rps"``, UTC index, regular).

        Raises:
            SourceError: Prometheus unreachable or answering errors after the retries, the
                deadline passed (``deadline``), a bad query, a malformed answer, more than one
                series, or a negative or infinite value (``implausible``).
        """
        index = grid(end, span, step_s)
        values = np.full(len(index), np.nan)
        origin_ns = int(index.asi8[0])
        step_ns = round(step_s * 1e9)
        for first, last in chunks(index, self.settings.max_points):
            result = self._query_range(query, first, last, step_s, deadline)
            pairs = _one_series(result, query)
            if not pairs:
                continue
            stamps, got = np.array(pairs, dtype=np.float64).T
            pos = (np.round(stamps * 1e9).astype(np.int64) - origin_ns) // step_ns
            keep = (pos >= 0) & (pos < len(values))
            values[pos[keep]] = got[keep]
        bad = np.flatnonzero(np.isinf(values) | (values < 0))
        if bad.size:
            at = index[bad[0]]
            raise SourceError(
                "implausible",
                f"prometheus: {bad.size} negative or infinite value(s), e.g. {values[bad[0]]:g} "
                f"at {format_time(at)}; a request rate is finite and >= 0: {_cut(query)}",
            )
        return pd.Series(values, index=index, name="rps")

    def _query_range(self, query: str, first, last, step_s: float, deadline: float | None):
        s = self.settings
        params = {
            "query": query,
            "start": _epoch(first),
            "end": _epoch(last),
            "step": f"{step_s:g}",
        }
        target = f"{self._prefix}/api/v1/query_range?{urllib.parse.urlencode(params)}"
        backoff = s.backoff_s
        problem, reason = "", "unreachable"
        for attempt in range(s.attempts):
            started = time.monotonic()
            if deadline is not None and started >= deadline:
                raise self._error(
                    "deadline", f"prometheus {s.url}: the run's deadline passed "
                    f"after {attempt} attempt(s){f' ({problem})' if problem else ''}"
                )
            exchange_deadline = started + s.query_deadline_s
            if deadline is not None:
                exchange_deadline = min(exchange_deadline, deadline)
            self.queries += 1
            try:
                status, body = self._get(target, exchange_deadline)
            except _Expired:
                if deadline is not None and exchange_deadline == deadline:
                    raise self._error(
                        "deadline",
                        f"prometheus {s.url}: no complete answer by the run's deadline "
                        f"({time.monotonic() - started:.1f} s into attempt {attempt + 1})",
                    ) from None
                problem = f"no complete answer within query_deadline_s={s.query_deadline_s:g} s"
                reason = "deadline"
            except ssl.SSLCertVerificationError as exc:
                raise self._error(
                    "unreachable",
                    f"prometheus {s.url}: TLS verification failed: {exc.verify_message}",
                ) from None
            except TimeoutError:
                problem, reason = f"timeout after {s.timeout_s:g} s", "unreachable"
            except ConnectionRefusedError:
                problem, reason = "connection refused", "unreachable"
            except (OSError, http.client.HTTPException) as exc:
                problem, reason = _short(exc), "unreachable"
            else:
                if status == 200:
                    return _matrix(body, s.url, self._redact)
                detail = self._redact(_detail(body))
                if 300 <= status < 400:
                    raise self._error(
                        "http_error", f"prometheus {s.url}: HTTP {status}: redirect not followed"
                    )
                if status not in RETRIABLE_STATUS:
                    raise self._error(
                        "bad_query",
                        f"prometheus {s.url}: query refused (HTTP {status}): {detail}: "
                        f"{_cut(query)}",
                    )
                problem, reason = f"HTTP {status}: {detail}", "http_error"
            if attempt < s.attempts - 1:
                if deadline is not None and time.monotonic() + backoff >= deadline:
                    raise self._error(
                        "deadline",
                        f"prometheus {s.url}: {problem}; no time left for a retry before the "
                        f"run's deadline (after {attempt + 1} attempt(s))",
                    )
                self.sleep(backoff)
                backoff *= 2
        raise self._error(
            reason, f"prometheus {s.url}: {problem} (gave up after {s.attempts} attempt(s))"
        )

    def _get(self, target: str, deadline: float) -> tuple[int, bytes]:
        """One GET of ``target``, over by ``deadline`` (monotonic) whatever the server does.

        Returns:
            The status and the body (at most :data:`MAX_ANSWER_BYTES`).

        Raises:
            _Expired: the deadline passed.
            OSError, http.client.HTTPException: the exchange failed.
            SourceError: the answer is too large (``bad_response``).
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Expired
        dog = _Watchdog(remaining)
        sock: socket.socket | None = None
        try:
            per_read_s = min(self.settings.timeout_s, remaining)
            sock = socket.create_connection((self._host, self._port), timeout=per_read_s)
            dog.watch(sock)
            if self._https:
                sock = self._tls_context().wrap_socket(
                    sock, server_hostname=self._host, do_handshake_on_connect=False
                )
                dog.watch(sock)
                sock.do_handshake()
            conn = http.client.HTTPConnection(self._host, self._port, timeout=per_read_s)
            conn.sock = sock
            conn.request("GET", target, headers=self._headers)
            answer = conn.getresponse()
            body = bytearray()
            while chunk := answer.read1(65_536):
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise self._error(
                        "bad_response",
                        f"prometheus {self.settings.url}: answer larger than "
                        f"{MAX_ANSWER_BYTES >> 20} MiB (one series expected)",
                    )
                if time.monotonic() >= deadline:
                    raise _Expired
            return answer.status, bytes(body)
        except ssl.SSLCertVerificationError:
            raise
        except (OSError, http.client.HTTPException):
            if dog.fired or time.monotonic() >= deadline:
                raise _Expired from None
            raise
        finally:
            dog.stop()
            if sock is not None:
                sock.close()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            s = self.settings
            try:
                ctx = ssl.create_default_context(cafile=s.ca_file if s.verify_tls else None)
            except (OSError, ssl.SSLError) as exc:
                raise self._error(
                    "unreachable", f"prometheus {s.url}: cannot load ca_file {s.ca_file}: "
                    f"{_short(exc)}"
                ) from None
            if not s.verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._tls = ctx
        return self._tls

    def _host_header(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        default = 443 if self._https else 80
        return host if self._port == default else f"{host}:{self._port}"

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def _error(self, reason: str, message: str) -> SourceError:
        return SourceError(reason, self._redact(message))


def check_history(
    rps: pd.Series,
    *,
    now: pd.Timestamp,
    data: DataSettings,
    recent: pd.Timedelta = RECENT_SPAN,
    source: str = "rps",
) -> tuple[pd.Series, HistoryQuality]:
    """Refuse a history that must not be acted on; trim the trailing points without data.

    Rules, in order: some data at all; the newest sample at most ``data.max_staleness_s``
    before ``now``; no negative or infinite value and none above ``data.max_rps``; no
    unconfirmed jump at the end (below); at most ``data.max_missing_share`` of the points
    missing; no run of missing points longer than ``data.max_gap_steps`` in the ``recent`` span
    before the newest sample (the context a forecast reads; older gaps are filled by the
    models).

    A jump is a sample above ``data.jump_factor`` times the recent robust maximum: the highest
    running median of ``2c - 1`` points (``c = data.jump_confirm_steps``) over the ``recent``
    span before it, at least ``data.jump_floor_rps``. Fewer than ``c`` outliers in a row cannot
    move that median, so a glitch never raises its own reference, and a real surge that lasts
    ``c`` samples becomes the new reference. A jump of fewer than ``c`` consecutive samples
    (gaps skipped) at the end refuses the history (``implausible``: nothing may act on it until
    it is confirmed); an older one that did not last is dropped (NaN) and counted.

    Returns:
        The history up to its newest sample (NaN gaps kept), and what was found.

    Raises:
        SourceError: ``missing``, ``stale``, ``implausible`` or ``gappy``.
    """
    values = rps.to_numpy(dtype=np.float64).copy()
    valid = np.flatnonzero(~np.isnan(values))
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
    values = values[: valid[-1] + 1]
    index = rps.index[: valid[-1] + 1]
    bad = np.flatnonzero(np.isinf(values) | (values < 0))
    if bad.size:
        raise SourceError(
            "implausible",
            f"{source}: implausible: {bad.size} negative or infinite value(s), e.g. "
            f"{values[bad[0]]:g} at {format_time(index[bad[0]])}",
        )
    if data.max_rps is not None:
        above = np.flatnonzero(values > data.max_rps)
        if above.size:
            top = int(above[np.argmax(values[above])])
            raise SourceError(
                "implausible",
                f"{source}: implausible: {above.size} sample(s) above data.max_rps="
                f"{data.max_rps:g}, e.g. {values[top]:g} rps at {format_time(index[top])}",
            )
    step = (index[1] - index[0]) if len(index) > 1 else pd.Timedelta(seconds=data.step_s)
    window = max(1, int(pd.Timedelta(recent) / step))
    dropped = _unconfirmed_jumps(values, index, data, window, source)
    values[dropped] = np.nan
    missing = np.isnan(values)
    share = float(missing.mean())
    if share > data.max_missing_share:
        raise SourceError(
            "gappy",
            f"{source}: {missing.sum()} of {missing.size} points missing ({share:.0%}, limit "
            f"{data.max_missing_share:.0%})",
        )
    start = index.searchsorted(last_at - recent)
    runs = nan_runs(missing[start:])
    longest = int(runs[:, 1].max()) if len(runs) else 0
    if longest > data.max_gap_steps:
        first, length = (int(x) for x in runs[np.argmax(runs[:, 1])])
        at = index[start + first]
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
        dropped_points=int(dropped.size),
    )
    trimmed = pd.Series(values, index=index, name=rps.name)
    return trimmed, quality


def jump_reference(values: np.ndarray, data: DataSettings, window: int) -> np.ndarray:
    """Per point, the robust maximum a jump is measured against (rps): the highest
    ``2c - 1``-point running median (at least ``c`` points with data) over the ``window``
    points before it, at least ``data.jump_floor_rps``."""
    c = data.jump_confirm_steps
    median = pd.Series(values).rolling(2 * c - 1, min_periods=c).median()
    before = median.shift(1).rolling(window, min_periods=1).max().to_numpy()
    return np.fmax(before, data.jump_floor_rps)


def _unconfirmed_jumps(
    values: np.ndarray, index: pd.DatetimeIndex, data: DataSettings, window: int, source: str
) -> np.ndarray:
    """Positions of older jumps to drop; raises for an unconfirmed jump at the end."""
    c = data.jump_confirm_steps
    reference = jump_reference(values, data, window)
    valid = np.flatnonzero(~np.isnan(values))
    jumped = values[valid] > data.jump_factor * reference[valid]
    if not jumped.any():
        return np.array([], dtype=np.int64)
    # runs of jumps among consecutive samples with data (gaps neither break nor extend a run)
    edges = np.diff(np.concatenate(([0], jumped.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    drop = []
    for a, b in zip(starts, stops, strict=True):
        if b - a >= c:
            continue  # confirmed: a real change of level
        if b == len(valid):
            pos = valid[a:b]
            top = int(pos[np.argmax(values[pos])])
            raise SourceError(
                "implausible",
                f"{source}: implausible: unconfirmed jump: the newest {b - a} sample(s) reach "
                f"{values[top]:g} rps at {format_time(index[top])}, over {data.jump_factor:g}x "
                f"the recent robust maximum {reference[pos[0]]:g} rps; the history is used "
                f"once {c} samples in a row confirm it",
            )
        drop.extend(valid[a:b])
    return np.array(drop, dtype=np.int64)


def _matrix(body: bytes, url: str, redact: Callable[[str], str]) -> list:
    """The ``result`` of a successful range query's JSON answer."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise SourceError("bad_response", f"prometheus {url}: malformed answer: not JSON") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if (
        not isinstance(data, dict)
        or doc.get("status") != "success"
        or data.get("resultType") != "matrix"
        or not isinstance(data.get("result"), list)
    ):
        what = redact(_cut(str(doc), 120))
        raise SourceError(
            "bad_response", f"prometheus {url}: malformed answer: not a range result: {what}"
        )
    return data["result"]


def _one_series(result: list, query: str) -> list[tuple[float, float]]:
    if not result:
        return []
    if len(result) > 1:
        labels = [r.get("metric", {}) if isinstance(r, dict) else r for r in result[:3]]
        raise SourceError(
            "bad_query",
            f"query returned {len(result)} series (e.g. {_cut(str(labels), 200)}); aggregate "
            f"it into one (sum(...)): {_cut(query)}",
        )
    try:
        return [(float(ts), float(v)) for ts, v in result[0]["values"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise SourceError(
            "bad_response", f"prometheus: malformed series: {_cut(str(exc))}"
        ) from None


def _epoch(ts: pd.Timestamp) -> str:
    """Unix time in seconds with millisecond precision (what the API takes)."""
    return f"{pd.Timestamp(ts).value / 1e9:.3f}"


def _detail(body: bytes) -> str:
    """The Prometheus error message from an error answer's JSON body, else its start."""
    text = body[:4096].decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return _cut(doc["error"])
    except (ValueError, RecursionError):
        pass
    return _cut(text) or "(empty answer)"


def _cut(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    one = " ".join(str(text).split())
    return one if len(one) <= limit else f"{one[: limit - 3]}..."


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    if "Connection refused" in text:
        return "connection refused"
    return f"{type(exc).__name__}: {text[:200]}"
