"""Errors for bad input: one line that names the input and the problem."""

from __future__ import annotations


class BadInputError(ValueError):
    """Bad user input (a file, a series, an argument).

    The message is one line naming the input (file path or series name) and the problem, e.g.
    ``data/x.csv: timestamps not strictly increasing at row 17``. Front ends print it as is,
    without a traceback.
    """
