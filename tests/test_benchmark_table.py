"""benchmarks/al_snr_table.py: the study's combined table uses complete, paired seeds only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_helpers import load_benchmark_script

from cryoal.benchmark.report import CurveRow, Selection, write_curves, write_selections


@pytest.fixture(scope="module")
def table():
    return load_benchmark_script("al_snr_table")


def _snr_dir(root: Path, snr: str, curves: dict[tuple[str, int], list[float]], cycles: int,
             schemes: list[str] | None = None) -> None:
    d = root / f"snr_{snr}"
    d.mkdir(parents=True)
    rows = [CurveRow(s, k, c, 10 + 10 * c, acc, acc) for (s, k), accs in curves.items()
            for c, acc in enumerate(accs)]
    write_curves(d / "curves.csv", rows)
    opts = {"schemes": schemes or ["expected", "random"], "cycles": cycles, "seeds": 2, "test_fraction": 0.2,
            "initial": 10, "budget": 10, "epochs": 1, "arch": "resnet3d", "width": 4}
    (d / "run.json").write_text(json.dumps({"options": opts, "n_particles": 50, "class_names": ["a", "b"]}))


def test_table_uses_complete_paired_seeds_and_ignores_logs(table, tmp_path):
    # SNR 0.1: seed 1 of `random` stopped after cycle 0 (an interrupted run): seed 1 is left out
    _snr_dir(tmp_path, "0.1", {("expected", 0): [0.2, 0.6, 0.8], ("random", 0): [0.2, 0.4, 0.6],
                               ("expected", 1): [0.3, 0.5, 0.7], ("random", 1): [0.3]}, cycles=3)
    _snr_dir(tmp_path, "inf", {("expected", 0): [0.5, 0.9, 0.9], ("random", 0): [0.5, 0.7, 0.9],
                               ("expected", 1): [0.4, 0.8, 1.0], ("random", 1): [0.4, 0.4, 0.6]}, cycles=3)
    (tmp_path / "snr_0.1.log.txt").write_text("not a directory of results\n")
    blocks = table.load(tmp_path)
    assert [snr for snr, _, _ in blocks] == ["inf", "0.1"]  # clean first, then the noisier levels
    assert {r.seed for r in blocks[1][1]} == {0}
    assert {r.seed for r in blocks[0][1]} == {0, 1}
    md = table.markdown_table(blocks)
    # SNR 0.1, seed 0 only: expected AUBC = (0.4 + 0.7) / 2 = 0.55, random = (0.3 + 0.5) / 2 = 0.4
    assert "| expected | " in md and "0.550 ± 0.000" in md and "0.400 ± 0.000" in md
    # SNR inf: expected per seed (0.7 + 0.9)/2 = 0.8 and (0.6 + 0.9)/2 = 0.75; std sqrt(0.00125)
    assert "**0.775 ± 0.035**" in md
    paired = table.paired_vs_random(blocks)
    # inf: random 0.7 and 0.45 -> differences +0.1, +0.3 (2 wins of 2); 0.1: +0.15 (1 of 1).
    # 95 % t interval with 1 degree of freedom: 0.2 ± 12.706 * 0.1414 / sqrt(2) = 0.2 ± 1.271
    assert "+0.200 ± 0.141 [-1.071, +1.471] (2/2)" in paired and "+0.150 ± 0.000" in paired
    seeds = table.seeds_table(blocks)
    assert "| expected | 0.800 | 0.750 |" in seeds and "| random | 0.700 | 0.450 |" in seeds


def test_paired_interval_is_the_student_t_interval_and_marks_a_clear_win(table):
    diff = [0.02, 0.03, 0.05, 0.01, 0.04, 0.03]
    mean, std, lo, hi = table.paired_stats(diff)
    m = sum(diff) / 6
    sd = (sum((d - m) ** 2 for d in diff) / 5) ** 0.5
    half = 2.570582 * sd / 6**0.5  # t(0.975, 5), from a printed table
    assert (mean, std) == (pytest.approx(m), pytest.approx(sd))
    assert (lo, hi) == (pytest.approx(m - half, abs=1e-6), pytest.approx(m + half, abs=1e-6))
    assert lo > 0


def test_seed_band_is_the_mean_and_sample_std_over_seeds_on_the_common_cycles():
    from statistics import mean, stdev

    from cryoal.benchmark.report import seed_band

    acc = {0: [0.2, 0.5, 0.7], 1: [0.4, 0.6]}  # seed 1 was interrupted after 2 cycles
    rows = [CurveRow("a", s, c, 10 + 5 * c, v, v / 2) for s, vals in acc.items() for c, v in enumerate(vals)]
    rows.append(CurveRow("b", 0, 0, 10, 0.9, 0.8))
    n, means, stds = seed_band(list(reversed(rows)), "a")
    assert n.tolist() == [10, 15]
    for c in range(2):
        pair = [acc[0][c], acc[1][c]]
        assert means[0][c] == pytest.approx(mean(pair)) and stds[0][c] == pytest.approx(stdev(pair))
        assert means[1][c] == pytest.approx(mean(pair) / 2) and stds[1][c] == pytest.approx(stdev(pair) / 2)
    n, means, stds = seed_band(rows, "b")  # one seed: zero spread
    assert means.tolist() == [[0.9], [0.8]] and stds.tolist() == [[0.0], [0.0]]
    assert seed_band(rows, "missing") is None


def test_pick_balance_counts_only_the_run_json_schemes_and_complete_seeds(table, tmp_path):
    # a later phase left `expected:uncalibrated` picks in selections.csv, but run.json names only
    # expected and random: its picks stay out, as its curves do in the other tables
    _snr_dir(tmp_path, "0.1", {("expected", 0): [0.2, 0.6], ("random", 0): [0.2, 0.4]}, cycles=2)
    truth = tmp_path / "truth.csv"
    truth.write_text("particle_id,label\n" + "".join(f"p{i},{'ab'[i % 2]}\n" for i in range(8)))
    run_path = tmp_path / "snr_0.1" / "run.json"
    run = json.loads(run_path.read_text())
    run_path.write_text(json.dumps({**run, "truth": str(truth), "n_particles": 8}))
    sel = [Selection("expected", 0, 0, r, f"p{2 * r}") for r in range(1, 4)]  # three of class a
    sel += [Selection("random", 0, 0, r, f"p{r}") for r in range(1, 5)]  # p1..p4: b, a, b, a
    sel += [Selection("expected:uncalibrated", 0, 0, 1, "p1"), Selection("random", 1, 0, 1, "p0")]
    write_selections(tmp_path / "snr_0.1" / "selections.csv", sel)
    md = table.pick_balance(tmp_path, table.load(tmp_path))
    assert "| expected | 100% / 1 |" in md and "| random | 50% / 0 |" in md
    assert "uncalibrated" not in md
    # run.json says the pool held 9 particles: this 8-particle truth file belongs to another run
    run_path.write_text(json.dumps({**run, "truth": str(truth), "n_particles": 9}))
    assert table.pick_balance(tmp_path, table.load(tmp_path)) == ""


def test_uncalibrated_variants_are_paired_with_their_calibrated_twin(table, tmp_path):
    # per-seed AUBC over 3 cycles = (a0 + 2 a1 + a2) / 4 (the trapezoid on an evenly spaced range)
    curves = {("random", 0): [0.2, 0.4, 0.6], ("random", 1): [0.2, 0.4, 0.6],
              ("expected:power", 0): [0.2, 0.6, 0.8], ("expected:power", 1): [0.2, 0.4, 0.8],
              ("expected:power:uncalibrated", 0): [0.2, 0.4, 0.8],
              ("expected:power:uncalibrated", 1): [0.2, 0.4, 0.4],
              ("badge", 0): [0.2, 0.4, 0.6], ("badge", 1): [0.2, 0.4, 0.6]}
    _snr_dir(tmp_path / "both", "0.1", curves, cycles=3, schemes=list(dict.fromkeys(s for s, _ in curves)))
    blocks = table.load(tmp_path / "both")
    assert {r.seed for r in blocks[0][1]} == {0, 1}
    md = table.paired_calibration(blocks)
    # uncalibrated − calibrated: seed 0 (0.45 − 0.55) = −0.10, seed 1 (0.35 − 0.45) = −0.10
    assert "| expected:power:uncalibrated − expected:power | -0.100 ± 0.000" in md
    assert "(0/2)" in md and "badge" not in md and md.count("\n") == 2  # header, rule, one pair
    # the same study without the uncalibrated variant has no such table
    plain = {k: v for k, v in curves.items() if not k[0].endswith(":uncalibrated")}
    _snr_dir(tmp_path / "plain", "0.1", plain, cycles=3, schemes=list(dict.fromkeys(s for s, _ in plain)))
    blocks = table.load(tmp_path / "plain")
    assert {r.seed for r in blocks[0][1]} == {0, 1}
    assert table.paired_calibration(blocks) == ""


def test_a_rounding_tie_is_counted_as_a_tie_not_a_win(table, tmp_path):
    # seed 0: different curves with the same area, (0.2 + 2 * 0.4 + 0.8) / 4 = (0.2 + 2 * 0.5 + 0.6) / 4,
    # whose float AUBCs differ by +5.6e-17: a tie; seed 1: a clear win; seed 2: a clear loss
    curves = {("expected", 0): [0.2, 0.4, 0.8], ("random", 0): [0.2, 0.5, 0.6],
              ("expected", 1): [0.2, 0.6, 0.8], ("random", 1): [0.2, 0.4, 0.6],
              ("expected", 2): [0.2, 0.3, 0.4], ("random", 2): [0.2, 0.4, 0.6]}
    _snr_dir(tmp_path, "0.1", curves, cycles=3)
    blocks = table.load(tmp_path)
    aubc = table.per_seed_aubc(blocks[0][1], "expected")[0] - table.per_seed_aubc(blocks[0][1], "random")[0]
    assert 0 < aubc < 1e-15  # the rounding error survives into the AUBC: a naive `> 0` calls it a win
    assert "(1/3, 1 tie)" in table.paired_vs_random(blocks)
    assert table.win_count([0.1, -1e-13, 2e-13, -0.2]) == "1/4, 2 ties"
    assert table.win_count([0.1, -0.2]) == "1/2"


def test_pretrain_arms_are_paired_by_seed_with_their_suffix(table, tmp_path):
    # the pretraining study: one directory per arm; seed 1 of the scratch arm is unfinished
    curves = {("random", 0): [0.5, 0.6, 0.7], ("typiclust", 0): [0.5, 0.8, 0.9],
              ("random", 1): [0.4, 0.5, 0.6], ("typiclust", 1): [0.4, 0.6, 0.6]}
    _snr_dir(tmp_path / "pretrained", "0.1", curves, cycles=3, schemes=["random", "typiclust"])
    _snr_dir(tmp_path / "scratch", "0.1", {("random", 0): [0.2, 0.3, 0.4], ("random", 1): [0.3]}, cycles=3,
             schemes=["random"])
    assert table.find_arms(tmp_path) == ["pretrained", "scratch"]
    blocks = table.load_arms(tmp_path, table.find_arms(tmp_path))
    assert len(blocks) == 1 and {r.seed for r in blocks[0][1]} == {0}  # paired: seed 0 only
    assert table.all_schemes(blocks) == ["random", "typiclust", "random (scratch)"]
    # accuracy at 10 (first) and 30 (last) labels minus the scratch random's, seed 0
    text = table.accuracy_vs_scratch(blocks)
    assert "| random − random (scratch) | +0.300 ± 0.000" in text  # 0.5 - 0.2 at 10 labels
    assert "| typiclust − random (scratch) | +0.500 ± 0.000" in text  # 0.9 - 0.4 at 30 labels
    # AUBC vs the pretrained random: typiclust (0.65 + 0.85) / 2 = 0.75 vs (0.55 + 0.65) / 2 = 0.6
    assert "| typiclust | +0.150 ± 0.000" in table.paired_vs_random(blocks)
