"""The one exception type for bad input.

Every entry point (command line, Slicer logic, training) raises :class:`UserInputError` with one
sentence that names the file or value and says what is wrong; the command line prints that
sentence and exits with :data:`EXIT_BAD_INPUT`, the Slicer module shows it in a message box.
"""

__all__ = ["EXIT_BAD_INPUT", "UserInputError"]

EXIT_BAD_INPUT = 2
"""The command line's exit status for bad input (1 is a crash); the Slicer module reads it."""


class UserInputError(Exception):
    """A problem with what the user gave us (a file, a value), not a bug in the program."""
