"""The Typer application object and the error handling every command shares.

Commands register with `@command()` (not `@app.command()`), which wraps them so that a
user-facing error becomes one line on stderr and exit code 1, never a traceback, and gives them
`CryoalCommand`, which tidies every command's help the same way (see there).
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable

import typer
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand

from cryoal.errors import CryoalError
from cryoal.io.signals import EXIT_TERMINATED, Terminated, terminated

app = typer.Typer(
    help="cryoal: which subtomograms to label next (active learning for cryo-ET).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


def fail(message: str) -> typer.Exit:
    """Print `error: message` on stderr and return the Exit to raise (exit code 1)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USER_ERROR)


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
    """Wrap a command: CryoalError/OSError -> one line and exit 1; Ctrl-C -> exit 130; SIGTERM ->
    exit 143 (`terminated_to_exit`)."""
    inner = terminated_to_exit(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return inner(*args, **kwargs)
        except typer.Exit:
            raise
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

    - Every argument gets an upper-case metavar (`POOL`, `PICKS`) unless it sets its own.
    - The usage line shows a required argument as `POOL`, not Typer's `{pool}`; optional ones keep
      their `[...]`.
    - The help, the epilog and every parameter's help go through `plain_help`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.help = plain_help(self.help)
        self.epilog = plain_help(self.epilog)
        for param in self.params:
            if isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = param.name.upper()
            if getattr(param, "help", None):
                param.help = plain_help(param.help)

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
        from cryoal import __version__

        typer.echo(f"cryoal {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """cryoal: which subtomograms to label next (active learning for cryo-ET)."""
