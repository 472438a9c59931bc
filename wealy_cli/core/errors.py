"""Errors that are the user's to fix: printed as one line, exit code 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a missing file, a malformed value, an option that does not apply."""
