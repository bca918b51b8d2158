"""surgecast_retrain: daily, refit each service's forecasting model and prune old artifacts.

    services ──► retrain × one per service (.expand) ──► prune

A model is refitted when it is due under the service's ``forecast.refit_every_h`` (a daily run
refits a 24 h cadence every day); the scaling runs load the newest stored model. A refit that
fails (Prometheus down, history too short) fails its task; the scaling runs keep the previous
model. Config path: the Airflow Variable ``surgecast_config``, else ``$SURGECAST_CONFIG``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, get_current_context, task

CONFIG_VARIABLE = "surgecast_config"
CONFIG_ENV = "SURGECAST_CONFIG"
SCHEDULE = os.environ.get("SURGECAST_RETRAIN_SCHEDULE", "@daily")


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
        return _settings().names

    @task
    def retrain(service: str) -> str:
        from surgecast.pipeline import retrain as stage

        return stage(_settings(), service, _now())

    @task(trigger_rule="all_done")
    def prune() -> int:
        from surgecast.pipeline import prune as stage

        return len(stage(_settings(), _now()))

    retrain.expand(service=services()) >> prune()


surgecast_retrain()
