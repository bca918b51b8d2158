"""The actuator's one error type for bad input (settings, plan files, arguments).

Failures of the Kubernetes API are not exceptions of this kind: they are recorded in the decision
record, change by change, and never raised out of a run.
"""

from __future__ import annotations

import re

_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


class ActuatorInputError(ValueError):
    """Bad actuator input. The message is ONE line that names the field and the problem, e.g.
    ``mode: 'live' is not one of shadow, active``; front ends print it without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(_LINE_BREAKS.sub(" ", str(message)).strip())
