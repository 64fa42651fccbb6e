"""What `--help` tells the user: click-style value kinds, choices, shared options, runnable examples."""

from __future__ import annotations

import re
import shlex

import pytest
import typer.main
from typer.testing import CliRunner

from cryoal.cli import app

GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)
# what Typer shows for a Python annotation: users then type `--force true`
TYPER_TYPES = re.compile(r"<(bool|str|int|float|path|Path|list\[[^>]*\]|int range|float range)>")
WRITERS = ("ingest", "extract", "train", "select", "predict", "gallery", "benchmark")


def help_text(*args: str) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return res.stdout


def flat(text: str) -> str:
    """The help's words in order, without the table borders and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def option_row(text: str, option: str) -> str:
    """The help table row of `option` (its first line)."""
    rows = (ln for ln in text.splitlines() if ln.startswith("│"))  # inside the options tables
    # the option's own row: named in the name columns, not in another option's help
    row = next((ln for ln in rows if re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", ln[:40])), None)
    assert row is not None, (option, text)
    return row


def test_every_command_is_listed():
    assert set(WRITERS) <= set(COMMANDS) and {"simulate", "label", "status", "export-copick"} <= set(COMMANDS)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_shows_no_python_types(command):
    text = help_text(*([command] if command else []))
    assert not TYPER_TYPES.findall(text), TYPER_TYPES.findall(text)
    assert "DESIGN" not in text  # a file users do not have
    help_row = option_row(text, "--help")
    assert re.search(r"--help\s+Show this message", help_row), help_row  # a flag takes no value


def test_flags_show_no_value_and_values_show_their_kind():
    text = help_text("simulate")
    assert re.search(r"--force\s+Replace", option_row(text, "--force"))
    assert "INTEGER [x>=1]" in option_row(text, "--classes")
    assert "FLOAT" in option_row(text, "--snr")
    assert "PATH" in option_row(help_text("train"), "--output")
    row = option_row(help_text("train"), "--augment")
    assert re.search(r"--augment\s+--no-augment\s+Wedge-safe", row), row


def test_a_list_argument_says_how_many_values_it_takes():
    row = option_row(help_text("ingest"), "INPUT")
    assert "TEXT... (one or more)" in row, row
    assert "INPUT..." in help_text("ingest").splitlines()[1]  # the usage line


def test_choice_options_list_their_choices():
    from cryoal.ingest import INGEST_MODES
    from cryoal.scoring.gradnorm import NORMS
    from cryoal.scoring.picks import PICKS
    from cryoal.scoring.registry import SCHEMES
    from cryoal.select import FORMATS

    select = help_text("select")
    assert f"[{'|'.join(FORMATS)}]" in option_row(select, "--format")
    assert f"[{'|'.join(NORMS)}]" in option_row(select, "--norm")
    assert "[auto|cpu|cuda|cuda:N]" in option_row(select, "--device")
    words = flat(select)
    # too many for the type column: listed in the help text, from the registry itself
    assert f"One of: {', '.join(SCHEMES)}." in words
    assert all(f"{pick}:" in words for pick in PICKS)  # each pick described by name
    assert f"[{'|'.join(INGEST_MODES)}]" in option_row(help_text("ingest"), "--mode")
    assert "[none|lzf|gzip]" in option_row(help_text("ingest"), "--compression")
    for command in ("train", "predict", "benchmark"):
        assert "[auto|cpu|cuda|cuda:N]" in option_row(help_text(command), "--device")


def test_select_summary_and_benchmark_schemes_help():
    select = flat(help_text("select"))
    assert "write the top N" not in select
    assert "write N of them, ranked" in select and "--pick power-balanced (the default)" in select
    assert "--pick top (the paper's rule) writes the N highest" in select and "typiclust" in select
    bench = flat(help_text("benchmark"))
    assert "SCHEME[:PICK][:uncalibrated]" in bench and "expected:power" in bench
    assert "SCHEME-balanced is SCHEME:balanced" in bench


@pytest.mark.parametrize("command", WRITERS)
def test_output_option_has_one_name_everywhere_and_accepts_the_other(command):
    params = [p for p in GROUP.commands[command].params if "-o" in getattr(p, "opts", ())]
    assert len(params) == 1 and {"-o", "--output", "--out"} <= set(params[0].opts)
    assert re.search(r"--output,--out\s+-o\s", option_row(help_text(command), "-o"))


def examples(epilog: str) -> list[str]:
    """The `cryoal ...` command lines in an epilog (up to a comment, a pipe or a wide gap)."""
    found = []
    for match in re.finditer(r"cryoal [^()|\n]+", epilog.replace("\\[", "[")):
        line = re.split(r"\s{2,}", match.group(0).strip())[0].rstrip(" .;")
        found.append(line)
    return found


def test_every_example_is_found():
    assert len(examples(GROUP.commands["ingest"].epilog)) == 4
    assert len(examples(GROUP.commands["extract"].epilog)) == 2
    assert examples(GROUP.commands["gallery"].epilog)[1] == "cryoal label pool.h5 labels.csv"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_example_in_help_parses(command):
    """Each example is parsed as the command line it is (options, values, choices, ranges)."""
    lines = examples(GROUP.commands[command].epilog or "")
    assert lines, f"{command} --help shows no example"
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "cryoal" and words[1] in GROUP.commands, line
        cmd = GROUP.commands[words[1]]
        ctx = cmd.make_context(words[1], words[2:])  # raises a UsageError if the example is wrong
        ctx.close()


def test_root_help_states_the_exit_codes():
    from cryoal.cli.app import EXIT_CODES_HELP

    words = flat(help_text())
    assert " ".join(EXIT_CODES_HELP.split()) in words
    for code in ("0 success", "1 an error in an input file", "2 a usage error", "130 interrupted"):
        assert code in words
