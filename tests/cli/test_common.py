"""The helpers every command shares (mezo_ckpt/cli/common.py): --step parsing, and the
boundary that turns typed and operating-system errors into one line and exit code 2."""

from __future__ import annotations

import errno

import click
import pytest
from click.testing import CliRunner

from mezo_ckpt.cli.common import STEP_HELP, Group, fail, parse_step
from mezo_ckpt.errors import (
    MezoCkptError,
    ModelLoadError,
    OutputExistsError,
    StepOutOfRangeError,
)


def boom(exc: BaseException) -> click.Group:
    """A group with the shared error boundary and one command, `go`, raising ``exc``."""

    @click.group(cls=Group)
    def cli() -> None:
        pass

    @cli.command()
    def go() -> None:
        click.echo("started")
        raise exc

    return cli


def run(exc: BaseException):
    return CliRunner().invoke(boom(exc), ["go"])


# ----------------------------------------------------------------------------- --step


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (None, None),
        ("0", 0),
        ("42", 42),
        (" 7 ", 7),
        ("1_000", 1000),
        ("1,000", 1000),
        ("best", "best"),
        ("BEST", "best"),
        (" Last ", "last"),
    ],
)
def test_parse_step_accepts_integers_best_and_last(text, value):
    assert parse_step(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1", "steps count from 0"),
        ("abc", "use an integer, 'best' or 'last'"),
        ("1.5", "use an integer"),
        ("", "use an integer"),
        ("first", "use an integer"),
    ],
)
def test_parse_step_refuses_anything_else_as_a_bad_parameter(text, message):
    with pytest.raises(click.BadParameter, match=message) as err:
        parse_step(text)
    assert err.value.param_hint == "--step"


def test_step_help_names_every_accepted_form():
    assert "0 = the base" in STEP_HELP and "best" in STEP_HELP and "last" in STEP_HELP


# ----------------------------------------------------------------------------- fail()


def test_fail_prints_the_error_type_and_message_on_one_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as ex:
        fail(StepOutOfRangeError("step 9 is outside the trajectory (0..4)"))
    assert ex.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "Error (StepOutOfRangeError): step 9 is outside the trajectory (0..4)\n"


def test_fail_explains_an_os_error_by_its_errno_and_path(capsys):
    with pytest.raises(SystemExit) as ex:
        fail(OSError(errno.ENOSPC, "No space left on device", "/data/out.zst"))
    assert ex.value.code == 2
    assert capsys.readouterr().err == (
        "Error (OSError): cannot use /data/out.zst: the disk is full\n"
    )


def test_fail_keeps_the_text_of_an_os_error_without_a_path(capsys):
    with pytest.raises(SystemExit):
        fail(PermissionError(errno.EACCES, "Permission denied"))
    assert capsys.readouterr().err == "Error (PermissionError): [Errno 13] Permission denied\n"


def test_fail_escapes_control_characters_but_keeps_newlines(capsys):
    with pytest.raises(SystemExit):
        fail(MezoCkptError("bad name \x1b]0;pwned\x07\n  - second line"))
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert err == "Error (MezoCkptError): bad name \\x1b]0;pwned\\x07\n  - second line\n"


# ----------------------------------------------------------------------------- Group


def test_group_turns_a_typed_error_into_one_line_and_exit_2():
    r = run(OutputExistsError("-o out exists: choose another name (or pass --overwrite)"))
    assert r.exit_code == 2
    assert r.stdout == "started\n"
    assert r.stderr == (
        "Error (OutputExistsError): -o out exists: choose another name (or pass --overwrite)\n"
    )
    assert "Traceback" not in r.output


def test_group_names_the_most_specific_type_of_an_error_that_is_also_an_os_error():
    r = run(ModelLoadError("no config.json"))  # a MezoCkptError and an OSError
    assert r.exit_code == 2
    assert r.stderr == "Error (ModelLoadError): no config.json\n"


def test_group_turns_an_os_error_into_one_line_and_exit_2():
    r = run(FileNotFoundError(errno.ENOENT, "No such file or directory", "/no/such/dir/x"))
    assert r.exit_code == 2
    assert r.stderr == (
        "Error (FileNotFoundError): cannot use /no/such/dir/x: a folder on the path does not "
        "exist\n"
    )


def test_group_exits_130_on_ctrl_c_without_a_traceback():
    r = run(KeyboardInterrupt())
    assert r.exit_code == 130
    assert r.stderr == "Interrupted.\n"


def test_group_treats_a_closed_pipe_as_success():
    r = run(BrokenPipeError(errno.EPIPE, "Broken pipe"))
    assert r.exit_code == 0
    assert "Error" not in r.output


def test_group_lets_a_bug_surface_as_a_traceback():
    r = run(ZeroDivisionError("a bug"))
    assert r.exit_code == 1
    assert isinstance(r.exception, ZeroDivisionError)
    assert "Error (" not in r.output
