"""The Prometheus source against a real Prometheus (Debian package) with a backfilled trace:
values, chunking under the 11,000-point limit, retries, auth, TLS, deadlines against servers
that stall or dribble, secrets kept out of messages, and the checks that refuse stale, missing,
gappy or implausible histories."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import promtest
import pytest

from surgecast.live.prometheus import (
    MAX_ANSWER_BYTES,
    PrometheusSource,
    SourceError,
    check_history,
    chunks,
    grid,
    jump_reference,
)
from surgecast.offline.sources import load_rps_csv
from surgecast.settings import AuthSettings, DataSettings, PrometheusSettings

REPO = Path(__file__).resolve().parents[1]
T0 = pd.Timestamp("2024-01-01T00:00:00Z")

pytestmark = pytest.mark.skipif(
    not promtest.have_binaries("prometheus", "promtool"),
    reason="needs the Debian package prometheus (scripts/test installs it)",
)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory, twitter_1min):
    return promtest.fleet(tmp_path_factory.getbasetemp() / "prometheus", twitter_1min)


def _source(url: str, **kwargs) -> tuple[PrometheusSource, list[float]]:
    waits: list[float] = []
    settings = PrometheusSettings(url=url, **{"attempts": 3, "backoff_s": 0.5, **kwargs})
    return PrometheusSource(settings, sleep=waits.append), waits


def test_rate_of_the_backfilled_counter_is_the_trace(fleet):
    source, _ = _source(fleet.prometheus.url)
    rps = source.read(fleet.query("svc-03"), end=fleet.now, span=pd.Timedelta(days=2),
                      step_s=60)
    assert rps.name == "rps" and str(rps.index.tz) == "UTC"
    assert rps.index[-1] == fleet.now and len(rps) == 2 * 1440 + 1
    assert (np.diff(rps.index.asi8) == 60 * 10**9).all()
    # rate() at T covers the minute before T: the trace's row that starts at T - 1 min
    trace = fleet.traces["svc-03"]
    expected = trace.reindex(rps.index - pd.Timedelta(minutes=1)).to_numpy()
    both = np.isfinite(expected) & np.isfinite(rps.to_numpy())
    assert both.sum() > 2500
    np.testing.assert_allclose(rps.to_numpy()[both], expected[both], rtol=1e-6)
    # minutes without data come back as gaps, never as zeros
    assert np.isnan(rps.to_numpy()[np.isnan(expected)]).all()
    assert np.isnan(rps.to_numpy()).sum() >= np.isnan(expected).sum()


def test_long_ranges_are_split_under_the_points_limit(fleet):
    whole, _ = _source(fleet.prometheus.url)
    small, _ = _source(fleet.prometheus.url, max_points=500)
    span = pd.Timedelta(days=3)
    a = whole.read(fleet.query("svc-04"), end=fleet.now, span=span, step_s=60)
    b = small.read(fleet.query("svc-04"), end=fleet.now, span=span, step_s=60)
    assert whole.queries == 1 and small.queries == int(np.ceil(len(a) / 500))
    pd.testing.assert_series_equal(a, b)
    index = grid(fleet.now, pd.Timedelta(days=8), 60)
    pieces = chunks(index, 11_000)
    assert len(index) == 11_521 and [len(index[(index >= s) & (index <= e)])
                                     for s, e in pieces] == [11_000, 521]


def test_stale_missing_and_gappy_histories_are_refused(fleet):
    source, _ = _source(fleet.prometheus.url)
    data = DataSettings(max_staleness_s=180, max_gap_steps=40)
    later = fleet.now + pd.Timedelta(hours=1)
    rps = source.read(fleet.query("svc-05"), end=later, span=pd.Timedelta(days=2), step_s=60)
    with pytest.raises(SourceError, match=r"stale: newest sample .* is 3600 s before now") as err:
        check_history(rps, now=later, data=data)
    assert err.value.reason == "stale"
    good, quality = check_history(
        source.read(fleet.query("svc-05"), end=fleet.now, span=pd.Timedelta(days=2), step_s=60),
        now=fleet.now,
        data=data,
    )
    assert quality.staleness_s == 0 and good.index[-1] == fleet.now
    assert 0 < quality.missing_points < 100  # the trace's own nightly gap
    with pytest.raises(SourceError, match=r"gap of \d+ missing points") as err:
        check_history(good, now=fleet.now, data=DataSettings(max_gap_steps=5))
    assert err.value.reason == "gappy"
    nothing = source.read(fleet.query("no-such-service"), end=fleet.now,
                          span=pd.Timedelta(hours=6), step_s=60)
    with pytest.raises(SourceError, match="no data from") as err:
        check_history(nothing, now=fleet.now, data=data)
    assert err.value.reason == "missing"


def test_server_errors_are_retried_with_backoff_then_reported():
    server = promtest.ErrorServer(500).start()
    try:
        source, waits = _source(server.url)
        with pytest.raises(SourceError, match=r"HTTP 500: storage is on fire .*3 attempt") as err:
            source.read("up", end=pd.Timestamp("2024-01-01T00:00:00Z"),
                        span=pd.Timedelta(hours=1), step_s=60)
        assert err.value.reason == "http_error"
        assert server.requests == 3 and waits == [0.5, 1.0]
    finally:
        server.stop()


def test_a_stopped_prometheus_is_unreachable(tmp_path):
    server = promtest.Prometheus(tmp_path, tmp_path / "tsdb").start()
    url = server.url
    server.stop()
    source, waits = _source(url, attempts=2, backoff_s=0.01)
    with pytest.raises(SourceError, match=r"connection refused .*2 attempt") as err:
        source.read("up", end=pd.Timestamp("2024-01-01T00:00:00Z"),
                    span=pd.Timedelta(hours=1), step_s=60)
    assert err.value.reason == "unreachable" and waits == [0.01]


def test_bad_queries_are_not_retried(fleet):
    source, waits = _source(fleet.prometheus.url)
    with pytest.raises(SourceError, match=r"query refused \(HTTP 400\)") as err:
        source.read("sum(rate(", end=fleet.now, span=pd.Timedelta(hours=1), step_s=60)
    assert err.value.reason == "bad_query" and waits == [] and source.queries == 1
    with pytest.raises(SourceError, match="returned 2 series") as err:
        source.read('rate(http_requests_total{service=~"svc-0[12]"}[1m])', end=fleet.now,
                    span=pd.Timedelta(hours=1), step_s=60)
    assert err.value.reason == "bad_query"


class _Recorder:
    """Answers an empty matrix and keeps the headers of every request."""

    def __init__(self) -> None:
        self.headers: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return None

            def do_GET(self) -> None:
                recorder.headers.append(dict(self.headers))
                body = json.dumps({"status": "success",
                                   "data": {"resultType": "matrix", "result": []}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.mark.parametrize(
    ("auth", "header"),
    [
        (AuthSettings(type="bearer", secret_env="T", secret="tok"), "Bearer tok"),
        (AuthSettings(type="basic", username="sc", secret_env="P", secret="pw"), "Basic c2M6cHc="),
        (AuthSettings(), None),
    ],
)
def test_auth_is_sent_as_configured(auth, header):
    recorder = _Recorder()
    try:
        source, _ = _source(recorder.url, auth=auth)
        rps = source.read("up", end=pd.Timestamp("2024-01-01T00:00:00Z"),
                          span=pd.Timedelta(minutes=10), step_s=60)
        assert rps.isna().all() and len(rps) == 11
        assert recorder.headers[0].get("Authorization") == header
    finally:
        recorder.httpd.shutdown()


def _matrix(values: list[tuple[float, str]]) -> bytes:
    result = [{"metric": {}, "values": values}] if values else []
    return json.dumps(
        {"status": "success", "data": {"resultType": "matrix", "result": result}}
    ).encode()


class _Scripted:
    """A loopback HTTP server whose answer is ``answer(handler) -> (status, headers, body)``;
    keeps the path and headers of every request."""

    def __init__(self, answer) -> None:
        self.requests: list[tuple[str, dict]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return None

            def do_GET(self) -> None:
                scripted.requests.append((self.path, dict(self.headers)))
                status, headers, body = answer(self)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers: list[_Scripted] = []

    def start(answer) -> _Scripted:
        servers.append(_Scripted(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


class _Dribbler:
    """A raw socket server on loopback that reads the request, then sends ``payload`` one byte
    every ``every_s`` seconds (``payload`` empty: never answers), until stopped."""

    def __init__(self, payload: bytes, every_s: float = 1.0) -> None:
        self.payload, self.every_s = payload, every_s
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._dribble, args=(conn,), daemon=True).start()

    def _dribble(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65_536)
                for i in range(len(self.payload)):
                    if self.stopped.wait(self.every_s):
                        return
                    conn.sendall(self.payload[i : i + 1])
                self.stopped.wait()
            except OSError:
                return

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()


_SLOW_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
)


@pytest.mark.parametrize("payload", [_SLOW_ANSWER + b"{" * 100, b""],
                         ids=["one-byte-per-second", "silent"])
def test_a_server_that_dribbles_or_stalls_is_cut_off_at_the_query_deadline(payload):
    server = _Dribbler(payload, every_s=0.5)
    try:
        # a per-read timeout of 10 s never fires on a byte every 0.5 s: only the deadline can
        source, _ = _source(server.url, attempts=1, timeout_s=10, query_deadline_s=1.5)
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"no complete answer within query_deadline_s=1.5"
                           ) as err:
            source.read("up", end=T0, span=pd.Timedelta(hours=1), step_s=60)
        elapsed = time.monotonic() - started
        assert err.value.reason == "deadline"
        assert 1.4 <= elapsed <= 1.5 + 0.5, elapsed
    finally:
        server.stop()


def test_the_run_deadline_bounds_the_whole_read_retries_included():
    server = _Dribbler(_SLOW_ANSWER + b"{" * 100, every_s=0.3)
    try:
        source, waits = _source(server.url, attempts=5, backoff_s=0.01, query_deadline_s=1.0)
        started = time.monotonic()
        with pytest.raises(SourceError, match="run's deadline") as err:
            source.read("up", end=T0, span=pd.Timedelta(hours=1), step_s=60,
                        deadline=started + 2.5)
        elapsed = time.monotonic() - started
        assert err.value.reason == "deadline"
        assert 2.4 <= elapsed <= 2.5 + 0.5, elapsed
        assert source.queries == 3 and waits == [0.01, 0.02]  # 1 s, 1 s, then the last 0.5 s
    finally:
        server.stop()


def test_a_deadline_already_past_or_a_backoff_past_it_reads_nothing_more(scripted):
    server = scripted(lambda h: (503, {}, b'{"status":"error","error":"busy"}'))
    source, waits = _source(server.url, attempts=3, backoff_s=30)
    with pytest.raises(SourceError, match=r"HTTP 503: busy; no time left for a retry") as err:
        source.read("up", end=T0, span=pd.Timedelta(hours=1), step_s=60,
                    deadline=time.monotonic() + 5)
    assert err.value.reason == "deadline" and waits == [] and len(server.requests) == 1
    with pytest.raises(SourceError, match=r"deadline passed after 0 attempt") as err:
        source.read("up", end=T0, span=pd.Timedelta(hours=1), step_s=60,
                    deadline=time.monotonic() - 1)
    assert err.value.reason == "deadline" and len(server.requests) == 1


def test_a_secret_the_server_echoes_never_reaches_a_message(scripted):
    def echo(handler):
        said = handler.headers.get("Authorization", "")
        return 400, {}, json.dumps({"status": "error", "error": f"bad header {said}"}).encode()

    server = scripted(echo)
    for auth in (AuthSettings(type="bearer", secret_env="T", secret="tok-3141592653"),
                 AuthSettings(type="basic", username="sc", secret_env="P", secret="pw-2718281828")):
        source, _ = _source(server.url, auth=auth)
        with pytest.raises(SourceError) as err:
            source.read("up", end=T0, span=pd.Timedelta(minutes=10), step_s=60)
        text = str(err.value)
        assert "bad header" in text and "[redacted]" in text
        assert "3141592653" not in text and "2718281828" not in text
        assert "c2M6cHctMjcxODI4MTgyOA==" not in text  # base64 of sc:pw-2718281828
    assert server.requests[0][1]["Authorization"] == "Bearer tok-3141592653"


def test_redirects_are_not_followed_so_credentials_stay_home(scripted):
    elsewhere = scripted(lambda h: (200, {}, _matrix([])))
    home = scripted(lambda h: (302, {"Location": elsewhere.url + h.path}, b""))
    auth = AuthSettings(type="bearer", secret_env="T", secret="tok")
    source, waits = _source(home.url, auth=auth)
    with pytest.raises(SourceError, match=r"HTTP 302: redirect not followed") as err:
        source.read("up", end=T0, span=pd.Timedelta(minutes=10), step_s=60)
    assert err.value.reason == "http_error" and waits == []
    assert len(home.requests) == 1 and elsewhere.requests == []


def test_an_oversized_or_malformed_answer_is_refused(scripted):
    huge = scripted(lambda h: (200, {}, b" " * (MAX_ANSWER_BYTES + 10)))
    source, _ = _source(huge.url)
    with pytest.raises(SourceError, match=r"answer larger than 16 MiB") as err:
        source.read("up", end=T0, span=pd.Timedelta(minutes=10), step_s=60)
    assert err.value.reason == "bad_response"
    for body in (b"<html>", b'{"status": "success", "data": {"resultType": "vector"}}',
                 b"[" * 100_000):
        server = scripted(lambda h, body=body: (200, {}, body))
        with pytest.raises(SourceError, match="malformed answer") as err:
            _source(server.url)[0].read("up", end=T0, span=pd.Timedelta(minutes=10), step_s=60)
        assert err.value.reason == "bad_response"


@pytest.mark.parametrize("value", ["-3", "+Inf", "-Inf"])
def test_negative_or_infinite_rates_refuse_the_read(scripted, value):
    stamps = [(T0 - pd.Timedelta(minutes=m)).timestamp() for m in range(3, -1, -1)]
    values = [(t, "5") for t in stamps[:-1]] + [(stamps[-1], value)]
    server = scripted(lambda h: (200, {}, _matrix(values)))
    with pytest.raises(SourceError, match=r"negative or infinite value") as err:
        _source(server.url)[0].read("up", end=T0, span=pd.Timedelta(minutes=3), step_s=60)
    assert err.value.reason == "implausible"
    # NaN is Prometheus' "no value" (0/0): a gap, not a refusal
    nan = [(t, "5") for t in stamps[:-1]] + [(stamps[-1], "NaN")]
    ok = scripted(lambda h: (200, {}, _matrix(nan)))
    rps = _source(ok.url)[0].read("up", end=T0, span=pd.Timedelta(minutes=3), step_s=60)
    assert rps.tolist()[:3] == [5.0, 5.0, 5.0] and np.isnan(rps.iloc[-1])


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return folder / "cert.pem", folder / "key.pem"


def test_tls_is_verified_by_default_against_a_real_tls_server(scripted, tls_cert):
    cert, key = tls_cert
    server = scripted(lambda h: (200, {}, _matrix([])))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.httpd.socket = ctx.wrap_socket(server.httpd.socket, server_side=True)
    url = server.url.replace("http://", "https://")
    read = dict(end=T0, span=pd.Timedelta(minutes=10), step_s=60)
    strict, waits = _source(url)
    assert strict.tls_verify is True
    with pytest.raises(SourceError, match=r"TLS verification failed: self.signed") as err:
        strict.read("up", **read)
    assert err.value.reason == "unreachable" and waits == []  # not retried
    with_ca, _ = _source(url, ca_file=str(cert))
    assert with_ca.tls_verify == str(cert) and with_ca.read("up", **read).isna().all()
    lab, _ = _source(url, verify_tls=False)
    assert lab.tls_verify is False and lab.read("up", **read).isna().all()
    assert len(server.requests) == 2  # the refused handshake never sent the request


# --------------------------------------------------------------------------------------------
# plausibility: one absurd sample must not scale a cluster


def _history(values, end=T0) -> pd.Series:
    index = pd.date_range(end=end, periods=len(values), freq="1min")
    return pd.Series(np.asarray(values, dtype=np.float64), index=index, name="rps")


def _day_of(twitter_1min: pd.Series, start: int = 2000, days: float = 3) -> pd.Series:
    window = twitter_1min.iloc[start : start + int(days * 1440)]
    return _history(window.to_numpy().copy())


def test_an_unconfirmed_jump_at_the_end_is_refused_until_confirmed(twitter_1min):
    base = _day_of(twitter_1min).to_numpy().copy()
    base[-10:] = 60.0
    data = DataSettings(max_gap_steps=40)
    for n in (1, 2):
        spiked = base.copy()
        spiked[-n:] = 1e9
        with pytest.raises(SourceError, match=rf"unconfirmed jump: the newest {n} sample") as e:
            check_history(_history(spiked), now=T0, data=data)
        assert e.value.reason == "implausible" and "1e+09 rps" in str(e.value)
    # the day's maximum is about 300 rps: 5000 is a jump; two samples of it are refused,
    # three in a row confirm a real change of level
    assert np.nanmax(base) < 500
    surge = base.copy()
    surge[-2:] = 5000.0
    with pytest.raises(SourceError, match="unconfirmed jump"):
        check_history(_history(surge), now=T0, data=data)
    surge[-3:] = 5000.0
    rps, quality = check_history(_history(surge), now=T0, data=data)
    assert rps.iloc[-1] == 5000.0 and quality.dropped_points == 0
    # the confirmation count is a setting
    with pytest.raises(SourceError, match="unconfirmed jump"):
        check_history(_history(surge), now=T0, data=DataSettings(jump_confirm_steps=5,
                                                                 max_gap_steps=40))


def test_an_older_jump_that_did_not_last_is_dropped_and_counted(twitter_1min):
    values = _day_of(twitter_1min).to_numpy().copy()
    values[-100:-98] = 1e9
    rps, quality = check_history(_history(values), now=T0, data=DataSettings(max_gap_steps=40))
    assert quality.dropped_points == 2 and rps.iloc[-100:-98].isna().all()
    assert rps.max() < 1000 and quality.to_dict()["dropped_points"] == 2


def test_a_gap_does_not_confirm_or_hide_a_jump():
    values = np.full(600, 50.0)
    values[-4:] = [1e9, np.nan, np.nan, 1e9]
    with pytest.raises(SourceError, match="newest 2 sample"):
        check_history(_history(values), now=T0, data=DataSettings())


def test_a_service_waking_from_zero_is_not_a_jump():
    values = np.zeros(600)
    values[-1] = 8.0  # below jump_factor x jump_floor_rps = 10 rps
    check_history(_history(values), now=T0, data=DataSettings())
    values[-1] = 11.0
    with pytest.raises(SourceError, match="unconfirmed jump"):
        check_history(_history(values), now=T0, data=DataSettings())


def test_the_ceiling_and_negative_or_infinite_values_are_refused():
    values = np.full(600, 50.0)
    values[100] = 900.0
    with pytest.raises(SourceError, match=r"1 sample\(s\) above data.max_rps=500, e.g. 900") as e:
        check_history(_history(values), now=T0, data=DataSettings(max_rps=500))
    assert e.value.reason == "implausible"
    for bad in (-1.0, np.inf):
        values = np.full(600, 50.0)
        values[300] = bad
        with pytest.raises(SourceError, match="negative or infinite") as e:
            check_history(_history(values), now=T0, data=DataSettings())
        assert e.value.reason == "implausible"


@pytest.mark.parametrize(
    ("trace", "step", "worst"),
    [("twitter_1min.csv", None, 1.2), ("azure_llm_code_2024_10s.csv", "1min", 1.3),
     ("azure_llm_code_2024_10s.csv", None, 1.5)],
)
def test_no_window_of_the_bundled_traces_is_refused_and_a_spike_always_is(trace, step, worst):
    """After its first day, no sample of the trace comes near the default jump factor (the
    reference looks back one day only, so this covers every window's points after its first
    day, whatever the window); 3-day
    windows ending every 30 minutes, and at every step within 30 minutes of the trace's
    sharpest rise, pass the default checks; the same windows ending in two 1e9 samples never
    do."""
    rps = load_rps_csv(REPO / "data" / trace, step=step)
    step_s = (rps.index[1] - rps.index[0]).total_seconds()
    data = DataSettings(step_s=step_s, max_gap_steps=10**5, max_missing_share=0.9)
    values = rps.to_numpy()
    day = int(86_400 / step_s)
    ratio = np.nanmax((values / jump_reference(values, data, day))[day:])
    assert ratio < worst < data.jump_factor / 2, ratio  # twitter: 1.14, azure: 1.29 and 1.46
    n = int(3 * 86_400 / step_s)
    rise = int(np.nanargmax(values[1:] / np.maximum(values[:-1], 1e-9))) + 1
    near = int(1800 / step_s)
    ends = sorted(set(range(min(n, len(rps)), len(rps) + 1, int(1800 / step_s)))
                  | set(range(max(rise - near, 2), min(rise + near, len(rps)) + 1)))
    checked = 0
    for end in ends:
        window = rps.iloc[max(0, end - n) : end]
        if window.isna().all() or np.isnan(window.iloc[-1]):
            continue
        at = window.index[-1]
        check_history(window, now=at, data=data)
        checked += 1
        if checked % 17 == 0:
            spiked = window.copy()
            spiked.iloc[-2:] = 1e9
            with pytest.raises(SourceError, match="unconfirmed jump"):
                check_history(spiked, now=at, data=data)
    assert checked > len(ends) * 0.9
