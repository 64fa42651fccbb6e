"""The pretraining study's comparisons that `al_snr_table.py` does not make on one study alone:
the frozen-trunk study against the fine-tuned one, and the typiclust first batch against the random
one, paired by seed; and the p-values behind the picks' intervals, with a Holm correction.

    .venv/bin/python benchmarks/pretrain_compare.py benchmarks/results/study_pretrain \\
        benchmarks/results/study_pretrain_frozen > benchmarks/results/study_pretrain_frozen/compare.md

Both studies share the seeds' test splits and initial sets (the same `benchmark` seeds on the same
pool) and, in the frozen run, the fine-tuned run's encoders (same settings, checked by the cached
encoder's digest), so a difference at a seed is the training recipe alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from al_snr_table import (  # noqa: E402  (beside this script)
    find_arms,
    load_arms,
    paired_stats,
    per_seed_accuracy,
    per_seed_aubc,
    win_count,
)

RANDOM, START, SCRATCH = "random", "random (typiclust start)", "random (scratch)"
# The target settings; the other SNRs are the long run, a Holm family of their own.
MAIN_SNRS = frozenset({"0.1", "0.05"})


def line(label: str, a: dict[int, float], b: dict[int, float]) -> tuple[str, float]:
    """A table row for a − b paired by seed, and its two-sided paired t-test p-value."""
    seeds = sorted(set(a) & set(b))
    diff = [a[k] - b[k] for k in seeds]
    mean, std, lo, hi = paired_stats(diff)
    p = float(stats.ttest_1samp(diff, 0.0).pvalue) if len(diff) > 1 and std > 0 else float("nan")
    cells = " ".join(f"{d:+.3f}" for d in diff)
    stat = f"{mean:+.3f} ± {std:.3f} [{lo:+.3f}, {hi:+.3f}] ({win_count(diff)})"
    return f"| {label} | {stat} | {p:.3f} | {cells} |", p


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone), in the input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def blocks_of(results: Path) -> dict[str, list]:
    """{SNR: rows of every arm}, in `load_arms`' order: cleanest SNR first."""
    return {snr: rows for snr, rows, _ in load_arms(results, find_arms(results))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("finetuned", type=Path)
    ap.add_argument("frozen", type=Path)
    args = ap.parse_args()
    tuned, frozen = blocks_of(args.finetuned), blocks_of(args.frozen)
    head = "| comparison | mean ± std [95 % CI] (wins/seeds) | p (paired t) | per seed |\n|---|---:|---:|---|"
    print(f"# Pretraining study: frozen vs fine-tuned, typiclust start vs random start\n\n"
          f"`{args.finetuned}` (fine-tuned, `train --init`) and `{args.frozen}` (`--freeze-trunk`).\n")
    for snr in frozen:
        # The fine-tuned study may not have every SNR of the frozen one (the long run is frozen only).
        f, t = frozen[snr], tuned.get(snr)
        print(f"## SNR {snr}\n\n{head}")
        if t is not None:
            for n in (50, 100):
                acc = per_seed_accuracy(n)
                print(line(f"accuracy at {n}: frozen random − fine-tuned random", acc(f, RANDOM),
                           acc(t, RANDOM))[0])
            print(line("AUBC: frozen random − fine-tuned random", per_seed_aubc(f, RANDOM),
                       per_seed_aubc(t, RANDOM))[0])
        for name, rows in (("frozen", f), ("fine-tuned", t)):
            if rows is None:
                continue
            acc = per_seed_accuracy(50)
            print(line(f"{name}: accuracy at 50, typiclust start − random start", acc(rows, START),
                       acc(rows, RANDOM))[0])
        print()
    print("## The picks against the pretrained random, with a Holm correction\n\n"
          "One Holm family per study and phase: the main settings (SNR 0.1 and 0.05, the issue's "
          "targets) and the long run (the other SNRs), so adding the long run does not move the "
          "main figures.\n")
    for name, blocks in (("frozen", frozen), ("fine-tuned", tuned)):
        main_snrs = [s for s in blocks if s in MAIN_SNRS]
        long_snrs = [s for s in blocks if s not in MAIN_SNRS]
        for phase, snrs in (("main", main_snrs), ("long run", long_snrs)):
            if snrs:
                print_holm_family(f"{name}, {phase}", {s: blocks[s] for s in snrs})


def print_holm_family(title: str, blocks: dict[str, list]) -> None:
    """Every pick − pretrained random AUBC comparison of `blocks`, with Holm-adjusted p-values."""
    rows_out, pvals = [], []
    for snr, rows in blocks.items():
        for scheme in sorted({r.scheme for r in rows} - {RANDOM, START, SCRATCH}):
            text, p = line(f"SNR {snr}: {scheme} − random", per_seed_aubc(rows, scheme),
                           per_seed_aubc(rows, RANDOM))
            rows_out.append(text)
            pvals.append(p)
    adjusted = holm(pvals)
    print(f"### {title} ({len(pvals)} comparisons)\n\n| comparison | AUBC difference | p | Holm p |\n"
          "|---|---:|---:|---:|")
    for text, p, h in zip(rows_out, pvals, adjusted, strict=True):
        cells = text.strip("|").split("|")
        print(f"|{cells[0]}|{cells[1]}| {p:.3f} | {h:.3f} |")
    print()


if __name__ == "__main__":
    main()
