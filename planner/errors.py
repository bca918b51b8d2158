"""The planner's name for the one input-error type.

``PlannerInputError`` IS :class:`forecasting.errors.BadInputError`: a profile file, a load, an
SLO or a cluster state that breaks a contract raises it, and every front end catches the one
type. This module is the only place the planner touches ``forecasting`` (the import contract
lets exactly this import through); the stages stay otherwise independent.
"""

from __future__ import annotations

from forecasting.errors import BadInputError

PlannerInputError = BadInputError
"""Bad planner input; the message is one line naming the input, e.g. ``--slo-ms: must be > 0,
got -5``."""

__all__ = ["BadInputError", "PlannerInputError"]
