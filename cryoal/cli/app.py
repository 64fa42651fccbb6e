"""The Typer application object and the error handling every command shares.

Commands register with `@command()` (not `@app.command()`), which wraps them so that a
user-facing error becomes one line on stderr and exit code 1, never a traceback, and gives them
`CryoalCommand`, which tidies every command's help the same way (see there). The app's group,
`CryoalGroup`, prints the parser's usage errors (unknown option, missing argument, a value out of
range or not one of the choices) as one plain line too, with exit code 2.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import get_args

import typer
from rich.markup import escape

# Typer (0.29) vendors click; its exceptions are what its parser raises
from typer._click.exceptions import BadParameter, ClickException, MissingParameter, NoArgsIsHelpError
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from cryoal.errors import CryoalError, OptionError
from cryoal.io.signals import EXIT_TERMINATED, Terminated, terminated

EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# a longer `[a|b|...]` would be folded mid-word by the help table: such choices go in the help text
_MAX_CHOICES_WIDTH = 40


class Choices(str):
    """A metavar whose choices are looked up when help is shown, as `[a|b|c]`.

    The string itself is a placeholder (e.g. `SCHEME`); `names()` asks the registry that owns the
    names, so a command module need not import it (and torch) for `cryoal --help` to start fast.
    """

    def __new__(cls, placeholder: str, names: Callable[[], Iterable[str]]) -> Choices:
        self = super().__new__(cls, placeholder)
        self.names = lambda: tuple(names())
        return self

    def render(self) -> str:
        """`[a|b|c]`, as help shows it; the placeholder when that is too wide for the column."""
        text = "[" + "|".join(self.names()) + "]"
        return text if len(text) <= _MAX_CHOICES_WIDTH else str(self)

    def listed_in_help(self) -> bool:
        """Whether the choices are too many for the type column and go in the help text instead."""
        return self.render() == str(self)


def _value_kind(param: TyperOption | TyperArgument) -> str:
    """What a parameter's value is, in click's words: TEXT, INTEGER, FLOAT, PATH or [a|b|c].

    Typer would show the Python annotation (`<bool>`, `<list[str]>`, `<path>`); users then type
    `--force true`. A flag takes no value, so it shows nothing.
    """
    if isinstance(param.metavar, Choices):
        return param.metavar.render()
    if isinstance(param, TyperOption) and (param.is_flag or param.count):
        return ""
    desc = param.type_descriptor
    if desc.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices) + "]"
    if desc.is_path:
        return "PATH"
    kind = desc.annotation
    if desc.is_list:
        kind = get_args(kind)[0]
    return {int: "INTEGER", float: "FLOAT"}.get(kind, "TEXT")


class _PlainOption(TyperOption):
    """A Typer option whose help shows its value as `_value_kind` says (see there)."""

    def display_type_rich(self, ctx) -> str | None:
        if self.metavar is not None and not isinstance(self.metavar, Choices):
            return self.metavar
        kind = _value_kind(self)
        return f"{kind}..." if kind and self.multiple else kind


class _PlainArgument(TyperArgument):
    """A Typer argument whose help shows its value as `_value_kind` says, and how many it takes."""

    def display_type_rich(self, ctx) -> str | None:
        kind = _value_kind(self)
        if self.nargs == -1:
            return f"{kind}... ({'one or more' if self.required else 'any number'})"
        return kind if self.nargs == 1 else f"{kind} ×{self.nargs}"


def plain_types(params: Iterable) -> None:
    """Give every Typer parameter in `params` the plain help display (the root fix of `<bool>`).

    Typer builds its own TyperOption/TyperArgument objects and has no hook to choose the class, so
    the class is swapped for a subclass that changes nothing but `display_type_rich`.
    """
    for param in params:
        if type(param) is TyperOption:
            param.__class__ = _PlainOption
        elif type(param) is TyperArgument:
            param.__class__ = _PlainArgument


def _param_name(param) -> str:
    """How the user wrote the parameter: its longest option name, or an argument's metavar."""
    if isinstance(param, TyperOption) and param.opts:
        return max(param.opts, key=len)
    return param.metavar or param.name.upper()


def _bound(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _pydantic_reason(exc: Exception, param) -> str | None:
    """Why Typer's (pydantic) validation refused a value, as `must be ... (got V)`; None if unknown."""
    errors = getattr(exc.__cause__, "errors", None)
    if not callable(errors):
        return None
    try:
        first = errors()[0]
    except Exception:  # noqa: BLE001 (any surprise: fall back to Typer's own message)
        return None
    kind, got = first.get("type", ""), first.get("input")
    lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        if lo is not None and hi is not None:
            return f"must be between {_bound(lo)} and {_bound(hi)} (got {got})"
        limit = _bound(next(iter(first.get("ctx", {}).values()), lo if lo is not None else hi))
        words = {"greater_than_equal": "at least", "greater_than": "greater than",
                 "less_than_equal": "at most", "less_than": "less than"}[kind]
        return f"must be {words} {limit} (got {got})"
    if kind.startswith("int_"):
        return f"must be a whole number (got {got!r})"
    if kind.startswith("float_"):
        return f"must be a number (got {got!r})"
    return None


def usage_message(exc: Exception) -> str:
    """A parser error as one line: `--epochs must be at least 1 (got 0)`, `No such option: --x`."""
    param = getattr(exc, "param", None)
    if isinstance(exc, BadParameter) and not isinstance(exc, MissingParameter) and param is not None:
        reason = _pydantic_reason(exc, param) or exc.message.rstrip(".")
        name = _param_name(param)
        return f"{name} {reason}" if reason.startswith("must ") else f"{name}: {reason}"
    text = " ".join(exc.format_message().split()).rstrip(".")  # one line, whatever click wrapped
    ctx = getattr(exc, "ctx", None)
    return f"{text} (see '{ctx.command_path} --help')" if ctx is not None else text


class CryoalGroup(TyperGroup):
    """The `cryoal` group: plain help types for its own options, and plain usage errors.

    Typer prints a parser error as a usage line, a hint and a boxed message; cryoal prints one
    `error: ...` line naming the option, with exit code 2, like the errors its commands report.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        plain_types(self.params)

    def get_help_option(self, ctx):
        """The --help option, shown as a flag (no value)."""
        option = super().get_help_option(ctx)
        plain_types([option] if option is not None else [])
        return option

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        """Run the CLI; a usage error becomes one `error:` line and exit code 2."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:  # `cryoal` alone: the help was printed
            sys.exit(exc.exit_code)
        except ClickException as exc:
            typer.echo(f"error: {usage_message(exc)}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(EXIT_USER_ERROR)
        sys.exit(code if isinstance(code, int) else 0)


# the exit codes, in --help as in docs/commands.md's table
EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 an error in an input file, id or the environment (one line on stderr "
    "naming it); 2 a usage error: an unknown option, a missing argument, or a bad option value (out "
    "of range, not one of the choices, options that do not go together), one line naming the option; "
    "130 interrupted (Ctrl-C); 143 terminated (SIGTERM, e.g. a scheduler's time limit). Interrupted or "
    "terminated, every file being written is left as it was."
)

app = typer.Typer(
    cls=CryoalGroup,
    help="cryoal: which subtomograms to label next (active learning for cryo-ET).",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)



def fail(message: str, code: int = EXIT_USER_ERROR) -> typer.Exit:
    """Print `error: message` on stderr and return the Exit to raise (exit code 1 unless `code`)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def terminated_to_exit(fn: Callable) -> Callable:
    """Wrap a command: after SIGTERM (`cryoal.io.signals`) one line and exit 143, whatever
    exception it surfaced as (under torchrun a peer's exit can fail a collective first)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except BaseException as exc:
            if not (isinstance(exc, Terminated) or terminated()):
                raise
            typer.echo("error: terminated (SIGTERM); files being written were left unchanged", err=True)
            raise typer.Exit(EXIT_TERMINATED) from None

    return wrapper


def handle_errors(fn: Callable) -> Callable:
    """Wrap a command: CryoalError/OSError -> one line and exit 1 (OptionError: 2); Ctrl-C -> 130;
    SIGTERM -> 143 (`terminated_to_exit`)."""
    inner = terminated_to_exit(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return inner(*args, **kwargs)
        except typer.Exit:
            raise
        except OptionError as exc:  # a bad value the parser could not check: a usage error
            raise fail(str(exc), EXIT_USAGE) from None
        except CryoalError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted; files being written were left unchanged", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OSError as exc:  # disk full, permission denied: the user's environment, not a bug
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            raise fail(f"{where}{exc.strerror or exc}") from None
        except Exception as exc:  # a bug: one line unless CRYOAL_DEBUG asks for the traceback
            if os.environ.get("CRYOAL_DEBUG"):
                traceback.print_exc()
            raise fail(
                f"internal error {type(exc).__name__}: {exc} (set CRYOAL_DEBUG=1 for a traceback)"
            ) from None

    return wrapper


def unwrap_paragraphs(text: str) -> str:
    """Join the hard-wrapped lines of each paragraph, so that rich help wraps to the terminal.

    Paragraphs are separated by a blank line. Rich help keeps every newline of a docstring, so a
    paragraph wrapped at 100 columns in the source would break mid-sentence on screen. A line
    starting with "- " (a list item) still starts a new line; a paragraph starting with click's
    no-rewrap marker (\\b) is kept as it is.
    """
    paragraphs = []
    for para in inspect.cleandoc(text).split("\n\n"):
        if para.startswith("\b"):
            paragraphs.append(para)
            continue
        lines: list[str] = []
        for line in para.splitlines():
            line = line.strip()
            if lines and not line.startswith("- "):
                lines[-1] = f"{lines[-1]} {line}"
            elif line:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def plain_help(text: str | None) -> str | None:
    """Help text as the user wrote it: paragraphs unwrapped and square brackets escaped.

    The app renders help with rich markup, which would swallow "[default: all]" as an unknown
    style tag; cryoal's help never uses markup, so every bracket is escaped.
    """
    return None if text is None else escape(unwrap_paragraphs(text))


_BRACED = re.compile(r"^\{(.+)\}(\.\.\.)?$")


class CryoalCommand(TyperCommand):
    """A Typer command whose help reads like a Unix tool's.

    - Every value shows as click shows it (TEXT, INTEGER, PATH, [a|b|c]; a flag shows none), not as
      Typer's Python type (`<bool>`, `<list[str]>`): see `plain_types`.
    - Every argument gets an upper-case metavar (`POOL`, `PICKS`) unless it sets its own.
    - The usage line shows a required argument as `POOL`, not Typer's `{pool}`; optional ones keep
      their `[...]`.
    - The help, the epilog and every parameter's help go through `plain_help`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.help = plain_help(self.help)
        self.epilog = plain_help(self.epilog)
        plain_types(self.params)
        for param in self.params:
            if isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = param.name.upper()
            if getattr(param, "help", None):
                param.help = plain_help(param.help)

    def get_help_option(self, ctx):
        """The --help option, shown as a flag (no value)."""
        option = super().get_help_option(ctx)
        plain_types([option] if option is not None else [])
        return option

    def format_help(self, ctx, formatter) -> None:
        """The help; a choice option with too many choices for the type column lists them here.

        Done when help is asked for, not before: the names may come from a registry that is
        costly to import (the schemes import torch).
        """
        for param in self.params:
            if isinstance(param.metavar, Choices) and param.metavar.listed_in_help():
                names = param.metavar.names()
                if not all(f"{name}:" in (param.help or "") for name in names):  # not described one by one
                    param.help = f"{param.help or ''} One of: {', '.join(names)}.".strip()
        super().format_help(ctx, formatter)

    def collect_usage_pieces(self, ctx) -> list[str]:
        """The usage pieces, with Typer's braces round required arguments removed."""
        return [_BRACED.sub(r"\1\2", piece) for piece in super().collect_usage_pieces(ctx)]


def command(*args, **kwargs) -> Callable[[Callable], Callable]:
    """Register a CLI command with the shared error handling and help (use instead of `app.command`)."""
    kwargs.setdefault("cls", CryoalCommand)

    def decorator(fn: Callable) -> Callable:
        app.command(*args, **kwargs)(handle_errors(fn))
        return fn

    return decorator


def stderr_console():
    """A rich console on stderr for progress bars and messages (stdout stays machine-readable)."""
    from rich.console import Console

    return Console(stderr=True, force_terminal=None if sys.stderr.isatty() else False)


def _version_callback(value: bool) -> None:
    if value:
        from cryoal._version import __version__

        typer.echo(f"cryoal {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """cryoal: which subtomograms to label next (active learning for cryo-ET)."""
