"""Errors shared by every stage.

Only user-facing input problems get their own type; programming errors stay ordinary exceptions.
"""

from __future__ import annotations

import re

_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


class BadInputError(ValueError):
    """Bad user input: a file, series or argument that breaks a contract.

    The message is always ONE line that names the input (file path or series name) and the
    problem, e.g. ``data/x.csv: timestamps not strictly increasing at row 17
    (2024-01-01T00:16:00Z after 2024-01-01T00:17:00Z)``. Line breaks in the message (e.g. from a
    wrapped parser error) are folded into single spaces. Front ends print it as is, without a
    traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_LINE_BREAKS.sub(" ", str(message)).strip())
