"""The one error a run's library code raises for a setting, a folder or a file it cannot
use: the message names the cause and what to do; train.py's main prints it and exits."""


class RunError(ValueError):
    """A run that cannot start or continue as asked, with the reason and the way out."""
