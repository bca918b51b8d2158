"""The service config and the Prometheus source cannot be turned against the cluster.

* A corpus of hostile YAML (wrong types, NaN and inf, huge numbers, empty files, lists where
  scalars go, unknown and duplicate keys, anchors and alias bombs, deep nesting) each gives one
  ``SettingsError`` line naming the file, the service and the field, never a traceback; a
  "billion laughs" file is refused before it expands.
* End to end against a real Prometheus and the fake Kubernetes API: two samples of 1e9 rps
  change nothing (the history is refused as implausible), and a secret configured for
  Prometheus never reaches an artifact, a record or a message.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import promtest
import pytest
from kubeapi.harness import FakeHarness
from typer.testing import CliRunner

from actuator.apply import RunOptions
from actuator.kube import RetryPolicy
from surgecast.cli import app
from surgecast.live.artifacts import ArtifactStore
from surgecast.live.pipeline import run_service
from surgecast.settings import MAX_CONFIG_BYTES, SettingsError, load_settings

SERVICE = """\
services:
  - name: resnet
    query: sum(rate(http_requests_total[1m]))
    namespace: inference
    deployment: resnet18
    profile: resnet18
    slo_ms: 750
    bounds: {min_replicas: 1, max_replicas: 20, min_cores: 1, max_cores: 8}
"""


def _sub(old: str, new: str) -> str:
    """The valid service above with ``old`` replaced by ``new``."""
    assert old in SERVICE
    return SERVICE.replace(old, new)


def _with(extra: str) -> str:
    """The valid service above with ``extra`` lines added to its table."""
    return SERVICE + "".join(f"    {line}\n" for line in extra.splitlines())


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
services:
  - name: resnet
    query: *i
"""

# (case id, file text, regex the message must match after "<file>: ")
CORPUS = [
    ("empty", "", r"expected a mapping at the top level, got nothing"),
    ("only-a-comment", "# nothing\n", r"expected a mapping at the top level"),
    ("a-list", "- a\n- b\n", r"expected a mapping at the top level, got a list"),
    ("a-scalar", "42\n", r"expected a mapping at the top level, got int"),
    ("not-yaml", "services: [\n", r"not valid YAML"),
    ("tab-indent", "services:\n\t- name: a\n", r"not valid YAML"),
    ("two-documents", SERVICE + "---\n" + SERVICE, r"not valid YAML"),
    ("services-empty", "services: []\n", r"services: expected a non-empty list"),
    ("services-a-mapping", "services: {name: a}\n", r"services: expected a non-empty list"),
    ("service-a-string", "services: [resnet]\n", r"services\[0\]: expected a mapping, got str"),
    ("unknown-fleet-key", SERVICE + "servics: []\n", r"unknown key\(s\) servics"),
    ("unknown-service-key", _with("replicas: 3"), r"service resnet: replicas: unknown key"),
    ("unknown-nested-key", _with("forecast: {horizon: 3}"),
     r"service resnet: forecast.horizon: unknown key"),
    ("duplicate-key", _with("slo_ms: 500"), r"not valid YAML at line 9: key 'slo_ms' given twice"),
    ("duplicate-fleet-key", SERVICE + "services: []\n", r"key 'services' given twice"),
    ("non-text-key", _with("1: x"), r"not valid YAML at line 9: keys must be text"),
    ("bool-key", _with("yes: x"), r"keys must be text"),
    ("complex-key", _with("? [a, b]\n: x"), r"keys must be text"),
    ("merge-key", _with("<<: {mode: active}"), r"keys must be text"),
    ("nan", _with("cold_start_s: .nan"), r"service resnet: cold_start_s: must be finite, got nan"),
    ("inf", _with("data: {step_s: .inf}"), r"service resnet: data.step_s: must be finite"),
    ("neg-inf", _sub("slo_ms: 750", "slo_ms: -.inf"), r"service resnet: slo_ms: must be finite"),
    ("huge-float", _sub("slo_ms: 750", "slo_ms: 1.0e+400"),
     r"service resnet: slo_ms: must be finite"),
    ("huge-int-as-float", _sub("slo_ms: 750", "slo_ms: " + "9" * 400),
     r"service resnet: slo_ms: 99999.* is out of range"),
    ("huge-int", _with("forecast: {horizon_steps: " + "9" * 400 + "}"),
     r"service resnet: forecast.horizon_steps: 99999.* is out of range"),
    ("big-horizon", _with("forecast: {horizon_steps: 100000000}"),
     r"service resnet: forecast.horizon_steps: must be an integer in 1..1440"),
    ("big-seed", _with("forecast: {seed: 1099511627776}"),
     r"service resnet: forecast.seed: must be an integer in 0..4294967295"),
    ("string-number", _with("cold_start_s: '60'"),
     r"service resnet: cold_start_s: expected a number, got '60'"),
    ("bool-number", _with("cold_start_s: true"),
     r"service resnet: cold_start_s: expected a number, got True"),
    ("float-int", _with("max_replica_step: 2.0"),
     r"service resnet: max_replica_step: expected an integer, got 2.0"),
    ("list-for-scalar", _sub("slo_ms: 750", "slo_ms: [750]"),
     r"service resnet: slo_ms: expected a number, got a list"),
    ("map-for-scalar", _with("mode: {active: true}"),
     r"service resnet: mode: expected text, got a mapping"),
    ("list-name", SERVICE.replace("name: resnet", "name: [resnet]"),
     r"services\[0\]: name: expected text, got a list"),
    ("null-name", SERVICE.replace("name: resnet", "name:"),
     r"services\[0\]: name: must be given a value, got null"),
    ("date-for-text", _with("container: 2024-01-01"),
     r"service resnet: container: expected text, got date"),
    ("binary", _with("container: !!binary aGVsbG8="),
     r"service resnet: container: expected text, got bytes"),
    ("python-tag", _with("container: !!python/object/apply:os.system ['true']"),
     r"not valid YAML at line 9: could not determine a constructor"),
    ("bounds-a-list", SERVICE.replace("{min_replicas: 1, max_replicas: 20, min_cores: 1, "
                                      "max_cores: 8}", "[1, 2]"),
     r"service resnet: bounds: expected a mapping, got a list"),
    ("scalar-for-table", SERVICE.replace("    bounds: {", "    forecast: 3\n    bounds: {"),
     r"service resnet: forecast: expected a mapping, got int"),
    ("null-step", _with("max_core_step: null"),
     r"service resnet: max_core_step: null no longer means unlimited"),
    ("null-table", SERVICE + "prometheus:\n  url:\n",
     r"prometheus.url: must be given a value, got null"),
    ("quantiles-nan", _with("forecast: {quantiles: [.nan]}"),
     r"service resnet: forecast.quantiles\[0\]: must be finite"),
    ("too-many-quantiles", _with("forecast: {quantiles: [" + ", ".join(["0.5"] * 500) + "]}"),
     r"service resnet: forecast.quantiles: at most 100 entries"),
    ("name-traversal", SERVICE.replace("name: resnet", "name: ../../.."),
     r"services\[0\]: name: '\.\./\.\./\.\.' is not a valid Kubernetes name"),
    ("name-with-nul", SERVICE.replace("name: resnet", 'name: "res\\0net"'),
     r"services\[0\]: name: .* is not a valid Kubernetes name"),
    ("profile-with-nul", SERVICE.replace("profile: resnet18", 'profile: "a\\0b"'),
     r"service resnet: profile: must not contain NUL"),
    ("profile-missing-user", SERVICE.replace("profile: resnet18", "profile: ~nosuchuser42/x"),
     r"service resnet: profile: .*cannot expand the home directory"),
    ("huge-string", _sub("query: sum", "query: " + "x" * 20_000 + "sum"),
     r"service resnet: query: must be a PromQL expression \(at most 10000"),
    ("too-many-workloads",
     SERVICE.replace("    deployment: resnet18\n", "    workloads: ["
                     + ", ".join(f"{{deployment: d{i}}}" for i in range(100)) + "]\n"),
     r"service resnet: workloads: at most 64 Deployments"),
    ("anchor", SERVICE.replace("slo_ms: 750", "slo_ms: &s 750"), r"anchors \(&name\) are not"),
    ("alias-bomb", BILLION_LAUGHS, r"not valid YAML at line 1: anchors \(&name\) are not allowed"),
    ("alias", SERVICE + "defaults: *x\n", r"not valid YAML at line 9: aliases \(\*name\) are not"),
    ("deep-nesting", "services: " + "[" * 50_000 + "]" * 50_000 + "\n", r"not valid YAML"),
    ("too-large", SERVICE + "#" * (MAX_CONFIG_BYTES + 1) + "\n", r"larger than 1048576 bytes"),
    ("not-utf8", SERVICE.replace("resnet18", "res\udcffnet"), r"cannot read: .*utf-8"),
    ("mode-yes", _with("mode: yes"), r"service resnet: mode: expected text, got True"),
    ("mode-active-default", "defaults: {mode: active}\n" + SERVICE,
     r"defaults.mode: active must be set in each service's own table"),
    ("defaults-a-list", "defaults: [1]\n" + SERVICE, r"defaults: expected a mapping, got a list"),
    ("retention-tiny", "artifacts: {retention_days: 0.0001}\n" + SERVICE,
     r"artifacts.retention_days: must be in \[1, 3650\] days"),
    ("interval-tiny", "run_interval_s: 0.001\n" + SERVICE,
     r"run_interval_s: must be in \[30, 3600\] s"),
    ("secret-in-url", "prometheus: {url: 'http://me:pa55word@p:9090'}\n" + SERVICE,
     r"prometheus.url: must not carry credentials"),
    ("bad-port", "prometheus: {url: 'http://p:99999'}\n" + SERVICE,
     r"prometheus.url: 'http://p:99999' is not an http\(s\) URL"),
    ("secret-env-bad-name", "prometheus: {url: 'https://p', auth: {type: bearer, "
     "secret_env: 'A=B'}}\n" + SERVICE, r"prometheus.auth.secret_env: 'A=B' is not an env"),
    ("basic-user-colon", "prometheus: {url: 'https://p', auth: {type: basic, username: 'a:b', "
     "secret_env: P}}\n" + SERVICE, r"prometheus.auth.username: must not contain ':'"),
]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "services.yaml"
    if "\udcff" in text:
        path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_every_bad_config_is_one_line_naming_file_service_and_field(tmp_path, text, message):
    path = _write(tmp_path, text)
    started = time.perf_counter()
    with pytest.raises(SettingsError) as err:  # anything else is a traceback
        load_settings(path)
    elapsed = time.perf_counter() - started
    text = str(err.value)
    assert "\n" not in text and len(text) < 400, text
    assert text.startswith(f"{path}: "), text
    assert re.search(message, text[len(str(path)) + 2 :]), text
    # nothing expands or loops: the slowest case (50,000 nested brackets on one line) takes
    # about 1.3 s in PyYAML's scanner before the nesting is refused
    assert elapsed < 5.0, elapsed


def test_the_corpus_is_not_trivially_valid(tmp_path):
    """The base the corpus mutates loads, so each refusal above is the mutation's doing."""
    assert load_settings(_write(tmp_path, SERVICE)).names == ["resnet"]


def test_a_billion_laughs_is_refused_before_it_expands(tmp_path):
    path = _write(tmp_path, BILLION_LAUGHS)
    started = time.perf_counter()
    with pytest.raises(SettingsError, match="anchors"):
        load_settings(path)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("case", ["alias-bomb", "null-step", "secret-in-url", "deep-nesting"])
def test_the_cli_exits_2_with_one_line_and_no_traceback(tmp_path, case):
    text = dict((c[0], c[1]) for c in CORPUS)[case]
    path = _write(tmp_path, text)
    result = CliRunner().invoke(app, ["run", "--config", str(path), "--check"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and str(path) in result.output
    assert "pa55word" not in result.output
    assert result.output.strip().count("\n") == 0, result.output


# --------------------------------------------------------------------------------------------
# end to end: real Prometheus, fake Kubernetes API


pytestmark_e2e = pytest.mark.skipif(
    not promtest.have_binaries("prometheus", "promtool"),
    reason="needs the Debian package prometheus",
)

FAST = RunOptions(retry=RetryPolicy(attempts=2, backoff_s=0.0), poll_s=0.0,
                  sleep=lambda s: None)
DEFAULTS = {
    "namespace": "inference",
    "profile": "resnet18",
    "slo_ms": 750,
    "resize_timeout_s": 0,
    "bounds": {"min_replicas": 1, "max_replicas": 40, "min_cores": 1, "max_cores": 16},
    "data": {"max_gap_steps": 40},
    "forecast": {"model": "seasonal_naive", "history_days": 2.5, "fit_days": 3.1},
}


@pytest.fixture(scope="module")
def spiky(tmp_path_factory, twitter_1min):
    """A Prometheus of its own serving ``steady`` (the Twitter trace) and ``spiky`` (the same
    trace whose last two minutes are 1e9 rps: the review's absurd samples)."""
    root = tmp_path_factory.mktemp("spiky-prometheus")
    end = promtest.trace_end()
    n = int(3.2 * 1440)
    first = 2000
    while twitter_1min.iloc[first + n - 10 : first + n].isna().any():
        first += 30
    steady = promtest.shift(twitter_1min.iloc[first : first + n], end)
    spike = steady.copy()
    spike.iloc[-2:] = 1e9
    promtest.backfill(promtest.write_openmetrics(root / "t.om", {"steady": steady,
                                                                   "spiky": spike}),
                      root / "tsdb")
    server = promtest.Prometheus(root, root / "tsdb").start()
    yield server, end + pd.Timedelta(minutes=1)
    server.stop()


@pytest.fixture
def kube():
    h = FakeHarness(start_delay_s=0.0, resize_delay_s=0.0)
    yield h
    h.close()


def _settings(tmp_path: Path, name: str, url: str, kube: FakeHarness, **prometheus):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = promtest.write_config(
        tmp_path / "services.yaml",
        services=[{"name": name, "query": promtest.Fleet.query(name), "deployment": name,
                   "mode": "active"}],
        defaults=DEFAULTS,
        prometheus={"url": url, "attempts": 2, "backoff_s": 0.01, "timeout_s": 5, **prometheus},
        artifacts={"root": str(tmp_path / "store"), "actuator_dir": str(tmp_path / "records")},
        kubernetes={"host": kube.server.url},
    )
    return load_settings(path, environ={"PROM_TOKEN": TOKEN})


TOKEN = "tok-5ecret-31415926"


@pytestmark_e2e
def test_two_absurd_samples_change_nothing(tmp_path, spiky, kube):
    server, now = spiky
    kube.add_deployment("spiky", replicas=4, cores=2)
    before = kube.state("spiky")
    settings = _settings(tmp_path, "spiky", server.url, kube)
    run = run_service(settings, "spiky", now, api=kube.api, options=FAST)
    record = ArtifactStore.read_json(run.record_uri)
    assert not run.ok and record["outcome"] == "no action"
    assert record["error"]["reason"] == "implausible", record["error"]
    assert "unconfirmed jump: the newest 2 sample(s) reach 1e+09 rps" in record["error"]["message"]
    assert kube.state("spiky") == before
    assert [w for w in kube.server.writes() if "spiky" in w[1]] == []


@pytestmark_e2e
def test_the_same_service_without_the_spike_is_planned_within_its_step(tmp_path, spiky, kube):
    """The control: the same run on the clean trace plans a change, by at most 4 replicas and
    4 cores (the trace ends hours before the wall clock, so the active run records only)."""
    server, now = spiky
    kube.add_deployment("steady", replicas=1, cores=1)
    settings = _settings(tmp_path, "steady", server.url, kube)
    run = run_service(settings, "steady", now, api=kube.api, options=FAST)
    record = ArtifactStore.read_json(run.record_uri)
    assert run.ok and record["error"] is None, record["summary"]
    [workload] = record["actuator"]["workloads"]
    target = workload["target"]
    assert 1 < target["replicas"] <= 1 + 4 and 1 <= target["cores"] <= 1 + 4, workload
    assert any(note.startswith("step limit") for note in workload["bound_by"]), workload


class _EchoServer:
    """Answers 400 with the request's Authorization header in the error message."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return None

            def do_GET(self) -> None:
                said = self.headers.get("Authorization", "")
                body = json.dumps({"status": "error", "errorType": "bad_data",
                                   "error": f"{said} denied"}).encode()
                self.send_response(400)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _every_text(root: Path) -> str:
    texts = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".gz":
                data = gzip.decompress(data)
            texts.append(data.decode("utf-8", errors="replace"))
    return "\n".join(texts)


@pytestmark_e2e
def test_a_prometheus_secret_never_reaches_an_artifact_or_a_record(tmp_path, spiky, kube):
    server, now = spiky
    kube.add_deployment("steady", replicas=1, cores=1)
    auth = {"type": "bearer", "secret_env": "PROM_TOKEN"}
    good = _settings(tmp_path / "good", "steady", server.url, kube, auth=auth)
    assert good.prometheus.auth.secret == TOKEN and TOKEN not in repr(good)
    assert run_service(good, "steady", now, api=kube.api, options=FAST).ok
    # a server that echoes the Authorization header into its error answer
    echo = _EchoServer()
    try:
        bad = _settings(tmp_path / "bad", "steady", echo.url, kube, auth=auth)
        run = run_service(bad, "steady", now, api=kube.api, options=FAST)
    finally:
        echo.stop()
    record = ArtifactStore.read_json(run.record_uri)
    assert not run.ok and record["error"]["reason"] == "bad_query"
    assert "[redacted] denied" in record["error"]["message"]
    b64 = base64.b64encode(TOKEN.encode()).decode()
    for root in (tmp_path / "good", tmp_path / "bad"):
        stored = _every_text(root)
        assert "steady" in stored and "kind" in stored  # the stores hold the run's artifacts
        assert TOKEN not in stored and b64 not in stored
        assert TOKEN not in run.line
