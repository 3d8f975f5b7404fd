"""The one exception type for user mistakes.

A `UserError` carries a message that names the problem and the fix; the CLI prints it without a
traceback and exits non-zero. It is a leaf module: every layer (data and models included) may raise it.
"""


class UserError(Exception):
    """A mistake the user can fix: bad config key, missing or corrupt file, unknown name."""
