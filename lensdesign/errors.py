"""Errors shown to the user as one line (exit code 2)."""


class LensdesignError(Exception):
    """A user-facing error: bad input, impossible setup. The message is one line naming the field and the fix."""


class SpecError(LensdesignError):
    """The spec is malformed or physically impossible."""
