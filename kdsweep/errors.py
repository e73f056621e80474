"""Every error type of kdsweep, and the one way an exception becomes one line (a leaf: imports nothing of kdsweep).

The command line turns ConfigError, DataError, ModelError, StatusError and FacetError into `kdsweep: error: <line>`
and exit status 2, before any compute; the others name a file or a run and end up in result rows and warnings.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A config problem, phrased as one line naming the offending key."""


class DataError(RuntimeError):
    """A dataset could not be loaded; the message names the path or key."""


class DataWarning(UserWarning):
    """A dataset cache was stale, corrupt or could not be written; loading went on without it."""


class ModelError(RuntimeError):
    """A model could not be built as asked; the message names the key."""


class CheckpointError(RuntimeError):
    """A checkpoint is corrupt, truncated or holds pickled objects; the message names the path."""


class DivergedError(RuntimeError):
    """Training produced a non-finite or exploding loss."""


class ExportError(RuntimeError):
    """Export failed or ORT disagrees with PyTorch; one line saying which."""


class ResultError(RuntimeError):
    """A result file is unreadable; the message names the path."""


class StatusError(ValueError):
    """The path is not a kdsweep experiment (exit 2)."""


class FacetError(ValueError):
    """`facet` names no swept key of the experiment; the message is one line naming it and the swept keys."""


def one_line(exc: BaseException, limit: int = 300, with_type: bool = True) -> str:
    """An exception as one short line: 'Type: first line of its message' (only the message with `with_type` False).

    Library errors often carry pages of advice or a traceback after their first line; result rows, warnings and
    `kdsweep: error:` lines keep the first line, cut to `limit` characters."""
    lines = str(exc).strip().splitlines()
    text = lines[0][:limit] if lines else ""
    if not with_type:
        return text
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def last_line(text: str, limit: int = 300) -> str:
    """The last line of a traceback or log text (where Python puts the exception), cut to `limit` characters."""
    lines = text.strip().splitlines()
    return lines[-1][:limit] if lines else ""
