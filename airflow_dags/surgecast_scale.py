"""surgecast_scale: every 5 minutes, one mapped task chain per service.

    services ──► [ingest ─► forecast ─► plan ─► actuate] × one per service (.expand)

Each task calls one surgecast stage function and hands the next one an artifact URI (a string)
through XCom. The run's data interval end is the pipeline's "now" for everything it reads; before
an active change the actuator checks that now against the wall clock, so a cleared or backfilled
old run records what it would do and changes nothing. A task that fails unexpectedly is retried;
``actuate`` writes its decision record (outcome ``error``) before failing.
The config file's path comes from the Airflow Variable ``surgecast_config``, else the
environment variable ``SURGECAST_CONFIG``; the schedule from ``SURGECAST_SCALE_SCHEDULE``
(a cron expression, default every 5 minutes; keep ``run_interval_s`` in the config equal to it).
surgecast is imported inside the tasks, so parsing this file stays fast.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task, task_group

from surgecast.live.dag_support import load_config, run_now

SCHEDULE = os.environ.get("SURGECAST_SCALE_SCHEDULE", "*/5 * * * *")


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
        return load_config().names

    @task
    def ingest(service: str) -> str:
        from surgecast.live.pipeline import ingest as stage

        return stage(load_config(), service, run_now())

    @task
    def forecast(service: str, history_uri: str) -> str:
        from surgecast.live.pipeline import forecast as stage

        return stage(load_config(), service, history_uri, run_now())

    @task
    def plan(service: str, forecast_uri: str) -> str:
        from surgecast.live.pipeline import plan as stage

        return stage(load_config(), service, forecast_uri, run_now())

    @task
    def actuate(service: str, plan_uri: str) -> str:
        from surgecast.live.pipeline import actuate as stage

        return stage(load_config(), service, plan_uri, run_now())

    @task_group
    def cycle(service: str):
        history = ingest(service)
        forecasted = forecast(service, history)
        planned = plan(service, forecasted)
        return actuate(service, planned)

    cycle.expand(service=services())


surgecast_scale()
