"""Actuator stage: Plan -> guarded declarative target state -> Kubernetes API, with a decision
record for every run. The only package that imports ``kubernetes``.
"""
