"""User-facing errors.

Every failure a user can cause is raised as :class:`UserError` with a message that names the
file, line, key or tensor at fault. The CLI prints it as a single line and exits non-zero;
library callers can catch it like any exception.
"""


class UserError(Exception):
    """A problem with the user's input (config, data, checkpoint, arguments)."""


class ConfigError(UserError):
    """A bad config key or value."""


class CheckpointError(UserError):
    """A missing, malformed or incompatible checkpoint."""


class DataError(UserError):
    """A malformed data file or record."""
