"""The `mezo-ckpt` command group (mezo_ckpt/cli/main.py): --version, --help and the
commands the package puts into the group."""

from __future__ import annotations

import re

import click
from click.testing import CliRunner

from mezo_ckpt import __version__
from mezo_ckpt.cli import main
from mezo_ckpt.cli.common import Group
from mezo_ckpt.cli.main import main as group

COMMANDS = {"train", "replay", "info", "push", "pull", "diff", "apply-delta", "sweep"}


def test_the_package_exports_the_group_of_main_py_with_the_error_boundary():
    assert main is group
    assert isinstance(main, click.Group) and isinstance(main, Group)
    assert set(main.commands) == COMMANDS


def test_version_prints_the_package_version():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"mezo-ckpt, version {__version__}"


def test_help_lists_every_command_with_its_summary_and_the_examples():
    for flag in ("--help", "-h"):
        r = CliRunner().invoke(main, [flag])
        assert r.exit_code == 0, r.output
        listed = re.search(r"^Commands:\n((?:  \S.*\n)+)", r.stdout, re.M)
        assert listed is not None, r.stdout
        names = {line.split()[0] for line in listed.group(1).splitlines()}
        assert names == COMMANDS
        assert "Fine-tune language models with MeZO" in r.stdout
        assert "Examples:" in r.stdout and "mezo-ckpt replay trajectory.zst -o tuned/" in r.stdout
        assert "--version" in r.stdout


def test_every_command_has_help_ending_with_examples():
    for name in sorted(COMMANDS):
        r = CliRunner().invoke(main, [name, "--help"])
        assert r.exit_code == 0, (name, r.output)
        assert "Examples:" in r.stdout, name
        assert f"mezo-ckpt {name}" in r.stdout, name


def test_an_unknown_command_is_a_usage_error():
    r = CliRunner().invoke(main, ["replya"])
    assert r.exit_code == 2
    assert "No such command 'replya'" in r.stderr
    assert r.stdout == ""


def test_no_command_shows_the_usage():
    r = CliRunner().invoke(main, [])
    assert r.exit_code == 2
    assert "Usage:" in r.output and "Commands:" in r.output
