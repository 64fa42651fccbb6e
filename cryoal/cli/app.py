"""The Typer application object and the error handling every command shares.

Commands register with `@command()` (not `@app.command()`), which wraps them so that a
user-facing error becomes one line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable

import typer

from cryoal.errors import CryoalError

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


def handle_errors(fn: Callable) -> Callable:
    """Wrap a command: CryoalError/OSError -> one line and exit 1; Ctrl-C -> exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
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


def command(*args, **kwargs) -> Callable[[Callable], Callable]:
    """Register a CLI command with the shared error handling (use instead of `app.command`)."""

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
