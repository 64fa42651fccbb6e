"""What `cryoal benchmark` does between parsing its options and exiting: open the pool and the
truth, run the loop with a progress bar, then write summary.csv, curves.png, run.json and the table.
"""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import sys
from pathlib import Path

from cryoal.benchmark.loop import STATE_DIR, BenchmarkConfig, Steps, Timings, make_split, run_benchmark
from cryoal.benchmark.report import (
    plot_curves,
    summarize,
    summary_dicts,
    summary_table,
    write_json,
    write_summary,
)
from cryoal.benchmark.truth import load_truth
from cryoal.errors import CryoalError, OptionError
from cryoal.io.pool import open_pool

RUN_JSON = "run.json"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """Versions of everything that changes the numbers."""
    import numpy
    import torch

    from cryoal._version import __version__

    return {
        "cryoal": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def check_resumable(out: Path, config: BenchmarkConfig, pool: Path, truth: Path) -> list[dict]:
    """On --resume, the options that shape the results must match the previous run's run.json.

    Returns the previous run records (kept in the new run.json's `previous_runs`).
    """
    path = out / RUN_JSON
    if not path.exists():
        raise CryoalError(f"{out}: nothing to resume (no {RUN_JSON})")
    try:
        prev = json.loads(path.read_text(encoding="utf-8"))
        old = prev["options"]
    except (ValueError, KeyError, TypeError):
        raise CryoalError(f"{path}: not a cryoal benchmark run.json") from None
    new = config.to_dict()
    for key in BenchmarkConfig.RESULT_KEYS:
        if key not in old and key in BenchmarkConfig.ABSENT_MEANS:
            old = {**old, key: BenchmarkConfig.ABSENT_MEANS[key]}
        if key in old and old[key] != new[key]:
            raise CryoalError(
                f"--resume: option {key} was {old[key]!r} in {path}, now {new[key]!r}; "
                "use the same options or another directory"
            )
    if prev.get("pool") and Path(prev["pool"]).resolve() != pool.resolve():
        raise CryoalError(f"--resume: {path} was made with pool {prev['pool']}, not {pool}")
    history = list(prev.get("previous_runs", []))
    history.append({k: prev.get(k) for k in ("command", "start", "end", "versions")})
    return history


def run_cli(pool_path: Path, truth_path: Path, out: Path, console, *, resume: bool, arch: str | None,
            steps: Steps | None = None, event_log=None, **options) -> None:
    """Run the whole benchmark command (options as in `BenchmarkConfig`).

    `event_log` (a `cryoal.io.logjson.EventLog`, `--log-json`) gets `start`, `message` (each line of
    the log), `progress` (after each cycle), `cycle` (each learning-curve point) and `done`
    (AUBC summary and timings) events.
    """
    import time

    from cryoal.io.logjson import EventLog

    event_log = event_log or EventLog(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cryoal.modes import get_mode

    with open_pool(pool_path) as pool:  # the pool's mode supplies the default architecture
        mode = get_mode(pool.mode)
    config = BenchmarkConfig(arch=arch or mode.default_arch, **options)
    _check_pretrain_options(config)
    history = check_resumable(out, config, pool_path, truth_path) if resume else []
    with open_pool(pool_path) as pool:
        if arch is not None and arch not in mode.archs:
            raise OptionError(f"--arch {arch}: not a {mode.name} architecture; choose one of "
                              f"{', '.join(mode.archs)}")
        data = load_truth(pool, truth_path)
        split0 = make_split(data.truth, 0, config)  # bad sizes fail here, before OUT is touched
        if config.pretrain:
            from cryoal.benchmark.pretraining import check_pretrain

            check_pretrain(data, config, split0.selectable.size)
        out.mkdir(exist_ok=True)
        # read before run.json is rewritten below: finished seeds are not prepared again
        timings = Timings(pretrain=_previous_pretraining(out) if resume and config.pretrain else {})
        record = _run_record(pool_path, truth_path, data, config, history)
        write_json(out / RUN_JSON, record)
        total = config.seeds * len(config.schemes) * config.cycles
        event_log.emit("start", pool=record["pool"], out=str(out), n_particles=record["n_particles"],
                       options=record["options"], total_cycles=total)
        t_start = time.perf_counter()
        done_cycles = [0]

        def on_message(msg: str) -> None:
            bar.console.log(msg)
            event_log.emit("message", message=msg)

        def on_advance() -> None:
            bar.advance(task)
            done_cycles[0] += 1
            event_log.emit("progress", done=done_cycles[0], total=total,
                           seconds=round(time.perf_counter() - t_start, 3))
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=False,
        ) as bar:
            task = bar.add_task("benchmark cycles", total=total)
            if resume:
                from cryoal.benchmark.loop import RunState

                state = RunState.load(out)
                done = sum(min(state.done_cycles(s, k), config.cycles)
                           for s in config.schemes for k in range(config.seeds))
                bar.update(task, completed=done)
            rows = run_benchmark(
                data, config, out, resume=resume, steps=steps, timings=timings,
                log=on_message, advance=on_advance,
            )
    _write_results(out, pool_path, data, config, rows, record, timings, event_log)


def _check_pretrain_options(config: BenchmarkConfig) -> None:
    """OptionError for pretraining options that cannot work together."""
    from cryoal.benchmark.pretraining import INITIAL_SCHEMES

    if config.initial_scheme not in INITIAL_SCHEMES:
        raise OptionError(f"--initial-scheme {config.initial_scheme}: choose one of "
                          f"{', '.join(INITIAL_SCHEMES)}")
    if config.initial_scheme == "typiclust" and not config.pretrain:
        raise OptionError("--initial-scheme typiclust: needs --pretrain (it picks from the embedding)")
    if config.pretrain_epochs is not None and not config.pretrain:
        raise OptionError("--pretrain-epochs: needs --pretrain")
    if config.freeze_trunk and not config.pretrain:
        raise OptionError("--freeze-trunk: needs --pretrain (a random trunk would stay random)")
    if not config.pretrain:  # the benchmark's working pools have an embedding only under --pretrain
        from cryoal.benchmark.variants import parse_variant
        from cryoal.scoring import SCHEMES
        from cryoal.scoring.picks import EMBEDDING_PICKS

        for name in config.schemes:
            variant = parse_variant(name, tuple(SCHEMES))
            if getattr(SCHEMES[variant.scheme], "embedding", False) or variant.pick in EMBEDDING_PICKS:
                raise OptionError(f"--schemes: '{name}' reads the embedding of a pretrained trunk; "
                                  "add --pretrain")


def _previous_pretraining(out: Path) -> dict[str, dict]:
    """On --resume: the per-seed pretraining costs of the previous runs (seeds they finished are not
    prepared again, yet their cost belongs in run.json). From run.json where the previous run ended
    normally; else (an interrupted run writes no costs) from the encoder files cached in OUT/state."""
    try:
        prev = json.loads((out / RUN_JSON).read_text(encoding="utf-8")).get("pretraining") or {}
    except (OSError, ValueError):
        prev = {}
    costs = {str(k): v for k, v in prev.items() if isinstance(v, dict)}
    for seed, cost in _cached_encoder_costs(out / STATE_DIR).items():
        costs.setdefault(seed, cost)
    return costs


def _cached_encoder_costs(state_dir: Path) -> dict[str, dict]:
    """Seed -> pretraining cost of every readable `encoder-seed<K>.pt` in the state directory."""
    from cryoal.benchmark.pretraining import SeedEncoder
    from cryoal.learn.encoder import encoder_digest, read_encoder

    costs = {}
    for path in sorted(state_dir.glob("encoder-seed*.pt")):
        seed = path.stem.removeprefix("encoder-seed")
        if not seed.isdigit():
            continue
        try:
            record = read_encoder(path)
            costs[seed] = SeedEncoder(int(seed), path, encoder_digest(path), record, False).cost()
        except (CryoalError, KeyError, IndexError, TypeError, ValueError):
            continue  # unreadable: its seed is pretrained again if it runs
    return costs


def _run_record(pool_path: Path, truth_path: Path, data, config: BenchmarkConfig, history: list) -> dict:
    """run.json as the run starts: the command, inputs, options and versions."""
    return {
        "command": shlex.join(["cryoal", *sys.argv[1:]]),
        "argv": ["cryoal", *sys.argv[1:]],  # no path of the machine it ran on
        "pool": str(pool_path.resolve()),
        "truth": str(truth_path.resolve()),
        "n_particles": int(data.truth.size),
        "metric": "mean_iou" if data.targets is not None else "accuracy",  # the curves' accuracy column
        "class_names": data.class_names,
        "options": config.to_dict(),
        "versions": versions(),
        "start": _now(),
        "end": None,
        "previous_runs": history,
    }


def _write_results(out: Path, pool_path: Path, data, config: BenchmarkConfig, rows: list, record: dict,
                   timings, event_log) -> None:
    """After the cycles: summary.csv, curves.png, run.json completed, the log's last events and
    the AUBC table on the terminal."""
    # a resumed run may have asked for fewer schemes/seeds/cycles than the files hold: report these
    rows = [r for r in rows
            if r.scheme in config.schemes and r.seed < config.seeds and r.cycle < config.cycles]
    summary = summarize(rows, config.schemes)
    write_summary(out / "summary.csv", summary)
    plot_curves(out / "curves.png", rows, config.schemes,
                title=f"{pool_path.name}: {len(data.class_names)} classes, {config.seeds} seeds")
    record.update({
        "end": _now(), "summary": summary_dicts(summary),
        "seconds": {"train": round(timings.train, 2), "n_trainings": timings.n_train,
                    "evaluate": round(timings.evaluate, 2),
                    "select": {k: round(v, 2) for k, v in timings.select.items()}},
    })
    if config.pretrain:  # per seed: wall time, epochs, method, final loss (of the run that pretrained)
        record["pretraining"] = {k: v for k, v in sorted(timings.pretrain.items(), key=lambda kv: int(kv[0]))
                                 if int(k) < config.seeds}
        # the encoders' total cost, whichever run (this one or a resumed one) trained them
        record["seconds"]["pretrain"] = round(sum(v["seconds"] for v in record["pretraining"].values()), 2)
    write_json(out / RUN_JSON, record)
    for r in rows:
        event_log.emit("cycle", scheme=r.scheme, seed=r.seed, cycle=r.cycle, n_labeled=r.n_labeled,
                       accuracy=r.accuracy, macro_f1=r.macro_f1)
    event_log.emit("done", out=str(out), summary=record["summary"], seconds=record["seconds"])
    from rich.console import Console

    metric = "mean IoU" if data.targets is not None else "accuracy"  # segmentation: mIoU in its place
    Console().print(summary_table(summary, title=f"AL benchmark: AUBC and final test {metric} ({out})"))
