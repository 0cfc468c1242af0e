"""Error types.

``UserError`` is bad input (unknown suite, malformed pipeline text, missing data, ...): the CLI
prints its message as one line on stderr and exits with code 2.  Anything else is a bug.
"""


class UserError(Exception):
    """Bad input that the user can fix; its message is one line that says what and where."""


class ArtifactError(UserError):
    """An artifact folder that is incomplete, corrupt or tampered with."""


class DiskFull(UserError):
    """The disk (or quota) holding a run or an artifact is full: the environment, not the input."""
