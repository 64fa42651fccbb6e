"""What a new user meets first: every command's --help, `select`'s default -n, an output path that
is a directory, and the augmentation line of `train` (issue #18)."""

from __future__ import annotations

import csv
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import cryoal.select as select_mod
from cryoal.cli import app
from cryoal.cli.app import unwrap_paragraphs
from cryoal.io.pool import PoolWriter
from cryoal.learn.checkpoint import save_checkpoint
from cryoal.models import build_model

pytestmark = pytest.mark.usefixtures("one_omp_thread")

CLICK_APP = typer.main.get_command(app)
COMMANDS = sorted(CLICK_APP.commands)
BOX_CHARS = str.maketrans({c: " " for c in "│╭╮╰╯─"})


def help_text(command: str, columns: int = 250) -> str:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


def _is_subsequence(needle: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(word in it for word in needle)


def test_every_command_is_checked():
    assert {"simulate", "ingest", "extract", "label", "status", "train", "select", "predict", "gallery",
            "benchmark"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_keeps_every_word_of_every_option(command):
    """Rich markup would drop "[default: all]" and leave "Comma list of schemes ;"."""
    shown = help_text(command).translate(BOX_CHARS)
    words = shown.split()
    for param in CLICK_APP.commands[command].params:
        if not param.help or getattr(param, "hidden", False):
            continue
        written = param.help.replace("\\[", "[")  # the help as its author wrote it
        assert _is_subsequence(written.split(), words), (param.name, written)
    assert not re.search(r"\w \s*[;.,](\s|$)", shown), "a word lost before punctuation"


def test_benchmark_defaults_in_brackets_survive():
    shown = " ".join(help_text("benchmark").translate(BOX_CHARS).split())
    for text in ("schemes [default: every select --scheme; typiclust only with --pretrain].",
                 "architecture [default: the train default].",
                 "arch [default: the arch's].", "cycle [default: --epochs]."):
        assert text in shown


@pytest.mark.parametrize("command", COMMANDS)
def test_usage_names_arguments_in_upper_case(command):
    shown = help_text(command)
    usage = next(ln for ln in shown.splitlines() if "Usage:" in ln)
    args = [p for p in CLICK_APP.commands[command].params if p.param_type_name == "argument"]
    assert args, command
    for p in args:
        assert p.metavar and p.metavar == p.metavar.upper() and p.metavar in usage, (usage, p.metavar)
    assert "{" not in usage and "}" not in usage, usage
    assert not re.search(r"\{[a-z_]+\}", shown)


def test_usage_of_the_readme_commands():
    # extract's PICKS is optional (`--copick CONFIG.json` reads a copick project instead)
    for command, usage in (("select", "POOL"), ("extract", "[PICKS]"), ("ingest", "INPUT..."),
                           ("label", "POOL CSV"), ("simulate", "OUT_DIR")):
        assert re.search(rf"Usage: \S+ {command} \[OPTIONS\] {re.escape(usage)} *$", help_text(command), re.M)
    assert "Missing argument 'POOL'" in CliRunner().invoke(app, ["status"]).output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_paragraphs_wrap_to_the_terminal(command):
    """Each docstring paragraph is one line on a wide terminal (no break mid-sentence)."""
    doc = inspect.getdoc(CLICK_APP.commands[command].callback)
    lines = {" ".join(ln.split()) for ln in help_text(command, columns=1000).splitlines()}
    for para in doc.split("\n\n"):
        assert " ".join(para.split()) in lines, para


def test_unwrap_paragraphs_keeps_lists_and_no_rewrap_blocks():
    text = "First line\n  continues.\n\n- item one\n  more\n- item two\n\n\bkeep\nthese lines"
    assert unwrap_paragraphs(text) == (
        "First line continues.\n\n- item one more\n- item two\n\n\bkeep\nthese lines"
    )


# ------------------------------------------------------------------------------------------
# select -n, outputs that are directories
# ------------------------------------------------------------------------------------------

BOX = 8
NAMES = ["a", "b", "c"]
N = 14
N_LABELLED = 4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("front_door")
    rng = np.random.default_rng(0)
    labels = [i % 3 if i < N_LABELLED else -1 for i in range(N)]
    with PoolWriter(d / "pool.h5", shape=(BOX,) * 3, class_names=NAMES, voxel_size=8.0) as w:
        w.add(rng.normal(size=(N, BOX, BOX, BOX)).astype(np.float32), [f"p{i:02d}" for i in range(N)],
              ["s"] * N, labels=labels)
    torch.manual_seed(0)
    model = build_model("resnet3d", (BOX,) * 3, 3, width=4).eval()
    save_checkpoint(d / "model.pt", model, {"mode": "subtomogram", "class_names": NAMES,
                                            "input_shape": [BOX] * 3})
    return d


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_select_without_n_writes_a_first_page(env, tmp_path, monkeypatch):
    common = [env / "pool.h5", "-m", env / "model.pt", "--scheme", "max-entropy", "--device", "cpu"]
    r = _cli("select", *common, "-o", tmp_path / "all.csv")
    assert r.exit_code == 0, r.output
    assert len(_rows(tmp_path / "all.csv")) == N - N_LABELLED  # fewer than 100 left: all of them
    monkeypatch.setattr(select_mod, "DEFAULT_N", 4)
    r = _cli("select", *common, "-o", tmp_path / "page.csv")
    assert r.exit_code == 0, r.output
    rows = _rows(tmp_path / "page.csv")
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4"]
    assert rows == _rows(tmp_path / "all.csv")[:4]
    assert "default: 100" in " ".join(help_text("select").split())


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("args", [
    ["predict", "{pool}", "-m", "{model}", "--device", "cpu", "-o", "{dir}"],
    ["select", "{pool}", "-m", "{model}", "--device", "cpu", "-o", "{dir}"],
    ["select", "{pool}", "-m", "{model}", "--device", "cpu", "--format", "both", "-o", "{dir}/x.csv"],
    ["train", "{pool}", "-o", "{dir}", "--device", "cpu"],
    ["ingest", "{dir}", "-o", "{dir}"],
    ["ingest", "{dir}", "-o", "{dir}", "--append"],
    ["train", "{pool}", "-o", "{dir}/m.pt", "--log-json", "{dir}", "--device", "cpu"],
])
def test_an_output_that_is_a_directory_is_named(env, tmp_path, args):
    out = tmp_path / "results"
    out.mkdir()
    (out / "x.star").mkdir()  # for --format both: the STAR beside x.csv
    (out / "q.mrc").write_bytes(b"")  # ingest's input, never read
    values = {"pool": env / "pool.h5", "model": env / "model.pt", "dir": out}
    line = _one_error_line(_cli(*(a.format(**values) for a in args)))
    assert "is a directory" in line and ".tmp-" not in line, line
    assert line.startswith(f"error: {out}")
    assert sorted(p.name for p in out.iterdir()) == ["q.mrc", "x.star"]  # nothing written


# ------------------------------------------------------------------------------------------
# train: the augmentation line
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_pool(tmp_path_factory):
    path = tmp_path_factory.mktemp("augment") / "img.h5"
    rng = np.random.default_rng(1)
    with PoolWriter(path, mode="image", shape=(8, 8), class_names=["x", "y"]) as w:
        w.add(rng.normal(size=(8, 8, 8)).astype(np.float32), [f"i{k}" for k in range(8)], ["s"] * 8,
              labels=[k % 2 for k in range(8)])
    return path


@pytest.mark.parametrize("flag, expected", [
    ((), "augmentation: in-plane quarter turns, mirrors and small shifts (image mode default); "
         "--no-augment turns it off"),
    (("--no-augment",), "augmentation: none (--no-augment)"),
])
def test_train_says_which_augmentation_it_used(image_pool, tmp_path, flag, expected):
    r = _cli("train", image_pool, "-o", tmp_path / "m.pt", "--epochs", "1", "--batch-size", "4",
             "--val-fraction", "0", "--device", "cpu", "--json", *flag)
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("augmentation:")]
    assert len(lines) == 1 and lines[0].startswith(expected), r.stderr
    assert "augmentation" not in r.stdout  # stdout stays the JSON object
