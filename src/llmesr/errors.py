"""Errors that describe a user mistake (bad input, bad option) rather than a bug.

The CLI prints them as one line and exits with status 2, without a traceback.
"""


class LlmesrError(Exception):
    """A problem with the user's input or settings; the message names it and the fix."""


class DataFormatError(LlmesrError):
    """A file is not in the expected format (the message names the file and line)."""


class ChecksumError(LlmesrError):
    """A file's sha256 differs from the expected one."""


class EmptyResultError(LlmesrError):
    """Filtering left nothing (or not enough) to work with."""
