"""The actuator's pure parts: service spec validation, timing of due steps, the guard chain,
the resize fallback, patches and quantities."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actuator import pods as P
from actuator.errors import ActuatorInputError
from actuator.guards import Bounds
from actuator.kube import cpu_millicores, cpu_quantity
from actuator.spec import BridgeSpec, ServiceSpec, WorkloadSpec, parse
from actuator.target import (
    Floor,
    due_steps,
    fallback_replicas,
    refusal,
    stage_target,
    wanted_state,
)
from planner.dp import StageConfig
from planner.plan import Plan, PlanStep

T0 = pd.Timestamp("2025-06-02T08:00:00Z")


def _s(seconds: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(seconds=seconds)


def step(apply_s, effective_s, replicas, cores, kind="scale-out", batch=4) -> PlanStep:
    return PlanStep(
        _s(effective_s), _s(apply_s), (replicas,), (cores,), (batch,), kind, 100.0, 100.0, kind
    )


def plan(*steps, service="resnet18") -> Plan:
    return Plan(service, T0, steps, 0.95, 750.0, ("resnet18",))


def config(**kw) -> ServiceSpec:
    wl = WorkloadSpec(deployment="resnet18", bounds=kw.pop("bounds", Bounds(1, 20, 1, 8, 16)))
    return ServiceSpec(name="resnet18", namespace="inference", workloads=(wl,), **kw)


FULL = {"min_replicas": 1, "max_replicas": 9, "min_cores": 1, "max_cores": 4}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (dict(mode="live"), "mode"),
        (dict(namespace="Bad_NS"), "namespace"),
        (dict(max_replica_step=0), "max_replica_step"),
        (dict(plan_expiry_s=-1), "plan_expiry_s"),
        (dict(stabilisation_s=float("nan")), "stabilisation_s"),
        (dict(pushgateway_url="localhost:9091"), "pushgateway_url"),
        (dict(workloads=()), "workloads"),
        (dict(bridge={"interval_s": 0.5}), "bridge.interval_s"),
        (dict(bridge={"signal_window_s": 601}), "bridge.signal_window_s"),
        (dict(bridge={"scale_down_after_s": -1}), "bridge.scale_down_after_s"),
        (dict(bridge={"max_cores": 0}), "bridge.max_cores"),
        (dict(bridge={"enabled": "yes"}), "bridge.enabled"),
    ],
)
def test_spec_errors_are_one_line_and_name_the_field(change, field):
    base = dict(name="resnet18", namespace="inference",
                workloads=({"deployment": "resnet18", "bounds": FULL},))
    with pytest.raises(ActuatorInputError) as err:
        parse(ServiceSpec, {**base, **change})
    assert str(err.value).startswith(f"{field}: ") and "\n" not in str(err.value)
    with pytest.raises(ValueError):  # built in code: pydantic's error, also a ValueError
        ServiceSpec(**{**base, **change})


def test_spec_flat_and_nested_with_its_defaults_written_once():
    flat = parse(ServiceSpec, {"name": "r", "namespace": "inference", "deployment": "r",
                               "bounds": FULL})
    assert flat.workloads[0].bounds.max_replicas == 9 and flat.mode == "shadow"
    assert flat.workloads[0].container == "server"
    assert (flat.max_replica_step, flat.max_core_step) == (4, 4)  # limited unless told otherwise
    assert (flat.cold_start_s, flat.resize_timeout_s, flat.hpa_sync_s) == (60, 30, 15)
    assert flat.fallback_lead_s == 105 and flat.stabilisation_s == 300
    assert flat.bridge == BridgeSpec() and flat.bridge.enabled
    assert (flat.bridge.interval_s, flat.bridge.signal_window_s) == (5, 30)
    assert (flat.bridge.scale_down_after_s, flat.bridge.max_cores) == (60, None)
    # A service-level bounds is merged under each workload's own, key by key.
    two = parse(ServiceSpec, {
        "name": "v", "namespace": "video", "bounds": FULL,
        "workloads": [{"deployment": "det", "stage": "a", "bounds": {"max_cores": 2}},
                      {"deployment": "cls", "stage": "b"}],
    })
    assert [w.bounds.max_cores for w in two.workloads] == [2, 4]
    # No built-in default decides how far a cluster may grow: bounds are explicit.
    for bounds in (None, {"max_replicas": 9}):
        table = {"name": "r", "namespace": "inference", "deployment": "r", "container": "c"}
        if bounds is not None:
            table["bounds"] = bounds
        with pytest.raises(ActuatorInputError, match=r"^workloads\[0\]\.bounds\.min_replicas: "
                           "missing: every Deployment states its bounds"):
            parse(ServiceSpec, table)
        with pytest.raises(ActuatorInputError, match=r"^bounds\.min_replicas: missing"):
            parse(ServiceSpec, table, flat=True)  # as the file has it: no workloads key
    with pytest.raises(ActuatorInputError, match="max_replica_step: null no longer means"):
        parse(ServiceSpec, {**table, "bounds": FULL, "max_replica_step": None})
    with pytest.raises(ActuatorInputError, match=r"max_core_step: expected an integer, got 2.0"):
        parse(ServiceSpec, {**table, "bounds": FULL, "max_core_step": 2.0})
    with pytest.raises(ActuatorInputError, match=r"workloads\[0\]\.bounds\.max_replica: unknown"):
        parse(ServiceSpec, {"name": "r", "namespace": "inference", "workloads": [
            {"deployment": "r", "container": "c", "bounds": {**FULL, "max_replica": 3}}]})
    with pytest.raises(ActuatorInputError, match=r"bounds: need 1 <= min_replicas"):
        parse(ServiceSpec, {**table, "bounds": {**FULL, "min_replicas": 0}})
    with pytest.raises(ActuatorInputError, match=r"^namespace: missing"):
        parse(ServiceSpec, {"name": "r", "deployment": "r", "bounds": FULL})
    with pytest.raises(ActuatorInputError, match="deployment: give either workloads or"):
        parse(ServiceSpec, {**table, "bounds": FULL, "workloads": []})


def test_only_steps_due_before_the_next_run_are_applied():
    p = plan(step(0, 2, 2, 4, "bridge"), step(250, 280, 6, 2), step(400, 430, 8, 2))
    assert [s.replicas for s in due_steps(p, _s(0), 300)] == [(2,), (6,)]
    assert [s.replicas for s in due_steps(p, _s(101), 300)] == [(2,), (6,), (8,)]
    assert due_steps(p, _s(0), 200)[-1].replicas == (2,)
    # With the fallback lead, a step is applied early enough for the slow path.
    assert [s.replicas for s in due_steps(p, _s(0), 200, lead_s=90)] == [(2,), (6,)]
    assert [s.replicas for s in due_steps(p, _s(0), 200, lead_s=250)] == [(2,), (6,), (8,)]


def test_scale_up_early_scale_down_only_once_effective():
    current = StageConfig(2, 2, 4)
    bridge, consolidate = step(0, 2, 2, 4, "bridge"), step(0, 30, 6, 1, "consolidate")
    # Before the bridge is effective: replicas and cores both rise early, nothing shrinks.
    assert wanted_state((bridge, consolidate), 0, current, _s(0)) == StageConfig(6, 4, 4)
    # The bridge is effective, consolidation not yet: running pods keep their 4 cores.
    assert wanted_state((bridge, consolidate), 0, current, _s(10)) == StageConfig(6, 4, 4)
    # Both effective: the latest wins, the pods shrink to 1 core.
    assert wanted_state((bridge, consolidate), 0, current, _s(30)) == StageConfig(6, 1, 4)
    assert wanted_state((), 0, current, _s(30)) == current


def test_refusals_expired_unknown_service_and_unmapped_stage():
    p = plan(step(0, 0, 2, 2, "hold"))
    assert refusal(p, config(), _s(10)) is None
    assert "expired" in refusal(p, config(plan_expiry_s=60), _s(61))
    assert "allow-list" in refusal(plan(step(0, 0, 2, 2, "hold"), service="other"), config(), _s(0))
    two = Plan(
        "resnet18",
        T0,
        (PlanStep(_s(0), _s(0), (1, 1), (1, 1), (1, 1), "x", 1, 1, "hold"),),
        0.95,
        750.0,
        ("a", "b"),
    )
    assert "no Deployment" in refusal(two, config(), _s(0))


def test_guard_chain_order_floor_stabilisation_step_bounds():
    cfg = config(
        max_replica_step=3, max_step_ratio=0.0, stabilisation_s=300, bounds=Bounds(1, 10, 1, 4, 16)
    )
    wl = cfg.workloads[0]
    current = StageConfig(4, 2, 4)
    up = stage_target(cfg, wl, 0, (step(0, 0, 40, 16),), current, now=_s(0), last_scale_up_s=None)
    assert up.target == StageConfig(7, 4, 4)
    assert [n.split(":")[0] for n in up.notes] == ["step limit", "bounds"]
    quiet = Floor(5.0, lambda c: c.replicas * c.cores * 10.0, StageConfig(1, 1, 4), 5.0)
    down = stage_target(
        cfg,
        wl,
        0,
        (step(0, 0, 1, 1, "scale-in"),),
        current,
        now=_s(100),
        last_scale_up_s=_s(0).timestamp(),
        floor=quiet,
    )
    assert down.target == current and down.notes[0].startswith("stabilisation")
    floor = Floor(100.0, lambda c: c.replicas * c.cores * 10.0, StageConfig(5, 2, 4))
    low = stage_target(
        cfg,
        wl,
        0,
        (step(0, 0, 4, 1, "scale-in"),),
        current,
        now=_s(1000),
        last_scale_up_s=None,
        floor=floor,
    )
    assert low.target == StageConfig(5, 2, 4) and low.notes[0].startswith("reactive floor")


@given(
    st.integers(1, 30),
    st.integers(1, 16),
    st.integers(1, 30),
    st.integers(1, 16),
    st.integers(1, 5),
    st.integers(0, 600),
)
def test_targets_always_within_bounds_and_step(cur_n, cur_c, want_n, want_c, max_step, since):
    cfg = config(max_replica_step=max_step, max_step_ratio=0.0, bounds=Bounds(2, 12, 1, 8, 16))
    current = StageConfig(cur_n, cur_c, 4)
    got = stage_target(
        cfg,
        cfg.workloads[0],
        0,
        (step(0, 0, want_n, want_c),),
        current,
        now=_s(600),
        last_scale_up_s=_s(600 - since).timestamp(),
    ).target
    assert 2 <= got.replicas <= 12 and 1 <= got.cores <= 8
    if 2 <= cur_n <= 12:
        assert abs(got.replicas - cur_n) <= max_step


def test_scale_in_needs_the_load_observed_over_the_window():
    """A forecast may lower capacity only when the observed load of the stabilisation window
    agrees; a scale-in step is due from its apply_at (its effective_at lies a resize later)."""
    cfg = config(bounds=Bounds(1, 20, 1, 8, 16))
    wl = cfg.workloads[0]
    cap = lambda c: c.replicas * c.cores * 10.0  # noqa: E731
    current = StageConfig(6, 2, 4)  # 120 rps
    scale_in = PlanStep(
        _s(30), _s(28), (2,), (2,), (4,), "forecast low", 50.0, 40.0, "scale-in"
    )

    def target(peak):
        floor = Floor(30.0, cap, StageConfig(2, 2, 4), peak)
        return stage_target(
            cfg, wl, 0, (scale_in,), current, now=_s(28), last_scale_up_s=None, floor=floor
        )

    assert target(35.0).target == StageConfig(2, 2, 4)  # confirmed: happens at apply_at
    held = target(100.0)  # a surge 4 minutes ago: 2 x 2 cores would not have carried it
    assert held.target == current and held.notes[0].startswith("scale-in confirmation")
    unknown = target(None)
    assert unknown.target == current and "no observed load" in unknown.notes[0]


def test_default_step_limit_is_the_hpa_scale_up_policy_per_run():
    """4 pods or 100 %, whichever is more (the HPA's default scale-up policy), per run."""
    cfg = config(bounds=Bounds(1, 1000, 1, 64, 16))
    wl = cfg.workloads[0]
    surge = (step(0, 0, 40, 16),)
    small = stage_target(cfg, wl, 0, surge, StageConfig(4, 2, 4), now=_s(0), last_scale_up_s=None)
    assert small.target == StageConfig(8, 6, 4)  # not 40 x 16 from one absurd forecast
    big = stage_target(cfg, wl, 0, surge, StageConfig(30, 10, 4), now=_s(0), last_scale_up_s=None)
    assert big.target == StageConfig(40, 16, 4)  # doubling allowed from a large base


def test_fallback_adds_replicas_sized_by_the_template_within_step_and_bounds():
    cfg = config(max_replica_step=4, max_step_ratio=0.0, bounds=Bounds(1, 6, 1, 8, 8))
    wl = cfg.workloads[0]

    def fb(base, missing, template_m=1000, current=3):
        return fallback_replicas(
            base,
            missing,
            new_pod_millicores=template_m,
            current_replicas=current,
            config=cfg,
            workload=wl,
        )

    assert fb(3, 0) == (3, None)
    # New pods start at the template's 1 core, not the planned 4: 4 missing cores = 4 pods.
    assert fb(2, 4000, current=2) == (6, None)
    assert fb(2, 4000, template_m=4000, current=2) == (3, None)
    n, note = fb(3, 40_000)
    assert n == 6 and "max_replicas 6" in note
    cfg2 = config(max_replica_step=2, max_step_ratio=0.0, bounds=Bounds(1, 60, 1, 8, 8))
    n, note = fallback_replicas(
        2, 16_000, new_pod_millicores=1000, current_replicas=2, config=cfg2, workload=wl
    )
    assert n == 4 and "step limit" in note


def test_quantities_and_patches():
    assert [cpu_millicores(q) for q in ("2", "500m", "1.5", 3, "250000u")] == [
        2000,
        500,
        1500,
        3000,
        250,
    ]
    assert cpu_quantity(4) == "4"
    with pytest.raises(ValueError):
        cpu_millicores("two")
    pod = {
        "metadata": {"name": "p", "resourceVersion": "7"},
        "spec": {
            "containers": [
                {
                    "name": "server",
                    "resources": {
                        "requests": {"cpu": "2", "memory": "1Gi"},
                        "limits": {"cpu": "2", "memory": "1Gi"},
                    },
                }
            ]
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    body = P.resize_patch(pod, "server", 3)
    assert body == {
        "metadata": {"resourceVersion": "7"},
        "spec": {
            "containers": [
                {"name": "server", "resources": {"requests": {"cpu": "3"}, "limits": {"cpu": "3"}}}
            ]
        },
    }
    assert P.resize_patch(pod, "server", 2) is None
    assert P.scale_patch({"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 7}}, 7) is None
    hpa = {"metadata": {"resourceVersion": "1"}, "spec": {"minReplicas": 2, "maxReplicas": 5}}
    assert P.hpa_patch(hpa, 9)["spec"] == {"minReplicas": 5}
