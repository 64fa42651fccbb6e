"""Helpers shared by the CLI tests of the image and segmentation modes."""

from __future__ import annotations

from typer.testing import CliRunner

from cryoal.cli import app

SCHEMES = ("expected", "entropy", "random", "max-entropy", "margin", "least-confidence", "bald",
           "coreset", "badge")


def cli(*args):
    """Run `cryoal ARGS` in process (every argument as a string)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_error(res, *culprits: str, code: int = 1) -> None:
    """Exit `code` (1: a user-facing error, 2: a usage error) with exactly one `error: ` line on
    stderr that names every culprit; no traceback."""
    assert res.exit_code == code, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    for c in culprits:
        assert c in lines[0], (c, lines[0])
