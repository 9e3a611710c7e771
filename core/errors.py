"""The one error family users can cause. The CLI prints its message on one line and exits 2."""


class RobxError(Exception):
    """A problem with the user's input or environment (not a bug in robx)."""

    #: the command line's exit status: 2 for bad input; 1 for a job that failed on its way
    exit_code = 2


class UnknownPluginError(RobxError):
    pass


class PluginConflictError(RobxError):
    pass


class PluginError(RobxError):
    """A plugin that does not fit robx's hooks (unknown hook name, wrong arguments)."""


class OptionError(RobxError):
    pass


class DataNotFoundError(RobxError):
    pass


class DataError(RobxError):
    """Data that is there but is not what the dataset says it is (a malformed file)."""


class CheckpointError(RobxError):
    pass


class RunDirError(RobxError):
    pass


class RunDirBusyError(RunDirError):
    """Another process holds the run directory (its lock): one writer at a time."""


class WriteError(RobxError):
    """A file could not be written (a read-only or full filesystem, a size limit); the file
    that was there is unchanged."""


class NonFiniteLossError(RobxError):
    pass


class TrainingPaused(Exception):
    """Training stopped cleanly before an epoch that would end after its deadline; the
    run directory's checkpoint continues it (``train(..., resume=True)``)."""

    def __init__(self, next_epoch: int) -> None:
        super().__init__(f"paused before epoch {next_epoch}; resume from the checkpoint")
        self.next_epoch = next_epoch
