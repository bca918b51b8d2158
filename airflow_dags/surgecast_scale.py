"""surgecast_scale: every 5 minutes, one mapped task chain per service.

    services ──► [ingest ─► forecast ─► plan ─► actuate] × one per service (.expand)

Each task calls one surgecast stage function and hands the next one an artifact URI (a string)
through XCom. The run's data interval end is the pipeline's "now"; nothing reads the wall clock.
The config file's path comes from the Airflow Variable ``surgecast_config``, else the
environment variable ``SURGECAST_CONFIG``; the schedule from ``SURGECAST_SCALE_SCHEDULE``
(a cron expression, default every 5 minutes; keep ``run_interval_s`` in the config equal to it).
surgecast is imported inside the tasks, so parsing this file stays fast.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, get_current_context, task, task_group

CONFIG_VARIABLE = "surgecast_config"
CONFIG_ENV = "SURGECAST_CONFIG"
SCHEDULE = os.environ.get("SURGECAST_SCALE_SCHEDULE", "*/5 * * * *")


def _settings():
    """The service config, loaded once per task (the edge: Variables and env are read here)."""
    from airflow.sdk import Variable

    from surgecast.settings import load_settings

    path = Variable.get(CONFIG_VARIABLE, default=None) or os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(
            f"surgecast: set the Airflow Variable {CONFIG_VARIABLE} or ${CONFIG_ENV} to the "
            "service config file"
        )
    return load_settings(path)


def _now():
    """The run's time: the end of its data interval (else when the run was due)."""
    context = get_current_context()
    return context.get("data_interval_end") or context["dag_run"].run_after


@dag(
    dag_id="surgecast_scale",
    schedule=SCHEDULE,
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=10),
    default_args={"retries": 1, "retry_delay": timedelta(seconds=20),
                  "execution_timeout": timedelta(minutes=4)},
    tags=["surgecast"],
    doc_md=__doc__,
)
def surgecast_scale():
    @task
    def services() -> list[str]:
        return _settings().names

    @task
    def ingest(service: str) -> str:
        from surgecast.pipeline import ingest as stage

        return stage(_settings(), service, _now())

    @task
    def forecast(service: str, history_uri: str) -> str:
        from surgecast.pipeline import forecast as stage

        return stage(_settings(), service, history_uri, _now())

    @task
    def plan(service: str, forecast_uri: str) -> str:
        from surgecast.pipeline import plan as stage

        return stage(_settings(), service, forecast_uri, _now())

    @task
    def actuate(service: str, plan_uri: str) -> str:
        from surgecast.pipeline import actuate as stage

        return stage(_settings(), service, plan_uri, _now())

    @task_group
    def cycle(service: str):
        history = ingest(service)
        forecasted = forecast(service, history)
        planned = plan(service, forecasted)
        return actuate(service, planned)

    cycle.expand(service=services())


surgecast_scale()
