"""surgecast_retrain: daily, refit each service's forecasting model and prune old artifacts.

    services ──► retrain × one per service (.expand) ──► prune

A model is refitted when it is due under the service's ``forecast.refit_every_h`` (a daily run
refits a 24 h cadence every day); the scaling runs load the newest stored model. A refit that
fails (Prometheus down, history too short) fails its task; the scaling runs keep the previous
model. Retention counts from the earlier of the run's time and the wall clock and keeps the
newest day of every kind and service. Config path: the Airflow Variable ``surgecast_config``,
else ``$SURGECAST_CONFIG``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from surgecast.live.dag_support import load_config, run_now

SCHEDULE = os.environ.get("SURGECAST_RETRAIN_SCHEDULE", "@daily")


@dag(
    dag_id="surgecast_retrain",
    schedule=SCHEDULE,
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5),
                  "execution_timeout": timedelta(hours=2)},
    tags=["surgecast"],
    doc_md=__doc__,
)
def surgecast_retrain():
    @task
    def services() -> list[str]:
        return load_config().names

    @task
    def retrain(service: str) -> str:
        from surgecast.live.pipeline import retrain as stage

        return stage(load_config(), service, run_now())

    @task(trigger_rule="all_done")
    def prune() -> int:
        from surgecast.live.pipeline import prune as stage

        return len(stage(load_config(), run_now()))

    retrain.expand(service=services()) >> prune()


surgecast_retrain()
