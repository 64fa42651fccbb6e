"""The demos: they never delete a directory they did not make, the README's loop is what `make demo`
runs, the summary a demo prints is right, and `make demo` installs only the package."""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DEMOS = ["scripts/demo.sh", "scripts/demo_tomograms.sh", "scripts/demo_copick.sh"]
MARKER = ".cryoal-demo"


def run_demo(script: str, out: str | Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a demo script with OUT set and no cryoal on PATH: any work it starts fails loudly."""
    env = {"OUT": str(out), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(["bash", str(ROOT / script)], env=env, capture_output=True, text=True, timeout=60)


def prepare_out(out: Path) -> subprocess.CompletedProcess:
    """Call the demos' shared `demo_prepare_out` on `out`, as the scripts do."""
    code = f'source scripts/demo_lib.sh; demo_prepare_out {shlex.quote(str(out))} scripts/test.sh; echo ready'
    return subprocess.run(["bash", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("script", DEMOS)
def test_a_demo_refuses_a_directory_it_did_not_make(script, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "mine.txt").write_text("a user's file\n")
    res = run_demo(script, out, tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: ") and MARKER in lines[0], res.stderr
    assert res.stdout == ""  # refused before any step ran
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert (out / "mine.txt").read_text() == "a user's file\n"


@pytest.mark.parametrize("script", DEMOS)
@pytest.mark.parametrize("kind", ["file", "empty"])
def test_a_demo_refuses_a_file_or_an_empty_name(script, kind, tmp_path):
    out = tmp_path / "a_file"
    out.write_text("keep")
    res = run_demo(script, out if kind == "file" else "", tmp_path)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("error: ") and out.read_text() == "keep"


def test_a_new_or_empty_directory_is_made_ready_with_the_marker(tmp_path):
    for out in (tmp_path / "new" / "nested", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        res = prepare_out(out)
        assert res.returncode == 0 and res.stdout == "ready\n" and res.stderr == "", res.stderr
        assert [p.name for p in out.iterdir()] == [MARKER]


def test_a_directory_an_earlier_demo_made_is_emptied_and_reused(tmp_path):
    out = tmp_path / "demo"
    assert prepare_out(out).returncode == 0
    (out / "pool.h5").write_bytes(b"old run")
    (out / "gallery").mkdir()
    res = prepare_out(out)
    assert res.returncode == 0 and res.stdout == "ready\n", res.stderr
    assert [p.name for p in out.iterdir()] == [MARKER]


@pytest.mark.parametrize("script", DEMOS)
def test_the_directory_is_checked_before_any_work_and_never_removed_blindly(script):
    text = (ROOT / script).read_text()
    first_prepare = text.index('demo_prepare_out "$OUT"')
    first_work = min(m.start() for m in re.finditer(r"^(cryoal|python) ", text, re.M))
    assert first_prepare < first_work
    assert "rm -rf" not in text and "rm -r " not in text


# ------------------------------------------------------------------------------------------
# the README's loop is the demo
# ------------------------------------------------------------------------------------------


def _commands(text: str) -> list[list[str]]:
    """The `cryoal ...` and `python scripts/fill_labels.py ...` command lines of a shell text, as words
    (continuations joined, comments dropped)."""
    text = text.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words and (words[0] == "cryoal" or words[:2] == ["python", "scripts/fill_labels.py"]):
            out.append(words)
    return out


def readme_loop() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## The loop\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return _commands(block)


def demo_loop() -> list[list[str]]:
    """demo.sh's commands with its variables at their defaults and `$OUT/` dropped."""
    text = (ROOT / "scripts/demo.sh").read_text()
    defaults = dict(re.findall(r"^(\w+)=\$\{\1:?-([^}]*)\}", text, re.M))
    assert defaults["OUT"] == "demo_out" and "EPOCHS" in defaults
    text = text.replace('"$OUT/', '"').replace("$OUT/", "")
    for name, value in defaults.items():
        text = text.replace(f'"${name}"', value).replace(f"${name}", value)
    return _commands(text)


def test_the_readme_loop_is_what_make_demo_runs():
    demo = demo_loop()
    assert len(demo) >= 9 and any(w[:2] == ["cryoal", "gallery"] for w in demo)
    assert readme_loop() == demo


def test_the_comparison_notices_a_difference(monkeypatch):
    assert _commands("cryoal select p -n 25  # comment\npython scripts/fill_labels.py a \\\n  b\necho x") == [
        ["cryoal", "select", "p", "-n", "25"], ["python", "scripts/fill_labels.py", "a", "b"]]
    assert _commands("cryoal select p -n 100") != _commands("cryoal select p -n 25")


# ------------------------------------------------------------------------------------------
# the summary a demo prints
# ------------------------------------------------------------------------------------------


def _load_summary():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import demo_summary
    finally:
        sys.path.pop(0)
    return demo_summary


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_the_summary_counts_epochs_t_picks_and_accuracy(tmp_path):
    summary = _load_summary()
    names = ["a", "b", "c"]
    ckpts = []
    for k, (epochs, best, t, n_train, n_val, val) in enumerate([(18, 8, 0.5, 15, 5, 0.6),
                                                                (36, 26, 0.41925, 36, 9, 0.5)]):
        path = tmp_path / f"m{k}.pt"
        metrics = {"epochs_run": epochs, "best_epoch": best, "n_train": n_train, "n_val": n_val,
                   "val_accuracy": val}
        torch.save({"class_names": names, "temperature": t, "metrics": metrics}, path)
        ckpts.append(path)
    truth = {f"p{i}": names[i % 3] for i in range(12)}
    _write_csv(tmp_path / "truth.csv", [{"particle_id": p, "label": c} for p, c in truth.items()])
    picked = ["p1", "p4", "p7", "p0", "p99"]  # b b b a, and one the truth does not know
    _write_csv(tmp_path / "sel.csv", [{"rank": i + 1, "particle_id": p} for i, p in enumerate(picked)])
    pred = [{"particle_id": p, "predicted_label": c if i < 7 else "a"}
            for i, (p, c) in enumerate(truth.items())]
    hits = sum(r["predicted_label"] == truth[r["particle_id"]] for r in pred)  # the obvious count
    _write_csv(tmp_path / "pred.csv", pred)
    lines = summary.summary_lines(ckpts, tmp_path / "sel.csv", tmp_path / "pred.csv", tmp_path / "truth.csv")
    assert lines == [
        "cycle 0: 20 labels, 18 epochs (best 8), validation accuracy 0.600 on 5, T = 0.500",
        "cycle 1: 45 labels, 36 epochs (best 26), validation accuracy 0.500 on 9, T = 0.419",
        "picked 5 to label, by true class: b 3, a 1, c 0, unknown 1",
        f"final model: right on {hits} of 12 particles ({hits / 12:.3f}; chance 0.333)",
    ]
    assert hits == 8
    assert summary.summary_lines(ckpts[:1], None, None, None) == lines[:1]


def test_the_readme_quotes_a_dated_summary_in_the_demos_format():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## The loop\n", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"On \d{4}-\d{2}-\d{2}, `[^`]*make demo[^`]*`", " ".join(section.split()))
    quoted = re.search(r"```text\n(.*?)```", section, re.S).group(1).splitlines()
    patterns = [
        r"cycle 0: 20 labels, \d+ epochs \(best \d+\), validation accuracy \d\.\d{3} on \d+, T = \d\.\d{3}",
        r"cycle 1: 45 labels, \d+ epochs \(best \d+\), validation accuracy \d\.\d{3} on \d+, T = \d\.\d{3}",
        r"picked 25 to label, by true class: (\w+ \d+, ){4}\w+ \d+",
        r"final model: right on \d+ of 180 particles \(\d\.\d{3}; chance 0\.200\)",
    ]
    assert len(quoted) == len(patterns)
    for line, pattern in zip(quoted, patterns, strict=True):
        assert re.fullmatch(pattern, line), line
    picks = dict(re.findall(r"(\w+) (\d+)", quoted[2].split(": ", 1)[1]))
    assert sum(int(v) for v in picks.values()) == 25


# ------------------------------------------------------------------------------------------
# make: demo installs the package alone; test adds the extras on top
# ------------------------------------------------------------------------------------------


def _dry_run(project: Path, target: str) -> list[str]:
    res = subprocess.run(["make", "-n", "-C", str(project), target], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return [ln for ln in res.stdout.splitlines() if ln and not ln.startswith("make")]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_installs_only_the_package_and_test_adds_the_extras(tmp_path):
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy2(ROOT / name, tmp_path / name)
    demo = _dry_run(tmp_path, "demo")
    installs = [ln for ln in demo if "pip install" in ln and "--upgrade pip" not in ln]
    assert len(installs) == 1 and installs[0].rstrip().endswith("install -q -e .")
    assert not any("copick" in ln or "dev" in ln for ln in installs)
    assert demo[-1] == "bash scripts/demo.sh"

    # after `make demo`: the base stamp is newer than pyproject.toml, so test only adds the extras
    for line in demo:
        if line.startswith("touch "):
            stamp = tmp_path / line.split()[1]
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.touch()
    assert _dry_run(tmp_path, "demo") == ["bash scripts/demo.sh"]
    test = _dry_run(tmp_path, "test")
    assert [ln for ln in test if "pip install" in ln] == [".venv/bin/pip install -q -e '.[dev,copick]'"]
    assert _dry_run(tmp_path, "demo-copick")[0] == ".venv/bin/pip install -q -e '.[dev,copick]'"

    # after `make test`: nothing to install; a changed pyproject.toml redoes both levels
    for line in test:
        if line.startswith("touch "):
            (tmp_path / line.split()[1]).touch()
    assert not any("pip" in ln for ln in _dry_run(tmp_path, "test"))
    future = (tmp_path / ".venv").stat().st_mtime + 100
    os.utime(tmp_path / "pyproject.toml", (future, future))
    redo = _dry_run(tmp_path, "test")
    assert sum("pip install -q -e" in ln for ln in redo) == 2
