"""The offline room: what replays history without a cluster.

Trace sources, forecast evaluation, the cluster simulator, the baseline policies, the backtest
and the reports. Nothing here imports ``surgecast.live``; the backtest drives the same control
loop (``actuator``) as production through the simulator's cluster port.
"""
