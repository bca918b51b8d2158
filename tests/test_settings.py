"""The service config: validation with one-line errors naming file, service and field; fleet
defaults merged into services; secrets resolved once; the actuator's config built from it; and
the limits a config cannot lift: explicit bounds, integer step limits, DNS-1123 names, one
owner per Deployment, shadow unless a service says otherwise, credentials never in a URL."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from actuator.spec import ServiceSpec
from surgecast.settings import SettingsError, load_settings, settings_from_dict

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "data" / "services.example.yaml"


def _minimal(**service) -> dict:
    svc = {
        "name": "resnet",
        "query": 'sum(rate(http_requests_total{service="resnet"}[1m]))',
        "namespace": "inference",
        "deployment": "resnet18",
        "profile": "resnet18",
        "slo_ms": 750,
        "bounds": {"min_replicas": 1, "max_replicas": 20, "min_cores": 1, "max_cores": 8},
    }
    svc.update(service)
    return {"services": [svc]}


def _write(tmp_path: Path, data: dict, name: str = "services.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_example_config_loads_with_its_secret_from_a_file(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cr3t\n")
    data = yaml.safe_load(EXAMPLE.read_text())
    data["prometheus"]["auth"]["secret_file"] = str(token)
    settings = load_settings(_write(tmp_path, data))
    assert settings.names == ["resnet18-classifier", "yolo-detector", "video-pipeline"]
    assert settings.prometheus.auth.headers == {"Authorization": "Bearer s3cr3t"}
    assert "s3cr3t" not in repr(settings)
    assert settings.prometheus.verify_tls is True
    assert settings.artifacts.root == "s3://ml-platform-surgecast/artifacts"
    yolo = settings.service("yolo-detector")
    # defaults merged key by key: bounds.max_replicas overridden, the rest from defaults
    assert yolo.workloads[0].bounds.max_replicas == 20
    assert yolo.workloads[0].bounds.max_cores == 16
    assert yolo.forecast.model == "lgbm_lags" and yolo.forecast.horizon_steps == 15
    assert yolo.policy().quantile == 0.99 and yolo.policy().cold_start_s == 90
    video = settings.actuator_config("video-pipeline")
    assert isinstance(video, ServiceSpec)
    assert [w.stage for w in video.workloads] == ["yolov5n", "resnet18"]
    assert video.workloads[1].bounds.max_cores == 8
    assert video.pushgateway_url == "http://prometheus-pushgateway.monitoring.svc:9091"
    # every service of the example starts in shadow (the README's rule)
    assert [s.mode for s in settings.services] == ["shadow"] * 3
    assert video.mode == "shadow" and not settings.service("resnet18-classifier").active
    # step limits are numbers, never unlimited
    assert {(s.max_replica_step, s.max_core_step) for s in settings.services} == {(4, 4)}
    assert video.max_replica_step == 4 and video.max_core_step == 4
    assert settings.run_interval_s == 300 and settings.run_timeout_s == 120
    assert settings.prometheus.query_deadline_s == 30


def test_secret_from_an_environment_variable_named_in_the_file(tmp_path):
    data = _minimal()
    data["prometheus"] = {
        "url": "https://prom:9090",
        "auth": {"type": "basic", "username": "sc", "secret_env": "PROM_PW"},
    }
    settings = settings_from_dict(data, source="s.yaml", environ={"PROM_PW": "pw"})
    assert settings.prometheus.auth.basic == ("sc", "pw")
    with pytest.raises(SettingsError, match=r"^s.yaml: prometheus.auth.secret_env: .*PROM_PW"):
        settings_from_dict(data, source="s.yaml", environ={})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"forecast": {"horizon_steps": 0}}, r"service resnet: forecast.horizon_steps: must be"),
        ({"forecast": {"model": "prophet"}}, r"service resnet: forecast.model: 'prophet' is not"),
        ({"forecast": {"plan_quantile": 0.8}}, r"service resnet: forecast.plan_quantile: 0.8"),
        ({"mode": "live"}, r"service resnet: mode: 'live' is not one of shadow, active"),
        ({"slo_ms": "fast"}, r"service resnet: slo_ms: expected a number, got 'fast'"),
        ({"profile": "nope"}, r"service resnet: profile: nope: no such bundled profile"),
        ({"bounds": {"min_replicas": 5, "max_replicas": 2, "min_cores": 1, "max_cores": 2}},
         r"service resnet: bounds: need 1"),
        ({"replicas": 3}, r"service resnet: replicas: unknown key"),
        ({"deployment": "Bad_Name"}, r"service resnet: deployment: 'Bad_Name' is not a valid"),
        ({"data": {"max_staleness_s": -1}},
         r"service resnet: data.max_staleness_s: must be in \(0, 86400\] s, got -1"),
        ({"profile": "video"}, r"service resnet: workloads: profile video has 2 stage"),
    ],
)
def test_errors_name_the_file_the_service_and_the_field(tmp_path, change, message):
    path = _write(tmp_path, _minimal(**change))
    with pytest.raises(SettingsError) as err:
        load_settings(path)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: ")
    assert re.search(message, text), text


def test_missing_field_and_fleet_level_errors(tmp_path):
    data = _minimal()
    del data["services"][0]["query"]
    with pytest.raises(SettingsError, match=r"service resnet: query: missing"):
        settings_from_dict(data, source="s.yaml")
    data = _minimal()
    data["prometheus"] = {"url": "prometheus:9090"}
    with pytest.raises(SettingsError, match=r"^s.yaml: prometheus.url: 'prometheus:9090' is not"):
        settings_from_dict(data, source="s.yaml")
    data = _minimal()
    data["prometheus"] = {"max_points": 20000}
    with pytest.raises(SettingsError, match=r"prometheus.max_points: must be in 2..11000"):
        settings_from_dict(data, source="s.yaml")
    data = _minimal()
    data["services"].append(dict(data["services"][0]))
    with pytest.raises(SettingsError, match=r"service resnet: name: given twice"):
        settings_from_dict(data, source="s.yaml")
    with pytest.raises(SettingsError, match=r"unknown key\(s\) servics"):
        settings_from_dict({"servics": []}, source="s.yaml")


def test_yaml_problems_and_missing_files_are_one_line(tmp_path):
    with pytest.raises(SettingsError, match=r"config file not found"):
        load_settings(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  - name: a\n    name: b\n")
    with pytest.raises(SettingsError, match=r"bad.yaml: not valid YAML at line 3: key 'name'"):
        load_settings(bad)


def test_relative_paths_resolve_beside_the_config_file(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "mine.toml").write_text(
        (REPO / "data" / "profiles" / "resnet18.toml").read_text()
    )
    data = _minimal(profile="profiles/mine.toml")
    data["artifacts"] = {"root": "store", "retention_days": 3}
    settings = load_settings(_write(tmp_path, data))
    assert settings.service("resnet").profile == str(tmp_path / "profiles" / "mine.toml")
    assert settings.artifacts.root == str((tmp_path / "store").resolve())
    assert settings.prometheus.verify_tls and settings.prometheus.ca_file is None


def test_unknown_service_lists_the_known_ones(tmp_path):
    settings = settings_from_dict(_minimal(), source="s.yaml")
    with pytest.raises(SettingsError, match=r"no service 'x'; the config has resnet"):
        settings.service("x")


# --------------------------------------------------------------------------------------------
# limits a config cannot lift


def test_step_limits_default_to_four_and_null_is_not_unlimited():
    settings = settings_from_dict(_minimal(), source="s.yaml")
    svc = settings.service("resnet")
    assert (svc.max_replica_step, svc.max_core_step) == (4, 4)
    config = settings.actuator_config("resnet")
    assert (config.max_replica_step, config.max_core_step) == (4, 4)
    for key in ("max_replica_step", "max_core_step"):
        with pytest.raises(SettingsError, match=rf"service resnet: {key}: null no longer means "
                           r"unlimited: give a number"):
            settings_from_dict(_minimal(**{key: None}), source="s.yaml")
        for bad, message in ((0, "must be an integer >= 1, got 0"),
                             (2.5, "expected an integer, got 2.5"),
                             (True, "expected an integer, got True")):
            with pytest.raises(SettingsError, match=rf"service resnet: {key}: {message}"):
                settings_from_dict(_minimal(**{key: bad}), source="s.yaml")
    data = _minimal()
    data["defaults"] = {"max_replica_step": None}
    with pytest.raises(SettingsError, match="max_replica_step: null no longer means unlimited"):
        settings_from_dict(data, source="s.yaml")


@pytest.mark.parametrize("field", ["min_replicas", "max_replicas", "min_cores", "max_cores"])
def test_every_deployment_states_its_bounds(field):
    data = _minimal()
    del data["services"][0]["bounds"][field]
    with pytest.raises(SettingsError, match=rf"^s.yaml: service resnet: bounds.{field}: missing: "
                       r"every Deployment states its bounds"):
        settings_from_dict(data, source="s.yaml")
    # given in defaults instead: accepted, merged key by key
    data["defaults"] = {"bounds": {field: 1 if field.startswith("min") else 30}}
    svc = settings_from_dict(data, source="s.yaml").service("resnet")
    assert getattr(svc.workloads[0].bounds, field) == (1 if field.startswith("min") else 30)
    # a two-stage service names the workload that lacks it
    two = _minimal(profile="video", deployment=None, bounds=None)
    del two["services"][0]["deployment"], two["services"][0]["bounds"]
    two["services"][0]["workloads"] = [
        {"stage": "yolov5n", "deployment": "det",
         "bounds": {"min_replicas": 1, "max_replicas": 4, "min_cores": 1, "max_cores": 4}},
        {"stage": "resnet18", "deployment": "cls", "bounds": {"max_replicas": 4}},
    ]
    with pytest.raises(SettingsError, match=r"service resnet: workloads\[1\].bounds.min_replicas: "
                       "missing"):
        settings_from_dict(two, source="s.yaml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bounds": {"min_replicas": 1, "max_replicas": 10**6, "min_cores": 1, "max_cores": 8}},
         r"bounds.max_replicas: must be at most 10000"),
        ({"bounds": {"min_replicas": 1, "max_replicas": 8, "min_cores": 1, "max_cores": 5000}},
         r"bounds.max_cores: must be at most 1024"),
    ],
)
def test_bounds_have_a_sane_ceiling(change, message):
    with pytest.raises(SettingsError, match=rf"service resnet: {message}"):
        settings_from_dict(_minimal(**change), source="s.yaml")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "../../.."}, "name"),
        ({"name": "a/b"}, "name"),
        ({"name": "Resnet"}, "name"),
        ({"name": "x" * 64}, "name"),
        ({"name": "under_score"}, "name"),
        ({"namespace": "../etc"}, "namespace"),
        ({"namespace": "a.b"}, "namespace"),
        ({"deployment": "a/b"}, "deployment"),
        ({"deployment": "a..b"}, "deployment"),
        ({"deployment": "-a"}, "deployment"),
        ({"container": "srv.1"}, "container"),
        ({"hpa": "a/../b"}, "hpa"),
    ],
)
def test_names_are_dns_1123(change, field):
    with pytest.raises(SettingsError) as err:
        settings_from_dict(_minimal(**change), source="s.yaml")
    text = str(err.value)
    assert re.search(rf"^s.yaml: (service resnet|services\[0\]): {field}: .* is not a valid "
                     r"Kubernetes name \(DNS-1123", text), text
    assert "\n" not in text


def test_one_deployment_belongs_to_one_service():
    data = _minimal()
    data["services"].append({**data["services"][0], "name": "resnet-b"})
    with pytest.raises(SettingsError, match=r"service resnet-b: deployment: inference/resnet18 "
                       r"already belongs to service resnet"):
        settings_from_dict(data, source="s.yaml")
    data["services"][1]["namespace"] = "other"  # same name, another namespace: another object
    assert settings_from_dict(data, source="s.yaml").names == ["resnet", "resnet-b"]


def test_active_only_in_a_service_own_table():
    data = _minimal()
    assert settings_from_dict(data, source="s.yaml").service("resnet").mode == "shadow"
    data["defaults"] = {"mode": "active"}
    with pytest.raises(SettingsError, match=r"^s.yaml: defaults.mode: active must be set in each "
                       r"service's own table"):
        settings_from_dict(data, source="s.yaml")
    data = _minimal(mode="active")
    assert settings_from_dict(data, source="s.yaml").service("resnet").active
    for key, value in (("name", "x"), ("deployment", "x")):
        data = _minimal()
        data["defaults"] = {key: value}
        with pytest.raises(SettingsError, match=rf"defaults.{key}: give it in each service"):
            settings_from_dict(data, source="s.yaml")


@pytest.mark.parametrize(
    ("fleet", "message"),
    [
        ({"artifacts": {"retention_days": 0.0001}},
         r"artifacts.retention_days: must be in \[1, 3650\] days, got 0.0001"),
        ({"run_interval_s": 1}, r"run_interval_s: must be in \[30, 3600\] s, got 1"),
        ({"run_interval_s": 86400 * 365}, r"run_interval_s: must be in \[30, 3600\] s"),
        ({"run_timeout_s": 600}, r"run_timeout_s: must be in \[1, run_interval_s = 300\] s"),
        ({"run_timeout_s": 0}, r"run_timeout_s: must be in \[1, run_interval_s"),
        ({"prometheus": {"query_deadline_s": 0}}, r"prometheus.query_deadline_s: must be in"),
        ({"prometheus": {"timeout_s": 1e9}}, r"prometheus.timeout_s: must be in \(0, 300\] s"),
        ({"prometheus": {"attempts": 1000}}, r"prometheus.attempts: must be an integer in 1..10"),
    ],
)
def test_durations_have_sensible_ranges(fleet, message):
    data = {**_minimal(), **fleet}
    with pytest.raises(SettingsError, match=rf"^s.yaml: {message}"):
        settings_from_dict(data, source="s.yaml")


def test_run_timeout_and_query_deadline_defaults():
    settings = settings_from_dict(_minimal(), source="s.yaml")
    assert settings.run_timeout_s == 120 and settings.prometheus.query_deadline_s == 30
    short = settings_from_dict({**_minimal(), "run_interval_s": 60}, source="s.yaml")
    assert short.run_timeout_s == 60  # the default never outlives the interval
    given = settings_from_dict({**_minimal(), "run_timeout_s": 45,
                                "prometheus": {"query_deadline_s": 5}}, source="s.yaml")
    assert given.run_timeout_s == 45 and given.prometheus.query_deadline_s == 5


@pytest.mark.parametrize(
    "url",
    ["http://admin:hunter2-pw@prom:9090", "https://admin:hunter2-pw@prom:9090/prefix",
     "http://:hunter2-pw@prom:9090", "https://hunter2-pw@prom"],
)
def test_credentials_in_the_prometheus_url_are_refused_without_echo(url):
    data = {**_minimal(), "prometheus": {"url": url}}
    with pytest.raises(SettingsError) as err:
        settings_from_dict(data, source="s.yaml")
    text = str(err.value)
    assert text.startswith("s.yaml: prometheus.url: must not carry credentials")
    assert "prometheus.auth" in text and "hunter2" not in text and "admin" not in text


def test_credentials_are_refused_in_every_url():
    for fleet, field in (({"pushgateway_url": "http://u:hunter2@gw:9091"}, "pushgateway_url"),
                         ({"kubernetes": {"host": "https://u:hunter2@k8s"}}, "kubernetes.host"),
                         ({"artifacts": {"root": "s3://key:hunter2@bucket/x"}},
                          "artifacts.root")):
        with pytest.raises(SettingsError, match=rf"^s.yaml: {field}: must not carry credentials"
                           ) as err:
            settings_from_dict({**_minimal(), **fleet}, source="s.yaml")
        assert "hunter2" not in str(err.value)
    with pytest.raises(SettingsError, match=r"prometheus.url: must not carry a query string"):
        settings_from_dict({**_minimal(), "prometheus": {"url": "http://p:9090/?token=x"}},
                           source="s.yaml")


@pytest.mark.parametrize("kind", ["bearer", "basic"])
def test_auth_over_plain_http_only_to_loopback_or_by_the_lab_switch(kind):
    auth = {"type": kind, "secret_env": "PROM_SECRET"}
    if kind == "basic":
        auth["username"] = "sc"
    env = {"PROM_SECRET": "s3cr3t-value"}

    def load(url: str, **extra):
        data = {**_minimal(), "prometheus": {"url": url, "auth": auth, **extra}}
        return settings_from_dict(data, source="s.yaml", environ=env)

    with pytest.raises(SettingsError) as err:
        load("http://prometheus.monitoring.svc:9090")
    text = str(err.value)
    assert text.startswith(f"s.yaml: prometheus.auth: {kind} auth over plain http:// would send")
    assert "allow_insecure_auth: true is a lab-only switch" in text and "s3cr3t" not in text
    assert load("https://prometheus.monitoring.svc:9090").prometheus.auth.secret == "s3cr3t-value"
    for loopback in ("http://127.0.0.1:9090", "http://localhost:9090", "http://[::1]:9090"):
        assert load(loopback).prometheus.auth.type == kind
    lab = load("http://prometheus.lab:9090", allow_insecure_auth=True)
    assert lab.prometheus.allow_insecure_auth and lab.prometheus.auth.type == kind
    assert "s3cr3t" not in repr(lab)


def test_a_secret_with_a_line_break_is_refused_without_echo(tmp_path):
    (tmp_path / "token").write_text("abc\r\nX-Injected: 1\n")
    data = {**_minimal(), "prometheus": {
        "url": "https://p:9090", "auth": {"type": "bearer", "secret_file": "token"}}}
    with pytest.raises(SettingsError, match=r"prometheus.auth.secret_file: the secret holds "
                       "control characters") as err:
        settings_from_dict(data, source="s.yaml", base=tmp_path)
    assert "Injected" not in str(err.value)


# --------------------------------------------------------------------------------------------
# one spec, one error type, defaults written once


def test_one_input_error_type_everywhere():
    from actuator.errors import ActuatorInputError
    from forecasting.errors import BadInputError
    from planner.errors import PlannerInputError

    assert SettingsError is ActuatorInputError is PlannerInputError is BadInputError
    with pytest.raises(PlannerInputError, match=r"^s.yaml: service resnet: mode: 'live'"):
        settings_from_dict(_minimal(mode="live"), source="s.yaml")


def test_a_service_is_the_actuation_spec_with_its_defaults_written_once():
    from actuator.spec import DEFAULTS, ServiceSpec

    settings = settings_from_dict(_minimal(), source="s.yaml")
    svc = settings.service("resnet")
    assert isinstance(svc, ServiceSpec) and settings.actuator_config("resnet") is svc
    for name in ("cold_start_s", "resize_s", "stabilisation_s", "resize_timeout_s",
                 "plan_expiry_s", "hpa_sync_s", "max_replica_step", "kill_switch", "bridge"):
        assert getattr(svc, name) == getattr(DEFAULTS, name), name
    assert (DEFAULTS.cold_start_s, DEFAULTS.stabilisation_s, DEFAULTS.resize_timeout_s) == (
        60, 300, 30)
    policy = svc.policy()  # the planner is given the spec's timings, not its own defaults
    assert (policy.cold_start_s, policy.resize_s, policy.stabilisation_s) == (60, 2, 300)


def test_the_fleet_gives_every_service_its_interval_and_pushgateway_once():
    data = {**_minimal(), "run_interval_s": 120, "pushgateway_url": "http://gw:9091"}
    svc = settings_from_dict(data, source="s.yaml").service("resnet")
    assert svc.run_interval_s == 120 and svc.pushgateway_url == "http://gw:9091"
    for key, value in (("run_interval_s", 60), ("pushgateway_url", "http://gw:9091")):
        with pytest.raises(SettingsError, match=rf"^s.yaml: service resnet: {key}: give it once "
                           "at the top level"):
            settings_from_dict(_minimal(**{key: value}), source="s.yaml")
        data = _minimal()
        data["defaults"] = {key: value}
        with pytest.raises(SettingsError, match=rf"^s.yaml: defaults.{key}: give it once"):
            settings_from_dict(data, source="s.yaml")


def test_the_bridge_table_merges_from_defaults_and_is_checked():
    data = _minimal(bridge={"interval_s": 2})
    data["defaults"] = {"bridge": {"signal_window_s": 60, "max_cores": 4}}
    bridge = settings_from_dict(data, source="s.yaml").service("resnet").bridge
    assert (bridge.enabled, bridge.interval_s, bridge.signal_window_s) == (True, 2, 60)
    assert (bridge.scale_down_after_s, bridge.max_cores) == (60, 4)
    for change, message in (({"interval_s": 0.5}, r"bridge.interval_s: must be in \[1, 300\] s"),
                            ({"max_cores": 2.5}, r"bridge.max_cores: expected an integer"),
                            ({"enabled": "yes"}, r"bridge.enabled: expected true or false"),
                            ({"every_s": 1}, r"bridge.every_s: unknown key")):
        with pytest.raises(SettingsError, match=rf"^s.yaml: service resnet: {message}"):
            settings_from_dict(_minimal(bridge=change), source="s.yaml")


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_the_old_service_config_formats_are_refused_with_a_hint(tmp_path, suffix):
    path = tmp_path / f"service{suffix}"
    path.write_text('service = "resnet"\n')
    with pytest.raises(SettingsError, match=rf"^{re.escape(str(path))}: service configs are YAML "
                       r"now .*\(see data/services.example.yaml\)"):
        load_settings(path)


@pytest.mark.parametrize(
    "change",
    [{"slo_ms": None}, {"slo_ms": [1]}, {"forecast": []}, {"forecast": {"quantiles": "x"}},
     {"bounds": {"min_replicas": "1", "max_replicas": 2, "min_cores": 1, "max_cores": 2}},
     {"workloads": [{"deployment": "a", "bounds": 3}]}, {"max_step_ratio": float("nan")},
     {"kill_switch": 7}, {"namespace": None}, {"data": {"max_rps": True}}],
)
def test_pydantic_text_never_reaches_the_user(change):
    with pytest.raises(SettingsError) as err:
        settings_from_dict(_minimal(**change), source="s.yaml")
    text = str(err.value)
    assert text.startswith("s.yaml: service resnet: ") and "\n" not in text
    assert not re.search(r"Input should|validation error|pydantic|type=|\[type", text), text
