"""Typed exceptions. The library raises these; the CLI turns them into one clear line."""


class VsrxError(Exception):
    """Base class for every error vsrx reports to a user."""

    exit_code = 1


class UsageError(VsrxError):
    """A bad flag value or an impossible combination of options."""

    exit_code = 2


class InputError(VsrxError):
    """An input file or folder is missing, unreadable or of the wrong layout."""


class ModelError(VsrxError):
    """A model, checkpoint or weights file does not fit what was asked."""
