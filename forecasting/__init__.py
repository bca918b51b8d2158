"""Forecasting stage: cleaning of RPS histories and CEEMDAN decomposition (models, quantiles and
evaluation build on them). Pure: no file, network or cluster I/O.
"""
