"""The service config: validation with one-line errors naming file, service and field; fleet
defaults merged into services; secrets resolved once; the actuator's config built from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from actuator.config import ServiceConfig
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
    assert isinstance(video, ServiceConfig)
    assert [w.stage for w in video.workloads] == ["yolov5n", "resnet18"]
    assert video.workloads[1].bounds.max_cores == 8
    assert video.pushgateway_url == "http://prometheus-pushgateway.monitoring.svc:9091"
    assert settings.service("resnet18-classifier").active
    assert video.mode == "shadow"


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
        ({"bounds": {"min_replicas": 5, "max_replicas": 2}}, r"service resnet: bounds: need 1"),
        ({"replicas": 3}, r"service resnet: replicas: unknown key"),
        ({"deployment": "Bad_Name"}, r"service resnet: deployment: 'Bad_Name' is not a valid"),
        ({"data": {"max_staleness_s": -1}}, r"service resnet: data.max_staleness_s: must be > 0"),
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
