"""Errors raised by the dataset loaders; each message says what was wrong and what to do."""

from __future__ import annotations

from ..errors import BdpruneError


class DatasetNotFoundError(BdpruneError, FileNotFoundError):
    """The dataset files are not where we looked."""


class DatasetFormatError(BdpruneError, ValueError):
    """A dataset file exists but is truncated, corrupt or not in the expected format."""
