"""Typed errors. Each subclasses the builtin a caller would naturally catch."""

from __future__ import annotations


class MezoCkptError(Exception):
    """Base class of every error raised on purpose by mezo-ckpt."""


class TrajectoryError(MezoCkptError):
    """Base class of errors about a trajectory file or its use."""


class TrajectoryNotFoundError(TrajectoryError, FileNotFoundError):
    """The trajectory file does not exist."""


class TrajectoryFormatError(TrajectoryError, ValueError):
    """The bytes are not a well-formed trajectory."""


class BadMagicError(TrajectoryFormatError):
    """The file does not start with the trajectory magic (empty or foreign file)."""


class TruncatedError(TrajectoryFormatError):
    """The file ends in the middle of a frame, or before its header."""


class CorruptFrameError(TrajectoryFormatError):
    """A frame fails its checksum, lacks one, is oversized, or is followed by garbage."""


class HeaderError(TrajectoryFormatError):
    """The header is not valid UTF-8 JSON or violates the schema."""


class RecordError(TrajectoryFormatError):
    """Step records are malformed (length, step order, flags, coefficient values)."""


class UnsupportedError(TrajectoryError, NotImplementedError):
    """The file needs a format version, feature, generator or arithmetic this version lacks."""


class BaseMismatchError(TrajectoryError, ValueError):
    """The base model offered for replay is not the one the trajectory was trained from.

    Attributes:
        differences: human-readable lines, one per differing property.
    """

    def __init__(self, message: str, differences: list[str] | None = None) -> None:
        self.differences = list(differences or [])
        if self.differences:
            message = message + "\n" + "\n".join(f"  - {d}" for d in self.differences)
        super().__init__(message)


class VerificationError(TrajectoryError, RuntimeError):
    """Replayed weights do not match the fingerprint recorded by the trainer."""


class StepOutOfRangeError(TrajectoryError, IndexError):
    """A requested step is outside the trajectory (or no evaluation picks a best step)."""


class ConfigError(MezoCkptError, ValueError):
    """A training configuration value is invalid."""


class DataError(MezoCkptError, ValueError):
    """A data file is missing, unreadable or lacks required fields."""


class ModelLoadError(MezoCkptError, OSError):
    """A base model could not be found or loaded."""
