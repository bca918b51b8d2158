"""The planner's one error type for bad input.

The planner does not import ``forecasting`` (the stages are independent), so it has its own type,
with the same contract as the forecasting stage's: programming errors stay ordinary exceptions.
"""

from __future__ import annotations

import re

_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


class PlannerInputError(ValueError):
    """Bad planner input: a profile file, a load, an SLO or a cluster state that breaks a contract.

    The message is always ONE line that names the input and the problem, e.g.
    ``--slo-ms: must be > 0, got -5``. Line breaks (e.g. from a wrapped parser error) are folded
    into single spaces, so front ends can print it as is, without a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_LINE_BREAKS.sub(" ", str(message)).strip())
