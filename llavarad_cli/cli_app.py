"""How every `llavarad` command behaves, in one place: errors as one line, flags shown without a type.

- A ``UserError`` (a mistake the user can fix) is one red line on stderr, exit 2; bugs keep their traceback.
- An ``OSError`` (an output that cannot be written: full disk, read-only folder, a file in a folder's place)
  is one line naming the path and the reason, exit 1.
- A usage error found by the option parser (unknown option, missing value, bad number) is one line too, with
  the command whose ``--help`` lists the options, exit 2 (Typer would draw a five-line box).
- Flags (``--overwrite``, ``--help``) show no ``<bool>`` placeholder in the help: they take no value.
"""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from llavarad_cli.console import safe, visible
from llavarad_cli.errors import UserError, WorkerFailed, os_error_line

try:  # Typer 0.2x ships its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # older Typer runs on click itself
    from click.exceptions import ClickException

err_console = Console(stderr=True)


def print_error(text: str) -> None:
    """One red ``error:`` line on stderr; ``text`` may come from input, so it is shown escaped."""
    err_console.print(f"[bold red]error:[/] {safe(text)}", soft_wrap=True, highlight=False)


def user_errors(fn):
    """Turn a UserError into one red line on stderr and its exit code; anything else keeps its traceback.

    A crashed training worker (WorkerFailed) is one line too, exit code 1: its traceback is the worker's, already
    printed and saved beside the run, and the parent's own would only show the launcher returning."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, WorkerFailed) as exc:
            print_error(exc.one_line())
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # a full disk, a read-only folder, a file where a folder must be: not a bug
            print_error(os_error_line(exc))
            raise typer.Exit(1) from None

    return wrapper


class _FlagsWithoutType:
    """A flag takes no value, so its help row shows no type (Typer prints ``<bool>`` for every flag)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_FlagsWithoutType, TyperCommand):
    pass


class Group(_FlagsWithoutType, TyperGroup):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed: nothing else to say
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            what = "commands" if isinstance(getattr(ctx, "command", None), TyperGroup) else "options"
            hint = f" (hint: `{visible(ctx.command_path)} --help` lists the {what})" if ctx is not None else ""
            print_error(" ".join(visible(exc.format_message()).split()) + hint)
            sys.exit(exc.exit_code)
        except typer.Abort:
            err_console.print("aborted", highlight=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


class App(typer.Typer):
    """A Typer app whose commands are all ``Command``s (and so share the behaviour above)."""

    def __init__(self, **kwargs):
        super().__init__(cls=Group, **kwargs)

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)
