"""What the Airflow DAG files share: where the service config is, and the run's "now".

Both are read at the edge, inside tasks: the config path from the Airflow Variable
``surgecast_config`` (else the environment variable ``SURGECAST_CONFIG``), the time from the
run's data interval. Nothing here imports Airflow or the stages at module level, so DAG files
that import it still parse in milliseconds.
"""

from __future__ import annotations

import os

CONFIG_VARIABLE = "surgecast_config"
"""Airflow Variable holding the path of the service config (YAML)."""

CONFIG_ENV = "SURGECAST_CONFIG"
"""Environment variable read when the Variable is not set."""


def load_config():
    """The service config, loaded once per task."""
    from airflow.sdk import Variable

    from surgecast.settings import load_settings

    path = Variable.get(CONFIG_VARIABLE, default=None) or os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(
            f"surgecast: set the Airflow Variable {CONFIG_VARIABLE} or ${CONFIG_ENV} to the "
            "service config file"
        )
    return load_settings(path)


def run_now():
    """The run's time: the end of its data interval (else when the run was due)."""
    from airflow.sdk import get_current_context

    context = get_current_context()
    return context.get("data_interval_end") or context["dag_run"].run_after
