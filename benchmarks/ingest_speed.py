"""Ingest throughput against raw `mrcfile` reading of the same files, as a ratio measured in one run.

    .venv/bin/python benchmarks/ingest_speed.py            # 1000 files at 32^3, 300 at 64^3
    .venv/bin/python benchmarks/ingest_speed.py --quick    # 200 and 60 files

For each box size it writes N float32 MRC files (a smooth density plus noise, like a
subtomogram), warms the page cache, then times, alternating, `--repeats` runs of each:
  raw     `mrcfile.read(path)` on every file (the floor: reading the bytes and the header);
  write   writing the same number of bytes to one new plain file (the floor for the pool write);
  ingest  `cryoal.ingest.ingest` of the directory into a new pool, once per pool compression.
`ratio` is raw / ingest wall time (1.0 = ingest as fast as only reading the files; the target
is >= 0.5). `CPU ratio` is the same with this process's CPU time (user + system), which a
machine shared with other jobs disturbs less. `vs floor` is (raw + write) / ingest: how close
ingest is to reading plus writing the bytes with nothing else. MB/s counts the MRC bytes.
Each number is the median of `--repeats` runs.

Then, for the pool layout (`--read-only` runs just this part), it writes an uncompressed pool
of `--n-read` particles with 1, 4 and 16 particles per HDF5 chunk and times (median of
`--repeats`): writing it; `Pool.iter_batches(64)` over all of it (scoring, prediction); and
`Pool.read` of a random 10% subset (training reads the labelled particles so), beside the
same subset read with h5py fancy indexing (`ds[sorted indices]`, what `Pool.read` did before).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryoal.ingest import IngestOptions, ingest  # noqa: E402
from cryoal.io.pool import PoolWriter, open_pool  # noqa: E402


def make_files(directory: Path, n: int, box: int, seed: int = 0) -> int:
    """Write n noisy blob volumes; return the total bytes on disk."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, box, dtype=np.float32),) * 3, indexing="ij")
    blob = np.exp(-(x**2 + 2 * y**2 + 3 * z**2) * 4).astype(np.float32)
    total = 0
    for i in range(n):
        vol = blob * rng.uniform(0.5, 2) + rng.standard_normal((box, box, box), dtype=np.float32)
        path = directory / f"p{i:05d}.mrc"
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(vol)
            m.voxel_size = 10.0
        total += path.stat().st_size
    return total


def _timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, user + system) of fn(*args)."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - w0, time.process_time() - c0


def read_all(files: list[Path]) -> None:
    for p in files:
        mrcfile.read(p)


def write_bytes(nbytes: int, directory: Path) -> None:
    block = np.random.default_rng(0).bytes(1 << 20)
    out = directory / "write_floor.bin"
    with open(out, "wb") as fh:
        for _ in range(nbytes >> 20):
            fh.write(block)
        fh.write(block[: nbytes & ((1 << 20) - 1)])


def run_ingest(directory: Path, out: Path, compression: str | None) -> None:
    ingest([str(directory)], out, IngestOptions(compression=compression, overwrite=True))


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def read_speeds(tmp: Path, box: int, n: int, repeats: int, chunks=(1, 4, 16)) -> None:
    """Write, scan and subset-read speeds (particles/s) of pools with `chunks` particles per chunk."""
    rng = np.random.default_rng(1)
    block = rng.standard_normal((min(n, 256), box, box, box), dtype=np.float32)
    ids = [f"p{i}" for i in range(n)]
    subset = np.sort(rng.choice(n, size=max(1, n // 10), replace=False))
    print(f"\npool layout, {n} particles of {box}^3, uncompressed")
    print(f"{'chunk':>5} {'write vol/s':>11} {'scan vol/s':>10} {'subset vol/s':>12} "
          f"{'h5py fancy vol/s':>16}")
    for chunk in chunks:
        path = tmp / f"layout{box}_{chunk}.h5"

        def write(path=path, chunk=chunk) -> None:
            path.unlink(missing_ok=True)
            with PoolWriter(path, shape=(box,) * 3, chunk_particles=chunk) as w:
                for s in range(0, n, len(block)):
                    k = min(len(block), n - s)
                    w.add(block[:k], ids[s : s + k], ids[s : s + k])

        wr = _median_time(write, repeats)
        with open_pool(path) as pool:
            scan = _median_time(lambda pool=pool: [None for _ in pool.iter_batches(64)], repeats)
            sub = _median_time(lambda pool=pool: pool.read(subset), repeats)
            fancy = _median_time(lambda pool=pool: pool.h5["volumes"][subset], max(1, repeats - 1))
        print(f"{chunk:>5} {n / wr:>11.0f} {n / scan:>10.0f} {subset.size / sub:>12.0f} "
              f"{subset.size / fancy:>16.0f}", flush=True)
        path.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n32", type=int, default=1000, help="files at 32^3")
    ap.add_argument("--n64", type=int, default=300, help="files at 64^3")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compressions", default="none,lzf,gzip", help="pool compressions to time")
    ap.add_argument("--quick", action="store_true", help="200 and 60 files, 2 repeats")
    ap.add_argument("--n-read", type=int, default=2000, help="particles (32^3) in the pool-layout test")
    ap.add_argument("--read-only", action="store_true", help="only the pool-layout (chunking, read) test")
    args = ap.parse_args()
    if args.quick:
        args.n32, args.n64, args.repeats, args.n_read = 200, 60, 2, 500
    if args.read_only:
        args.n32 = args.n64 = 0
    comps = [None if c == "none" else c for c in args.compressions.split(",")]

    print(f"{'box':>4} {'files':>6} {'pool':>5} {'raw vol/s':>10} {'ingest vol/s':>12} {'ingest MB/s':>11} "
          f"{'raw MB/s':>9} {'write MB/s':>10} {'ratio':>6} {'CPU ratio':>9} {'vs floor':>8} {'pool/MRC':>8}")
    with tempfile.TemporaryDirectory(prefix="cryoal-bench-") as tmp:
        tmp = Path(tmp)
        for box, n in ((32, args.n32), (64, args.n64)):
            if n <= 0:
                continue
            src = tmp / f"b{box}"
            nbytes = make_files(src, n, box)
            files = sorted(src.glob("*.mrc"))
            read_all(files)  # warm the page cache: both sides read from memory
            for comp in comps:
                raw_t, wr_t, ing_t = [], [], []
                out = tmp / f"pool{box}.h5"
                for _ in range(args.repeats):  # alternate, so that load from others hits all alike
                    raw_t.append(_timed(read_all, files))
                    wr_t.append(_timed(write_bytes, nbytes, tmp))
                    (tmp / "write_floor.bin").unlink()
                    out.unlink(missing_ok=True)
                    ing_t.append(_timed(run_ingest, src, out, comp))
                raw, wr, ing = (statistics.median(w for w, _ in t) for t in (raw_t, wr_t, ing_t))
                raw_cpu = statistics.median(c for _, c in raw_t)
                ing_cpu = statistics.median(c for _, c in ing_t)
                print(f"{box:>4} {n:>6} {comp or 'none':>5} {n / raw:>10.0f} {n / ing:>12.0f} "
                      f"{nbytes / ing / 1e6:>11.1f} {nbytes / raw / 1e6:>9.1f} {nbytes / wr / 1e6:>10.1f} "
                      f"{raw / ing:>6.2f} {raw_cpu / ing_cpu:>9.2f} {(raw + wr) / ing:>8.2f} "
                      f"{out.stat().st_size / nbytes:>8.3f}", flush=True)
                out.unlink()
        if args.n_read > 0:
            read_speeds(tmp, 32, args.n_read, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
