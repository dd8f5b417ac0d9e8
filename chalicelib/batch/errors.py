"""The batch steps' errors, by the names statemachines/batch_score.asl.json catches (chalicelib.core.errors says why
names, and which base means what). Bad rows never raise: they are marked in the scored file; these stop a run."""

from __future__ import annotations

from chalicelib.core.errors import InvalidEvent, PermanentError
from chalicelib.registry.loader import NoChampion

__all__ = [
    "BatchFileError",
    "BatchRunError",
    "DuplicateColumns",
    "IncompleteRun",
    "InvalidEvent",
    "MissingColumns",
    "ModelVersionMismatch",
    "NoChampionToScore",
    "SourceMissing",
]


class BatchRunError(PermanentError):
    """Base class for failures that stop a batch run (bad rows never do)."""


class IncompleteRun(BatchRunError):
    """The scored parts do not hold every prepared row: a batch is missing or was written twice."""


class ModelVersionMismatch(BatchRunError):
    """The model found is not the version the run pinned."""


class NoChampionToScore(BatchRunError, NoChampion):
    """The registry has no champion: nothing to score with until a model is promoted."""


class SourceMissing(BatchRunError, FileNotFoundError):
    """The uploaded file is gone (deleted or renamed before the run read it)."""


class BatchFileError(PermanentError, ValueError):
    """The file as a whole cannot be scored (not its rows: bad rows are reported, never fatal)."""


class MissingColumns(BatchFileError):
    """The header lacks columns every encounter needs."""


class DuplicateColumns(BatchFileError):
    """The header names a column twice, so a row's value for it would be ambiguous."""
