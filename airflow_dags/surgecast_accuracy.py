"""surgecast_accuracy: daily, score yesterday's forecasts against what Prometheus recorded.

    services ──► accuracy × one per service (.expand)

Each task reads the service's forecasts of the day before the run's data interval end, reads
the recorded load from Prometheus, writes an accuracy report (MAE, RMSE, sMAPE, MASE, pinball
loss and coverage per quantile, under-prediction rate at the planning quantile, MAE per horizon
step) to the artifact store and pushes the headline figures to the Pushgateway. Config path:
the Airflow Variable ``surgecast_config``, else ``$SURGECAST_CONFIG``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from surgecast.live.dag_support import load_config, run_now

SCHEDULE = os.environ.get("SURGECAST_ACCURACY_SCHEDULE", "@daily")


@dag(
    dag_id="surgecast_accuracy",
    schedule=SCHEDULE,
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
    tags=["surgecast"],
    doc_md=__doc__,
)
def surgecast_accuracy():
    @task
    def services() -> list[str]:
        return load_config().names

    @task
    def accuracy(service: str) -> str:
        from surgecast.live.pipeline import accuracy as stage

        return stage(load_config(), service, run_now())

    accuracy.expand(service=services())


surgecast_accuracy()
