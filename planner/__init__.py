"""Planner stage: latency profiles, queueing delay, the joint horizontal/vertical DPs and the
two-stage policy, producing a Plan. Pure: takes load arrays (not Forecast objects), does no I/O.
"""
