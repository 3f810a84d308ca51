"""The errors bdprune raises for input that a user can fix.

Each message names the input and says what to do. The command line prints a `BdpruneError` as one line
(exit status 2) and lets every other exception, a bug, show its traceback. The classes also derive from the
built-in exception a Python caller would expect (`ValueError`, `KeyError`, `FileNotFoundError`).
"""

from __future__ import annotations


class BdpruneError(Exception):
    """Base class: a problem with the input (options, files, data), not with bdprune."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidInput(BdpruneError, ValueError):
    """A value, option or data set that cannot be used as given."""


class UnknownName(BdpruneError, KeyError):
    """A name that is not registered (model, attack, defense, dataset, preset, parameter)."""


class CheckpointError(BdpruneError, ValueError):
    """A checkpoint is missing, inconsistent, or cannot be loaded safely."""


class UnsafeCheckpointError(CheckpointError):
    """The file would need arbitrary code execution (a general pickle) to load."""


class OutputError(BdpruneError, OSError):
    """An output cannot be written (a read-only directory, a full disk)."""
