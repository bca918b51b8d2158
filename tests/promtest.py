"""Real servers for the pipeline's tests: Prometheus with a backfilled trace, the Pushgateway,
and an HTTP server that answers every request with an error.

Prometheus and the Pushgateway are the Debian packages' binaries, started on 127.0.0.1 and a
free port with temporary storage (moved to another port if that one was taken before the binary
bound it), and stopped by the tests; one that exits or never becomes ready fails with its log.

A trace is backfilled as a counter ``http_requests_total{service=...}`` sampled every 30 s, so
that ``rate(...[1m])`` evaluated at a whole minute T is the trace's rps of the minute that ends
at T (the minute that starts at T - 1 min in the CSV). Minutes without data get no samples, so
they come back as gaps (the first minute after a gap is still exact: rate() extrapolates its two
samples to the window).

``promtool tsdb create-blocks-from openmetrics`` writes the blocks straight into the storage
folder before Prometheus starts. Blocks must lie before the server's head, so traces are shifted
to end in the past of the wall clock (:func:`trace_end`); the tests derive their ``now`` from
the data, never from the clock.
"""

from __future__ import annotations

import atexit
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd

SAMPLE_EVERY_S = 30
METRIC = "http_requests"


def have_binaries(*names: str) -> bool:
    return all(shutil.which(n) for n in names)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trace_end(hours_ago: float = 3.0) -> pd.Timestamp:
    """A whole minute ``hours_ago`` before the wall clock: where backfilled traces end."""
    return (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=hours_ago)).floor("1min")


def shift(rps: pd.Series, end: pd.Timestamp) -> pd.Series:
    """The trace moved so that its last minute starts at ``end``."""
    return pd.Series(rps.to_numpy(), index=rps.index + (end - rps.index[-1]), name="rps")


def counter_lines(labels: str, rps: pd.Series, every_s: int = SAMPLE_EVERY_S) -> list[str]:
    """OpenMetrics sample lines of a counter whose rate is ``rps`` (1-min rows, NaN: no data)."""
    step_s = int((rps.index[1] - rps.index[0]).total_seconds())
    per_step = step_s // every_s
    start_s = int(rps.index[0].timestamp())
    values = rps.to_numpy(dtype=np.float64)
    lines = []
    total = 0.0
    for k, r in enumerate(values):
        if not np.isfinite(r):
            continue
        t0 = start_s + k * step_s
        if k == 0:
            lines.append(f"{METRIC}_total{{{labels}}} {total:.6f} {t0}")
        for j in range(1, per_step + 1):
            total += r * every_s
            lines.append(f"{METRIC}_total{{{labels}}} {total:.6f} {t0 + j * every_s}")
    return lines


def write_openmetrics(path: Path, traces: Mapping[str, pd.Series]) -> Path:
    """One counter series per service: ``{service: rps}`` -> an OpenMetrics file."""
    with path.open("w", encoding="utf-8") as fh:
        fh.write(f"# HELP {METRIC} Requests served.\n# TYPE {METRIC} counter\n")
        for service, rps in traces.items():
            fh.write("\n".join(counter_lines(f'service="{service}"', rps)) + "\n")
        fh.write("# EOF\n")
    return path


def backfill(openmetrics: Path, storage: Path) -> None:
    storage.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", str(openmetrics),
         str(storage)],
        check=True,
        capture_output=True,
        text=True,
    )


class AddressInUse(RuntimeError):
    """The server could not bind its port (another process took it since it was chosen)."""


class _Process:
    """A binary on a loopback port, ready when ``ready_path`` answers 200.

    ``port`` None picks a free one. A port is chosen before the binary binds it, so another
    process may take it in between: :meth:`start` then retries on a fresh port. A server that
    exits or never becomes ready raises with the tail of its log.
    """

    name = ""
    ready_path = "/-/ready"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout_s: float = 60.0, *, bind_attempts: int = 5):
        """Start and wait until ready (at most ``timeout_s`` s per attempt); on "address already
        in use" try again on another free port, ``bind_attempts`` times in all.

        Raises:
            RuntimeError: the server exited, never became ready, or found no free port; the
                message carries the tail of its log.
        """
        for _ in range(bind_attempts):
            try:
                return self._start_once(timeout_s)
            except AddressInUse:
                self.port = free_port()
        raise RuntimeError(
            f"{self.name} could not bind a port in {bind_attempts} attempts; log tail:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, chars: int = 2000, since: int = 0) -> str:
        if not self.log.exists():
            return "(no log)"
        return self.log.read_bytes()[since:].decode(errors="replace")[-chars:]

    def _start_once(self, timeout_s: float):
        self.workdir.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, tail = self.proc.returncode, self.log_tail(since=offset)
                self.proc = None
                if "address already in use" in tail.lower():
                    raise AddressInUse(f"{self.name}: port {self.port} is taken")
                raise RuntimeError(f"{self.name} exited with code {code}; log tail:\n{tail}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.name} not ready at {self.url}{self.ready_path} after {timeout_s} s; "
            f"log tail:\n{self.log_tail(since=offset)}"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextmanager
def running(server: _Process, timeout_s: float = 60.0) -> Iterator[_Process]:
    """``server`` started (ready, or a RuntimeError with its log tail) for the ``with`` block,
    stopped after it. For function-scoped fixtures::

        with promtest.running(promtest.Pushgateway(tmp_path / "pushgateway")) as gateway:
            yield gateway.url
    """
    server.start(timeout_s)
    try:
        yield server
    finally:
        server.stop()


class Prometheus(_Process):
    """``prometheus`` with no scrape targets, serving the blocks in ``storage``."""

    name = "prometheus"

    def __init__(self, workdir: Path, storage: Path, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.storage = storage
        self.config = workdir / "prometheus.yml"

    def args(self) -> list[str]:
        self.config.write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
        return [
            "prometheus",
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.storage}",
            "--storage.tsdb.retention.time=3650d",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def query(self, expr: str, at: pd.Timestamp) -> list:
        url = f"{self.url}/api/v1/query?query={urllib.request.quote(expr)}&time={at.timestamp()}"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())["data"]["result"]


class Pushgateway(_Process):
    """``prometheus-pushgateway`` without persistence."""

    name = "pushgateway"

    def args(self) -> list[str]:
        return ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{self.port}"]

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return r.read().decode()

    def samples(self, name: str) -> list[str]:
        """Exposition lines of metric ``name`` (with labels and value)."""
        return [
            line
            for line in self.metrics().splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        ]

    def clear(self) -> None:
        req = urllib.request.Request(self.url + "/api/v1/admin/wipe", method="PUT")
        urllib.request.urlopen(req, timeout=10).close()


class ErrorServer:
    """Answers every request with ``status`` and a Prometheus-style error body; counts them."""

    def __init__(self, status: int = 500) -> None:
        self.status = status
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return None

            def do_GET(self) -> None:
                server.requests += 1
                body = json.dumps(
                    {"status": "error", "errorType": "internal", "error": "storage is on fire"}
                ).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ErrorServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------------------------
# one Prometheus for the whole session, with a fleet of services backfilled


@dataclass
class Fleet:
    """A running Prometheus holding one trace per service.

    Attributes:
        prometheus: the server.
        traces: service -> its trace (1-min rows, shifted to end at ``end``).
        end: start of the traces' last minute.
        now: ``end`` + 1 min: the newest evaluation time with data (rate() of the last minute).
    """

    prometheus: Prometheus
    traces: dict[str, pd.Series]
    end: pd.Timestamp

    @property
    def now(self) -> pd.Timestamp:
        return self.end + pd.Timedelta(minutes=1)

    @staticmethod
    def query(service: str) -> str:
        return f'sum(rate(http_requests_total{{service="{service}"}}[1m]))'


FLEET_SIZE = 50
FLEET_DAYS = 3.2
_shared: dict[str, object] = {}


def service_name(i: int) -> str:
    return f"svc-{i:02d}"


def fleet(root: Path, trace: pd.Series) -> Fleet:
    """The session's Prometheus (started once, stopped at exit) with :data:`FLEET_SIZE`
    services: service i is ``FLEET_DAYS`` days of ``trace`` starting about i x 5 h in."""
    if "fleet" not in _shared:
        end = trace_end()
        n = int(FLEET_DAYS * 1440)
        traces = {}
        for i in range(FLEET_SIZE):
            first = i * 300
            # every trace ends on data (not in the source trace's nightly half-hour gap)
            while trace.iloc[first + n - 10 : first + n].isna().any():
                first += 30
            traces[service_name(i)] = shift(trace.iloc[first : first + n], end)
        root.mkdir(parents=True, exist_ok=True)
        backfill(write_openmetrics(root / "fleet.om", traces), root / "tsdb")
        (root / "fleet.om").unlink()
        server = Prometheus(root, root / "tsdb").start()
        atexit.register(server.stop)
        _shared["fleet"] = Fleet(server, traces, end)
    return _shared["fleet"]


def pushgateway(root: Path) -> Pushgateway:
    """The session's Pushgateway (started once, stopped at exit)."""
    if "pushgateway" not in _shared:
        server = Pushgateway(root).start()
        atexit.register(server.stop)
        _shared["pushgateway"] = server
    return _shared["pushgateway"]


def write_config(path: Path, *, services: list[dict], defaults: dict | None = None,
                 **fleet_keys) -> Path:
    """A surgecast service config (YAML) from plain data."""
    import yaml

    data = dict(fleet_keys)
    data["defaults"] = defaults or {}
    data["services"] = services
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
