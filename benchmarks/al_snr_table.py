"""Combine the per-SNR results of benchmarks/al_snr.sh into one Markdown table and one figure.

    python benchmarks/al_snr_table.py benchmarks/results/quick [--png docs/al_quick.png]

Reads RESULTS/snr_*/curves.csv (and run.json for the settings) and writes RESULTS/table.md: AUBC
mean ± std over seeds per scheme (rows) and SNR (columns), the best mean per SNR in bold, and the
schemes within one standard deviation of it marked with a dagger; then every scheme's paired
difference to `random` (and every `<variant>:uncalibrated`'s to its calibrated `<variant>`) with a
95 % confidence interval over seeds, every seed's AUBC and the class skew of the picks. The figure
has one panel per SNR (test accuracy vs labels, mean ± std bands).

The pretraining study (benchmarks/al_study_pretrain.sh) keeps one directory per arm,
RESULTS/<arm>/snr_*/ (`pretrained`, `typiclust_start`, `scratch`): their schemes are shown with the
arm's suffix (`random (scratch)`), paired by seed, `random` being the pretrained one; the table
then adds the accuracy at the first and last label counts against `random (scratch)`, the classes
the labelled sets cover, and the pretraining's wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryoal.benchmark.report import (  # noqa: E402
    CurveRow,
    curve_arrays,
    read_curves,
    read_selections,
    seed_band,
    summarize,
)
from cryoal.benchmark.variants import UNCALIBRATED  # noqa: E402
from cryoal.io.atomic import atomic_open, atomic_path  # noqa: E402
from cryoal.io.tables import read_table  # noqa: E402


def snr_key(path: Path) -> float:
    """Sort SNR directories from the cleanest (inf) to the noisiest."""
    value = path.name.removeprefix("snr_")
    return -math.inf if value == "inf" else -float(value)


def complete_seeds(rows: list[CurveRow], schemes: list[str], cycles: int) -> list[int]:
    """Seeds whose curves are finished (all `cycles` points) for EVERY scheme.

    An interrupted run's partial seed is left out entirely, so that every scheme is compared on the
    same seeds (paired) and every AUBC covers the same label range.
    """
    done = {(r.scheme, r.seed, r.cycle) for r in rows}
    seeds = sorted({r.seed for r in rows})
    return [k for k in seeds if all((s, k, c) in done for s in schemes for c in range(cycles))]


def load(results: Path) -> list[tuple[str, list[CurveRow], dict]]:
    """(SNR label, curve rows of the complete seeds, run.json) for every snr_* directory with any."""
    out = []
    for d in sorted((p for p in results.glob("snr_*") if p.is_dir()), key=snr_key):
        if not (d / "curves.csv").exists():
            continue
        run = json.loads((d / "run.json").read_text()) if (d / "run.json").exists() else {}
        rows = read_curves(d / "curves.csv")
        schemes = run.get("options", {}).get("schemes") or list(dict.fromkeys(r.scheme for r in rows))
        cycles = run.get("options", {}).get("cycles") or 1 + max(r.cycle for r in rows)
        keep = set(complete_seeds(rows, schemes, cycles))
        rows = [r for r in rows if r.seed in keep and r.scheme in schemes and r.cycle < cycles]
        if rows:
            out.append((d.name.removeprefix("snr_"), rows, run))
    return out


def per_seed_aubc(rows: list[CurveRow], scheme: str) -> dict[int, float]:
    """{seed: AUBC} of one scheme."""
    from cryoal.benchmark.metrics import aubc

    return {k: aubc(*curve_arrays(rows, scheme, k)[:2])
            for k in sorted({r.seed for r in rows if r.scheme == scheme})}


def paired_stats(diff: list[float]) -> tuple[float, float, float, float]:
    """(mean, std, CI low, CI high): the 95 % Student-t interval of the mean paired difference."""
    from scipy import stats

    n = len(diff)
    mean = sum(diff) / n
    std = math.sqrt(sum((d - mean) ** 2 for d in diff) / (n - 1)) if n > 1 else 0.0
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else math.inf
    return mean, std, mean - half, mean + half


TIE = 1e-12  # |AUBC difference| at or below this is a tie: identical curves summed in another order


def win_count(diff: list[float]) -> str:
    """"wins/seeds", plus ", N tie(s)" when some differences are ties (|d| <= TIE). A tie is not a
    win: two schemes that picked the same particles give the same curve, and their AUBCs can
    differ by a rounding error of either sign."""
    wins = sum(d > TIE for d in diff)
    ties = sum(abs(d) <= TIE for d in diff)
    text = f"{wins}/{len(diff)}"
    return text + (f", {ties} tie{'s' if ties > 1 else ''}" if ties else "")


def paired_table(blocks: list[tuple[str, list[CurveRow], dict]], pairs: list[tuple[str, str]],
                 head: str, values: Callable[[list[CurveRow], str], dict[int, float]] | None = None) -> str:
    """AUBC of `name` minus AUBC of `base` at the same seed, for each (name, base) pair: mean ± std,
    the 95 % t confidence interval of the mean over seeds, and wins/seeds with ties apart (Markdown).
    A CI entirely above 0 is marked ▲, below ▼; an SNR where either is missing gets –. `values`
    (rows, scheme) -> {seed: value} compares another per-seed figure (default: the AUBC)."""
    values = values or per_seed_aubc
    lines = [f"| {head} | " + " | ".join(f"SNR {snr}" for snr, _, _ in blocks) + " |",
             "|---|" + "---:|" * len(blocks)]
    for name, base in pairs:
        cells = []
        for _, rows, _ in blocks:
            if not any(r.scheme == base for r in rows) or not any(r.scheme == name for r in rows):
                cells.append("–")
                continue
            theirs, mine = values(rows, base), values(rows, name)
            diff = [mine[k] - theirs[k] for k in theirs if k in mine]
            if not diff:
                cells.append("–")
                continue
            mean, std, lo, hi = paired_stats(diff)
            mark = " ▲" if lo > 0 else " ▼" if hi < 0 else ""
            cells.append(f"{mean:+.3f} ± {std:.3f} [{lo:+.3f}, {hi:+.3f}]{mark} ({win_count(diff)})")
        label = name if base == "random" else f"{name} − {base}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def all_schemes(blocks: list[tuple[str, list[CurveRow], dict]]) -> list[str]:
    """Every scheme of any SNR, in first-seen order."""
    return list(dict.fromkeys(r.scheme for _, rows, _ in blocks for r in rows))


def paired_vs_random(blocks: list[tuple[str, list[CurveRow], dict]]) -> str:
    """Every scheme minus `random` at the same seed (see paired_table)."""
    pairs = [(s, "random") for s in all_schemes(blocks) if s != "random"]
    return paired_table(blocks, pairs, "scheme − random")


def paired_calibration(blocks: list[tuple[str, list[CurveRow], dict]]) -> str:
    """Every `<variant>:uncalibrated` minus its calibrated `<variant>` at the same seed: what
    temperature scaling changes. Empty when the study has no uncalibrated variant."""
    suffix = f":{UNCALIBRATED}"  # the benchmark's own variant suffix (cryoal.benchmark.variants)
    schemes = all_schemes(blocks)
    pairs = [(s, s.removesuffix(suffix)) for s in schemes
             if s.endswith(suffix) and s.removesuffix(suffix) in schemes]
    return paired_table(blocks, pairs, "uncalibrated − calibrated") if pairs else ""


def seeds_table(blocks: list[tuple[str, list[CurveRow], dict]]) -> str:
    """Every seed's AUBC, per SNR (one Markdown table per SNR: schemes x seeds)."""
    out = []
    for snr, rows, _ in blocks:
        seeds = sorted({r.seed for r in rows})
        lines = [f"SNR {snr}:", "", "| scheme | " + " | ".join(f"seed {k}" for k in seeds) + " |",
                 "|---|" + "---:|" * len(seeds)]
        for name in dict.fromkeys(r.scheme for r in rows):
            values = per_seed_aubc(rows, name)
            lines.append(f"| {name} | " + " | ".join(f"{values[k]:.3f}" if k in values else "–"
                                                      for k in seeds) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def markdown_table(blocks: list[tuple[str, list[CurveRow], dict]]) -> str:
    """AUBC mean ± std per scheme and SNR, best in bold, within one std of the best marked †."""
    schemes: list[str] = []
    for _, rows, run in blocks:
        for s in run.get("options", {}).get("schemes", []) or dict.fromkeys(r.scheme for r in rows):
            if s not in schemes:
                schemes.append(s)
    cells: dict[tuple[str, str], str] = {}
    for snr, rows, _ in blocks:
        summ = {s.scheme: s for s in summarize(rows)}
        best = max(summ.values(), key=lambda s: s.aubc_mean)
        for name, s in summ.items():
            text = f"{s.aubc_mean:.3f} ± {s.aubc_std:.3f}"
            if s is best:
                text = f"**{text}**"
            elif s.aubc_mean + s.aubc_std >= best.aubc_mean:
                text += " †"
            cells[(name, snr)] = text
    head = "| scheme | " + " | ".join(f"SNR {snr}" for snr, _, _ in blocks) + " |"
    rule = "|---|" + "---:|" * len(blocks)
    lines = [head, rule]
    for name in schemes:
        lines.append(f"| {name} | " + " | ".join(cells.get((name, snr), "–") for snr, _, _ in blocks) + " |")
    return "\n".join(lines)


def pick_balance(results: Path, blocks) -> str:
    """How class-skewed each scheme's picks are: over all its selection rounds of one seed, the
    share of the most-picked TRUE class, mean over seeds (1/C = perfectly balanced), and how many
    classes it never picked (summed over seeds). Needs the truth file named in run.json; SNRs whose
    truth file is gone, or holds another number of particles than the run's pool, are left out."""
    from collections import Counter

    cols, cells = [], {}
    for snr, rows, run in blocks:
        truth_path, sel_path = Path(run.get("truth", "")), results / f"snr_{snr}" / "selections.csv"
        if not (truth_path.is_file() and sel_path.is_file()):
            continue
        table = read_table(truth_path)
        truth = dict(zip(table["particle_id"], table["label"], strict=True))
        # a truth file of another pool at the same path (runs of other sizes share a work dir):
        # its labels are not this run's, so this SNR is left out rather than counted wrongly
        if len(truth) != run.get("n_particles", len(truth)):
            continue
        # the same schemes and seeds as the other tables (a later phase's extra schemes stay out)
        seeds, schemes = {r.seed for r in rows}, {r.scheme for r in rows}
        picks: dict[tuple[str, int], Counter] = {}
        for sel in read_selections(sel_path):
            if sel.seed in seeds and sel.scheme in schemes:
                picks.setdefault((sel.scheme, sel.seed), Counter())[truth[sel.particle_id]] += 1
        n_classes = len(run.get("class_names", [])) or len(set(truth.values()))
        cols.append(snr)
        for scheme in dict.fromkeys(k[0] for k in picks):
            counts = [c for (s, _), c in picks.items() if s == scheme]
            top = sum(max(c.values()) / sum(c.values()) for c in counts) / len(counts)
            missing = sum(n_classes - len(c) for c in counts)
            cells[(scheme, snr)] = f"{top:.0%} / {missing}"
    if not cols:
        return ""
    schemes = list(dict.fromkeys(k[0] for k in cells))
    lines = ["| scheme | " + " | ".join(f"SNR {c}" for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name in schemes:
        lines.append(f"| {name} | " + " | ".join(cells.get((name, c), "–") for c in cols) + " |")
    return "\n".join(lines)


def settings_line(blocks) -> str:
    """One line with the settings shared by the runs (from run.json)."""
    if not blocks or not blocks[0][2]:
        return ""
    run = blocks[0][2]
    o = run["options"]
    n_seeds = ", ".join(f"SNR {snr}: {len({r.seed for r in rows})}" for snr, rows, _ in blocks)
    training = f"{o['epochs']} epochs from scratch each cycle"
    if o.get("warm_start"):
        warm = o.get("warm_epochs") or o["epochs"]
        training = (f"{o['epochs']} epochs from scratch at cycle 0, then {warm} epochs fine-tuning "
                    "the previous model each cycle")
    return (
        f"{run.get('n_particles')} particles ({len(run.get('class_names', []))} classes) per SNR; "
        f"test fraction {o['test_fraction']}; initial {o['initial']}, budget {o['budget']} x "
        f"{o['cycles'] - 1} rounds; {training}, arch {o['arch']}"
        f"{' width ' + str(o['width']) if o.get('width') else ''}; complete seeds ({n_seeds})."
    )


# -- the pretraining study: one directory per arm ------------------------------------------------

ARMS = {"pretrained": "", "typiclust_start": " (typiclust start)", "scratch": " (scratch)"}
SCRATCH_RANDOM = "random (scratch)"


def find_arms(results: Path) -> list[str]:
    """The arms of the pretraining study present in RESULTS (empty for a one-directory study)."""
    return [a for a in ARMS if (results / a).is_dir()]


def load_arms(results: Path, arms: list[str]) -> list[tuple[str, list[CurveRow], dict]]:
    """Per SNR, the rows of every arm with its suffix on the scheme names, on the seeds complete in
    every arm that has the SNR (paired); the run dict is the first arm's, with `arms` {arm: run.json}."""
    per = {arm: {snr: (rows, run) for snr, rows, run in load(results / arm)} for arm in arms}
    snrs = sorted({snr for runs in per.values() for snr in runs}, key=lambda v: snr_key(Path(f"snr_{v}")))
    blocks = []
    for snr in snrs:
        parts = [(arm, *per[arm][snr]) for arm in arms if snr in per[arm]]
        seeds = set.intersection(*({r.seed for r in rows} for _, rows, _ in parts))
        rows = [replace(r, scheme=r.scheme + ARMS[arm]) for arm, arm_rows, _ in parts for r in arm_rows
                if r.seed in seeds]
        run = dict(parts[0][2])
        run["arms"] = {arm: arm_run for arm, _, arm_run in parts}
        run["options"] = {**run.get("options", {}), "schemes": list(dict.fromkeys(r.scheme for r in rows))}
        if rows:
            blocks.append((snr, rows, run))
    return blocks


def per_seed_accuracy(n: int) -> Callable[[list[CurveRow], str], dict[int, float]]:
    """(rows, scheme) -> {seed: test accuracy at `n` labels}."""
    def values(rows: list[CurveRow], scheme: str) -> dict[int, float]:
        return {r.seed: r.accuracy for r in rows if r.scheme == scheme and r.n_labeled == n}
    return values


def label_counts(blocks) -> tuple[int, int]:
    """The first and last label counts of the curves (50 and 100 in the study)."""
    counts = sorted({r.n_labeled for _, rows, _ in blocks for r in rows})
    return counts[0], counts[-1]


def accuracy_vs_scratch(blocks) -> str:
    """Every scheme's accuracy at the first and last label counts minus `random (scratch)`'s, paired."""
    pairs = [(s, SCRATCH_RANDOM) for s in all_schemes(blocks) if s != SCRATCH_RANDOM]
    return "\n\n".join(f"At {n} labels:\n\n" + paired_table(blocks, pairs, f"accuracy at {n} − scratch",
                                                              per_seed_accuracy(n))
                        for n in dict.fromkeys(label_counts(blocks)))


def _labelled_sets(arm_dir: Path, run: dict) -> tuple[dict, dict[str, int]] | None:
    """({(scheme, seed): [(n labels, labelled ids)] per cycle}, {particle id: true class}) of one arm's
    run, or None when its pool or truth file is gone (the random initial sets are drawn again from
    them, as the run drew them; a typiclust initial set is read from run.json)."""
    from cryoal.benchmark.loop import BenchmarkConfig, make_split
    from cryoal.benchmark.truth import load_truth
    from cryoal.io.pool import open_pool

    pool_path, truth_path = Path(run.get("pool", "")), Path(run.get("truth", ""))
    if not (pool_path.is_file() and truth_path.is_file() and (arm_dir / "selections.csv").is_file()):
        return None
    o = run["options"]
    config = BenchmarkConfig(**{k: v for k, v in o.items() if k in BenchmarkConfig.__dataclass_fields__})
    with open_pool(pool_path) as pool:
        ids = pool.particle_ids
        truth = load_truth(pool, truth_path).truth
    picks = read_selections(arm_dir / "selections.csv")
    out = {}
    for seed in range(config.seeds):
        recorded = run.get("pretraining", {}).get(str(seed), {}).get("initial_ids")
        initial = set(recorded or (str(ids[i]) for i in make_split(truth, seed, config).initial))
        for scheme in o["schemes"]:
            labelled, sets = set(initial), []
            for cycle in range(config.cycles):
                sets.append((len(labelled), set(labelled)))
                labelled |= {p.particle_id for p in picks if p.scheme == scheme and p.seed == seed
                             and p.cycle == cycle}
            out[(scheme, seed)] = sets
    return out, dict(zip(map(str, ids), truth, strict=True))


def coverage_table(results: Path, blocks) -> str:
    """Classes present in the labelled set at the first and last label counts, mean over the seeds
    of the tables (out of the number of classes); SNRs whose pool or truth file is gone get –."""
    first, last = label_counts(blocks)
    cells: dict[tuple[str, str], str] = {}
    for snr, rows, run in blocks:
        seeds = {r.seed for r in rows}
        n_classes = len(run.get("class_names", []))
        for arm, arm_run in run.get("arms", {}).items():
            found = _labelled_sets(results / arm / f"snr_{snr}", arm_run)
            if found is None:
                continue
            sets, truth = found
            for scheme in arm_run["options"]["schemes"]:
                per_n = {}
                for n in (first, last):
                    covered = [len({truth[i] for i in labelled}) for seed in seeds
                               for m, labelled in sets.get((scheme, seed), []) if m == n]
                    per_n[n] = f"{sum(covered) / len(covered):.1f}" if covered else "–"
                cells[(scheme + ARMS[arm], snr)] = f"{per_n[first]} / {per_n[last]} of {n_classes}"
    if not cells:
        return ""
    lines = ["| scheme | " + " | ".join(f"SNR {snr}" for snr, _, _ in blocks) + " |",
             "|---|" + "---:|" * len(blocks)]
    for name in all_schemes(blocks):
        lines.append(f"| {name} | " + " | ".join(cells.get((name, snr), "–") for snr, _, _ in blocks) + " |")
    return "\n".join(lines)


def pretraining_table(blocks) -> str:
    """Per SNR, the pretraining of the `pretrained` arm: seeds, method, epochs, wall time per seed
    (mean, min–max) and final loss (mean), from its run.json."""
    lines = ["| SNR | seeds | method | epochs | particles | wall time per seed (s) | final loss |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for snr, _, run in blocks:
        costs = list(run.get("arms", {}).get("pretrained", {}).get("pretraining", {}).values())
        if not costs:
            continue
        secs = [c["seconds"] for c in costs]
        lines.append(f"| {snr} | {len(costs)} | {costs[0]['method']} | {costs[0]['epochs']} | "
                     f"{costs[0]['n_particles']} | {sum(secs) / len(secs):.0f} "
                     f"({min(secs):.0f}–{max(secs):.0f}) | "
                     f"{sum(c['final_loss'] for c in costs) / len(costs):.3f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def pretrain_sections(results: Path, blocks) -> str:
    """The pretraining study's extra tables (accuracy vs scratch, coverage, pretraining cost)."""
    text = ("\nTest accuracy minus `random (scratch)`'s (no pretraining) at the same seed, same format "
            "(`random` is the pretrained random):\n\n" + accuracy_vs_scratch(blocks) + "\n")
    coverage = coverage_table(results, blocks)
    if coverage:
        first, last = label_counts(blocks)
        text += (f"\nClass coverage: classes present in the labelled set at {first} / {last} labels, mean "
                 "over seeds:\n\n" + coverage + "\n")
    cost = pretraining_table(blocks)
    if cost:
        text += ("\nPretraining (one per seed, on the non-test particles; `run.json` `pretraining`):\n\n"
                 + cost + "\n")
    return text


def plot(blocks, path: Path) -> None:
    """One panel per SNR: test accuracy vs labels, mean ± std over seeds, one line per scheme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(blocks), figsize=(4.2 * len(blocks), 3.8), sharey=False,
                             constrained_layout=True, squeeze=False)
    schemes = all_schemes(blocks)
    for ax, (snr, rows, _) in zip(axes[0], blocks, strict=True):
        for k, scheme in enumerate(schemes):
            band = seed_band(rows, scheme)
            if band is None:
                continue
            n, mean, std = band[0], band[1][0], band[2][0]  # accuracy
            style = "-" if scheme.split(":")[0].removesuffix("-balanced") in ("expected", "entropy") else "--"
            ax.plot(n, mean, style, marker="o", ms=3, color=f"C{k}", label=scheme)
            ax.fill_between(n, mean - std, mean + std, color=f"C{k}", alpha=0.12, lw=0)
        ax.set_title(f"SNR {snr}")
        ax.set_xlabel("labelled particles")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="benchmarks/results/<variant>")
    ap.add_argument("--png", type=Path, help="also write the figure here")
    args = ap.parse_args()
    arms = find_arms(args.results)
    blocks = load_arms(args.results, arms) if arms else load(args.results)
    if not blocks:
        sys.exit(f"error: {args.results}: no snr_*/curves.csv yet")
    text = (
        "AUBC (area under the test-accuracy vs labels curve, over the label range), mean ± std over "
        "seeds. **Bold**: best mean per SNR; †: within one std of it.\n\n"
        + markdown_table(blocks) + "\n\n" + settings_line(blocks) + "\n\n"
        "Paired difference to `random` (same seed: same test split, initial set and cycle-0 model), "
        "mean ± std over seeds, [95 % Student-t confidence interval of the mean] (▲: the interval is "
        f"above 0; ▼: below), (seeds where the scheme beat random / seeds; ties, |difference| ≤ {TIE:g}, "
        "counted apart and not as wins):\n\n"
        + paired_vs_random(blocks) + "\n"
    )
    calibration = paired_calibration(blocks)
    if calibration:
        text += ("\nPaired difference of each variant without calibration (`:uncalibrated`, "
                 "`--no-calibration`) to the same variant with it, same format:\n\n" + calibration + "\n")
    if arms:
        text += ("\nIn the pretraining study `random` is the pretrained one; `random (scratch)` and "
                 "`random (typiclust start)` share its seeds' test splits, not its cycle-0 model (nor, "
                 "for the typiclust start, its initial set).\n")
        text += pretrain_sections(args.results, blocks)
    text += "\nAUBC of every seed:\n\n" + seeds_table(blocks) + "\n"
    balance = "" if arms else pick_balance(args.results, blocks)
    if balance:
        text += ("\nClass skew of the picks: share of the most-picked true class over a seed's selection "
                 "rounds, mean over seeds / classes never picked, summed over seeds:\n\n" + balance + "\n")
    with atomic_open(args.results / "table.md", "w") as fh:
        fh.write(text)
    print(text)
    if args.png:
        plot(blocks, args.png)


if __name__ == "__main__":
    main()
