"""Helpers shared by the `mezo-ckpt` commands (no command imports another)."""

from __future__ import annotations

import contextlib
import sys

import click

from mezo_ckpt.errors import MezoCkptError
from mezo_ckpt.util.fsutil import explain_os_error
from mezo_ckpt.util.text import clean

#: Written at the end of every command's help (click's ``epilog``), before the examples.
STEP_HELP = (
    "Rebuild the weights after step N (0 = the base), at the best evaluated step, "
    "or at the last recorded step (default)."
)


def parse_step(value: str | None, flag: str = "--step") -> int | str | None:
    """A step option's value (``flag`` names it in errors): an integer, 'best', 'last',
    or None."""
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("best", "last"):
        return v
    try:
        n = int(v.replace("_", "").replace(",", ""))
    except ValueError:
        raise click.BadParameter("use an integer, 'best' or 'last'", param_hint=flag) from None
    if n < 0:
        raise click.BadParameter("steps count from 0 (the base)", param_hint=flag)
    return n


def fail(e: BaseException) -> None:
    """Print a typed error as one line and exit 2 (never a traceback)."""
    if isinstance(e, MezoCkptError):
        name, msg = type(e).__name__, str(e)
    else:
        assert isinstance(e, OSError)
        name = type(e).__name__
        msg = explain_os_error(e, e.filename or "", "use") if e.filename else str(e)
    click.echo(f"Error ({name}): {clean(msg, keep_newlines=True)}", err=True)
    sys.exit(2)


class Group(click.Group):
    """Catches errors once, at the boundary: our typed errors and operating-system
    failures become one clear line and exit code 2; Ctrl-C exits 130 without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # `mezo-ckpt ... | head`: the reader left, not an error
            import os

            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except (MezoCkptError, OSError) as e:
            fail(e)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
