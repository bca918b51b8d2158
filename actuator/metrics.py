"""The one Pushgateway pusher: every component's metrics go through :func:`push`.

The actuator's runs (job ``surgecast_actuator``), the bridge's ticks (``surgecast_bridge``), the
pipeline's runs (``surgecast_pipeline``) and the daily accuracy report (``surgecast_accuracy``)
each describe what they measured as :class:`Sample` values; this module builds one registry and
pushes it, grouped by service, replacing the group's previous values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    """One metric value.

    Attributes:
        name: the metric's full name.
        help: its help text.
        value: the value.
        labels: label values of this sample (one metric may carry several samples).
        counter: a counter (pushed as ``<name>_total``) rather than a gauge.
    """

    name: str
    help: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    counter: bool = False


def push(
    url: str,
    job: str,
    service: str,
    samples: Iterable[Sample],
    *,
    timeout_s: float = 5.0,
) -> None:
    """Push ``samples`` to the Pushgateway at ``url`` (job ``job``, group ``service``).

    Raises:
        OSError: the Pushgateway is unreachable or answered an error.
        ValueError: a malformed URL.
    """
    from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway

    registry = CollectorRegistry()
    metrics: dict[str, Gauge | Counter] = {}
    for sample in samples:
        metric = metrics.get(sample.name)
        if metric is None:
            kind = Counter if sample.counter else Gauge
            metric = metrics[sample.name] = kind(
                sample.name, sample.help, list(sample.labels), registry=registry
            )
        target = metric.labels(**sample.labels) if sample.labels else metric
        if sample.counter:
            target.inc(sample.value)
        else:
            target.set(sample.value)
    push_to_gateway(
        url, job=job, registry=registry, grouping_key={"service": service}, timeout=timeout_s
    )
