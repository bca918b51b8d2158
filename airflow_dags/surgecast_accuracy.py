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

from airflow.sdk import dag, get_current_context, task

CONFIG_VARIABLE = "surgecast_config"
CONFIG_ENV = "SURGECAST_CONFIG"
SCHEDULE = os.environ.get("SURGECAST_ACCURACY_SCHEDULE", "@daily")


def _settings():
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
    context = get_current_context()
    return context.get("data_interval_end") or context["dag_run"].run_after


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
        return _settings().names

    @task
    def accuracy(service: str) -> str:
        from surgecast.pipeline import accuracy as stage

        return stage(_settings(), service, _now())

    accuracy.expand(service=services())


surgecast_accuracy()
