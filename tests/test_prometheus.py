"""The Prometheus source against a real Prometheus (Debian package) with a backfilled trace:
values, chunking under the 11,000-point limit, retries, auth, TLS defaults, and the checks that
refuse stale, missing or gappy histories."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import promtest
import pytest

from surgecast.prometheus import PrometheusSource, SourceError, check_history, chunks, grid
from surgecast.settings import AuthSettings, DataSettings, PrometheusSettings

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
        (AuthSettings("bearer", secret_env="T", secret="tok"), "Bearer tok"),
        (AuthSettings("basic", username="sc", secret_env="P", secret="pw"), "Basic c2M6cHc="),
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


def test_tls_verification_is_on_by_default():
    assert PrometheusSource(PrometheusSettings(url="https://p:9090")).client._session.verify is True
    with_ca = PrometheusSettings(url="https://p:9090", ca_file="/etc/ca.pem")
    assert PrometheusSource(with_ca).client._session.verify == "/etc/ca.pem"
    off = PrometheusSettings(url="https://p:9090", verify_tls=False)
    assert PrometheusSource(off).client._session.verify is False
