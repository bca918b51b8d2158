"""The live room: what runs against a cluster on a schedule.

Prometheus reads, the artifact and model stores, the pipeline's stages (ingest, forecast, plan,
actuate), the in-place bridge controller and what the Airflow DAGs call. Nothing here imports
``surgecast.offline``.
"""
