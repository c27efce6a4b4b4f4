"""The one exception family the CLI turns into a one-line message and a non-zero exit."""


class VlmbenchError(Exception):
    """A user-facing error: the message names the bad value and, where possible, the fix."""
