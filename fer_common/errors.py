"""The toolkit's one error type. It sits below every other module, so anything may raise it."""


class FERError(Exception):
    """A problem with the user's input or environment, told in one line (no traceback)."""
