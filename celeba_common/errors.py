"""The one exception every layer raises for a bad input or environment; entry points print it as one line."""


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""
