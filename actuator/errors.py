"""The actuator's name for the one input-error type.

``ActuatorInputError`` IS :class:`forecasting.errors.BadInputError` (through
:mod:`planner.errors`, the layer below): a bad spec, plan file or argument raises it with one
line naming the field and the problem, e.g. ``mode: 'live' is not one of shadow, active``.

Failures of the Kubernetes API are not exceptions of this kind: they are recorded in the decision
record, change by change, and never raised out of a run.
"""

from __future__ import annotations

from planner.errors import BadInputError

ActuatorInputError = BadInputError

__all__ = ["ActuatorInputError", "BadInputError"]
