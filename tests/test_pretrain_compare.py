"""benchmarks/pretrain_compare.py: the Holm correction and the paired row it reports."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from script_helpers import load_benchmark_script


@pytest.fixture(scope="module")
def compare():
    return load_benchmark_script("pretrain_compare")


def _holm_by_definition(p: list[float]) -> list[float]:
    """Holm's adjusted p-value of test i: the largest (m - r) * p_(r), capped at 1, over the tests
    ranked at or before i (r counted from 0 in ascending p)."""
    m = len(p)
    ranked = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    for pos, i in enumerate(ranked):
        out[i] = max(min(1.0, (m - r) * p[ranked[r]]) for r in range(pos + 1))
    return out


def test_holm_by_hand(compare):
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x, 1x = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert compare.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert compare.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_holm_matches_its_definition(compare):
    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 16):
        for _ in range(50):
            p = list(rng.uniform(0, 0.2, m))
            assert compare.holm(p) == pytest.approx(_holm_by_definition(p))
    for p in itertools.permutations([0.001, 0.02, 0.02, 0.3]):  # ties and order
        assert compare.holm(list(p)) == pytest.approx(_holm_by_definition(list(p)))


def test_line_is_the_paired_difference_and_t_test(compare):
    a = {0: 0.50, 1: 0.60, 2: 0.55, 3: 0.70}
    b = {0: 0.45, 1: 0.61, 2: 0.50, 3: 0.60, 9: 0.99}  # seed 9 has no pair: left out
    text, p = compare.line("x", a, b)
    diff = [0.05, -0.01, 0.05, 0.10]
    assert p == pytest.approx(stats.ttest_1samp(diff, 0.0).pvalue)
    assert f"{np.mean(diff):+.3f} ± {np.std(diff, ddof=1):.3f}" in text
    assert "(3/4)" in text and "+0.050 -0.010 +0.050 +0.100" in text


def test_each_phase_is_its_own_holm_family(compare, capsys, monkeypatch):
    """On the committed study: the frozen run's main settings (SNR 0.1, 0.05) and its long run
    (SNR inf, 0.03) are separate families, each adjusted over its own 8 p-values, recomputed here
    from the per-seed AUBC with scipy and Holm's definition."""
    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    tuned, frozen = root / "study_pretrain", root / "study_pretrain_frozen"
    monkeypatch.setattr("sys.argv", ["pretrain_compare.py", str(tuned), str(frozen)])
    compare.main()
    out = capsys.readouterr().out
    blocks = compare.blocks_of(frozen)
    assert set(blocks) == {"inf", "0.1", "0.05", "0.03"}
    assert "fine-tuned, long run" not in out  # the fine-tuned study has no long run
    for title, snrs in (("frozen, main", ("0.1", "0.05")), ("frozen, long run", ("inf", "0.03"))):
        section = out.split(f"### {title} (8 comparisons)")[1].split("###")[0]
        rows = [r for r in section.splitlines() if r.startswith("| SNR ")]
        assert len(rows) == 8
        expected_p = []
        for row in rows:
            label = row.split("|")[1].strip()
            snr, scheme = label.removeprefix("SNR ").split(": ")
            assert snr in snrs
            scheme = scheme.removesuffix(" − random")
            a = compare.per_seed_aubc(blocks[snr], scheme)
            b = compare.per_seed_aubc(blocks[snr], compare.RANDOM)
            expected_p.append(stats.ttest_1samp([a[k] - b[k] for k in sorted(a)], 0.0).pvalue)
        reported = [(float(r.split("|")[3]), float(r.split("|")[4])) for r in rows]
        for (p, h), p_ref, h_ref in zip(reported, expected_p, _holm_by_definition(expected_p), strict=True):
            assert p == pytest.approx(p_ref, abs=5e-4)
            assert h == pytest.approx(h_ref, abs=5e-4)
