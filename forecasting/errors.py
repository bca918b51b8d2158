"""The one error type for bad input, shared by every stage and front end.

Only user-facing input problems get their own type; programming errors stay ordinary exceptions.
The planner (``planner.errors``), the actuator (``actuator.errors``) and the service config
(``surgecast.settings``) re-export this very class under their historical names, so a front end
catches one type and no layer converts one error into another.
"""

from __future__ import annotations

import re

_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


class BadInputError(ValueError):
    """Bad user input: a file, series, config field or argument that breaks a contract.

    The message is always ONE line that names the input (file path, series name, or file,
    service and field) and the problem, e.g. ``data/x.csv: timestamps not strictly increasing
    at row 17 (2024-01-01T00:16:00Z after 2024-01-01T00:17:00Z)`` or ``services.yaml: service
    resnet: forecast.horizon_steps: must be an integer in 1..1440, got 0``. Line breaks in the
    message (e.g. from a wrapped parser error) are folded into single spaces. Front ends print
    it as is, without a traceback (the CLI exits with status 2).
    """

    def __init__(self, message: str) -> None:
        super().__init__(_LINE_BREAKS.sub(" ", str(message)).strip())


def first_problem(exc, whole: str = "document") -> str:
    """A pydantic ``ValidationError`` as one line: where its first problem is (dotted path;
    ``whole`` for the document itself), what it is, and how many problems there are."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or whole
    count = exc.error_count()
    more = f" ({count} problem(s))" if count > 1 else ""
    return f"{where}: {first['msg']}{more}"
