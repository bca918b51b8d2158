"""Forecasting stage: cleaning of RPS histories and CEEMDAN decomposition (models, quantiles and
evaluation build on them). Pure: no file, network or cluster I/O.
"""

DEFAULT_MODEL = "adaptive"
"""The forecaster surgecast runs unless a service names another (``forecast.model``): the
adaptive weighting of naive, seasonal naive, ETS and LightGBM (``forecasting.models.Adaptive``).
Here, without imports, so that the command line can name it without loading the models."""
