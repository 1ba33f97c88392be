"""User-facing errors.

Every error a user can cause by a bad value, path or file is raised as :class:`NndistError`
(or a subclass). Its message is one line that names the bad thing and the fix; the CLI prints
it without a traceback (unless ``--debug``) and exits with status 2.
"""

from __future__ import annotations


class NndistError(Exception):
    """A bad input (value, path, file) that the user can fix; the message says how."""


class UnknownNameError(NndistError, KeyError):
    """A name that is not in a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
