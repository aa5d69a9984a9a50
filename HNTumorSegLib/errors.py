"""User-facing errors.

Anything a user can cause (a wrong path, a PET in Bq/mL, a tampered model file) raises
:class:`InputError` with a one-line message that names the file and what is wrong. The CLI
prints that line and exits 2; it never shows a traceback for these.
"""


class InputError(ValueError):
    """Bad input from the user: the message is one line, naming the file and the problem."""


class ModelFileError(InputError):
    """A model file that is missing, corrupt, or does not match its JSON config."""
