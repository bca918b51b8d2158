"""The offline room: what replays history without a cluster.

Trace sources, forecast evaluation, the in-memory cluster model and its API handlers
(``cluster``, ``apiserver``), the cluster port on it (``port.SimPort``), the serving engine
(``simulator``, ``engine``), the controllers (``controllers``), the backtest and the reports.
Nothing here imports ``surgecast.live``; the backtest drives the same actuator as production
(``actuator.apply.actuate``) through the port.
"""
