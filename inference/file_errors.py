"""What a reader or a gate says of a file a user gave: typed, so each door answers it the same way (HTTP 415)."""

from __future__ import annotations


class UnreadableFileError(ValueError):
    """The file is not a single-cell matrix we can read; the message says what it looks like instead."""


class UnsafeFileError(UnreadableFileError):
    """The file's structure is refused before any array is read: it points outside itself or lies about itself."""
