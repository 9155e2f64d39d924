"""Errors that carry one sentence for the user: what is wrong and what to do."""


class ClusterlabError(Exception):
    """A problem the user can fix; its message is shown as is, without a traceback."""


class ConfigError(ClusterlabError, ValueError):
    """A setting (CLI flag, config field, form value) is invalid."""


class DataError(ClusterlabError):
    """A dataset could not be found or read."""


class SessionError(ClusterlabError):
    """A session directory is missing, invalid, corrupt or from a newer version."""


class WriteError(ClusterlabError, OSError):
    """The system refused a write (a read-only folder, an immutable file, a full disk); still an OSError, so code
    that retries a failed write (Ray's tasks) sees it as one."""

    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


class TrainingError(ClusterlabError):
    """A job could not go on (the loss became NaN or infinite, a command made no sense)."""


# The command line's exit codes: a failed job, bad input (always with one sentence), an interrupted run.
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
