"""Benchmark `cryoal extract`: throughput against raw memory-mapped reading, and peak memory.

    .venv/bin/python benchmarks/extract_speed.py            # 1 GiB and 0.25 GiB tomograms in /tmp

1. Throughput: the same boxes, in the same (z, y, x) order, from a >= 1 GiB float32 tomogram:
   - raw: `mrcfile.mmap` + plain slicing + `np.array` copy, nothing else;
   - extract: `cryoal.extract.extract` end to end (picks parsing, header checks, cutting,
     z-scoring, writing the HDF5 pool with its default compression).
   Measured twice: with the tomogram evicted from the page cache before every run (cold: what a
   lab's fresh tomograms look like) and with it cached (warm: the CPU cost alone). Best of
   --repeats runs each, alternating. Also the pool writer alone, writing ready-made boxes: the
   floor under extract's cost when the tomogram is cached; and extract with the pool write
   replaced by a no-op (the cost of cutting, checking and z-scoring alone).
   Target: extract >= 0.5 x raw.
2. Peak RSS (ru_maxrss of a fresh process, minus the same process before extracting) for the
   same number of picks from the 1 GiB and a 0.25 GiB tomogram. Target: within 50 MB of each
   other and far below the tomogram size.
The tomograms are written fast (header, then one random slab repeated) and deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryoal.extract import ExtractOptions, extract  # noqa: E402
from cryoal.extract.boxes import box_start  # noqa: E402

# Peak RSS from /proc (VmHWM): ru_maxrss is carried over from the parent across fork+exec on Linux.
RSS_CHILD = r"""
import sys
from cryoal.extract import ExtractOptions, plan_extraction, run_extraction

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

def rss():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out

picks, tomo, pool, box = sys.argv[1:5]
peak = {"RssAnon": 0.0, "RssFile": 0.0}
start = rss()

def sample(n):
    for key, value in rss().items():
        peak[key] = max(peak[key], value - start[key])

before = hwm()
plan = plan_extraction(picks, tomo, ExtractOptions(box=int(box)))
run_extraction(plan, pool, progress=sample)
print(before, hwm(), peak["RssFile"], peak["RssAnon"])
"""


def write_tomogram(path: Path, shape_zyx: tuple[int, int, int], pixel: float = 10.0) -> None:
    """A complete float32 MRC of `shape_zyx`: header via mrcfile, then a random 8-slice slab repeated."""
    depth, height, width = shape_zyx
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.zeros((2, 2, 2), np.float32))
    with mrcfile.open(path, mode="r+", permissive=True, header_only=True) as mrc:
        mrc.header.nx, mrc.header.ny, mrc.header.nz = width, height, depth
        mrc.header.mx, mrc.header.my, mrc.header.mz = width, height, depth
        mrc.header.cella = (width * pixel, height * pixel, depth * pixel)
    slab = np.random.default_rng(0).normal(size=(8, height, width)).astype(np.float32).tobytes()
    with open(path, "r+b") as fh:
        fh.truncate(1024)
        fh.seek(1024)
        for _ in range(depth // 8):
            fh.write(slab)
        fh.flush()
        os.fsync(fh.fileno())  # clean pages, so that drop_from_cache can evict them


def drop_from_cache(path: Path) -> None:
    """Evict one file's pages from the OS page cache (no root needed), for a cold-cache read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_picks(path: Path, shape_zyx: tuple[int, int, int], n: int, box: int, seed: int = 0) -> np.ndarray:
    """`n` random picks (x, y, z) whose boxes lie inside the tomogram; written as tomo,x,y,z."""
    rng = np.random.default_rng(seed)
    half = box // 2 + 1
    xyz = np.stack([rng.integers(half, s - half, n) for s in shape_zyx[::-1]], axis=1)
    lines = ["tomo,x,y,z"] + [f"T,{x},{y},{z}" for x, y, z in xyz]
    path.write_text("\n".join(lines) + "\n")
    return xyz


def raw_read(tomo: Path, xyz: np.ndarray, box: int) -> float:
    """Seconds to copy every box out of the memory map, in extract's (z, y, x) order."""
    order = np.lexsort((xyz[:, 0], xyz[:, 1], xyz[:, 2]))
    starts = box_start(xyz[order], box)
    t0 = time.perf_counter()
    with mrcfile.mmap(tomo, mode="r") as mrc:
        data = mrc.data
        for x, y, z in starts:
            np.array(data[z : z + box, y : y + box, x : x + box])
    return time.perf_counter() - t0


def pool_write_time(pool: Path, n: int, box: int) -> float:
    """Seconds to write `n` ready-made boxes with the pool writer as extract uses it (the floor)."""
    from cryoal.io.pool import PoolWriter

    vols = np.random.default_rng(0).normal(size=(64, box, box, box)).astype(np.float32)
    t0 = time.perf_counter()
    with PoolWriter(pool, shape=(box,) * 3, voxel_size=10.0, compression=None) as writer:
        for start in range(0, n, 64):
            k = min(64, n - start)
            writer.add(vols[:k], [f"p{start + i}" for i in range(k)], ["t.mrc"] * k, tomos=["t"] * k,
                       coords=np.zeros((k, 3)), meta={"x": ["1"] * k}, edge=np.zeros(k, bool))
    elapsed = time.perf_counter() - t0
    pool.unlink()
    return elapsed


class NullWriter:
    """Stands in for PoolWriter to time extraction without the pool write (benchmark only)."""

    def __init__(self, *args, **kwargs):
        self.voxel_size = kwargs.get("voxel_size")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def add(self, *args, **kwargs):
        return 0  # the pool row of the first particle added

    def write_volumes(self, *args, **kwargs):
        return None


def extract_time_no_write(picks: Path, tomo: Path, pool: Path, box: int) -> float:
    import cryoal.io.pool

    real = cryoal.io.pool.PoolWriter
    cryoal.io.pool.PoolWriter = NullWriter  # run_extraction imports it at call time
    try:
        t0 = time.perf_counter()
        extract(picks, tomo, pool, ExtractOptions(box=box))
        return time.perf_counter() - t0
    finally:
        cryoal.io.pool.PoolWriter = real


def extract_time(picks: Path, tomo: Path, pool: Path, box: int) -> float:
    t0 = time.perf_counter()
    extract(picks, tomo, pool, ExtractOptions(box=box))
    elapsed = time.perf_counter() - t0
    pool.unlink()
    return elapsed


def peak_rss(picks: Path, tomo: Path, pool: Path, box: int) -> tuple[float, ...]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, str(picks), str(tomo), str(pool), str(box)],
        capture_output=True, text=True, env=env, check=True,
    )
    pool.unlink()
    return tuple(float(v) for v in out.stdout.split())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write the tomograms (deleted)")
    parser.add_argument("--size-gib", type=float, default=1.0, help="size of the big tomogram")
    parser.add_argument("--boxes", type=int, default=2000)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    width = height = 1024
    depth_big = max(64, int(round(args.size_gib * 2**30 / (width * height * 4) / 8)) * 8)
    shapes = {"big": (depth_big, height, width), "quarter": (max(64, depth_big // 4), height, width)}
    work = Path(tempfile.mkdtemp(prefix="cryoal-extract-bench-", dir=args.dir))
    try:
        tomos = {}
        for name, shape in shapes.items():
            tomos[name] = work / f"{name}.mrc"
            t0 = time.perf_counter()
            write_tomogram(tomos[name], shape)
            size = tomos[name].stat().st_size / 2**30
            print(f"wrote {name} tomogram {shape[2]}x{shape[1]}x{shape[0]} ({size:.2f} GiB) in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)

        # 1. throughput on the big tomogram
        picks = work / "picks.csv"
        xyz = write_picks(picks, shapes["big"], args.boxes, args.box)
        pool = work / "pool.h5"
        mb_per_box = args.box**3 * 4 / 1e6
        big_gib = tomos["big"].stat().st_size / 2**30
        for cache in ("cold", "warm"):
            if cache == "warm":
                raw_read(tomos["big"], xyz, args.box)  # warm-up: page cache and code paths
            raw_times, ext_times, nowrite_times = [], [], []
            for _ in range(args.repeats):
                if cache == "cold":
                    drop_from_cache(tomos["big"])
                raw_times.append(raw_read(tomos["big"], xyz, args.box))
                if cache == "cold":
                    drop_from_cache(tomos["big"])
                ext_times.append(extract_time(picks, tomos["big"], pool, args.box))
                if cache == "cold":
                    drop_from_cache(tomos["big"])
                nowrite_times.append(extract_time_no_write(picks, tomos["big"], pool, args.box))
            raw_rate = args.boxes / min(raw_times)
            ext_rate = args.boxes / min(ext_times)
            nowrite_rate = args.boxes / min(nowrite_times)
            print(f"throughput, {args.boxes} boxes of {args.box}^3 from a {big_gib:.2f} GiB tomogram, "
                  f"page cache {cache}, best of {args.repeats}")
            rates = [("raw mrcfile.mmap slicing + copy", raw_rate), ("cryoal extract (to pool)", ext_rate),
                     ("cryoal extract, pool write skipped", nowrite_rate)]
            if cache == "warm":
                write_rate = args.boxes / min(pool_write_time(pool, args.boxes, args.box) for _ in range(2))
                rates.append(("pool write alone (no reading)", write_rate))
            for label, rate in rates:
                print(f"  {label:35s} {rate:8.0f} boxes/s ({rate * mb_per_box:.0f} MB/s)")
            print(f"  ratio extract / raw: {ext_rate / raw_rate:.2f}  (target >= 0.5); "
                  f"without the pool write: {nowrite_rate / raw_rate:.2f}")

        # 2. peak memory: the same number of picks from the big and the quarter-size tomogram
        rss = {}
        for name, shape in shapes.items():
            p = work / f"picks-{name}.csv"
            write_picks(p, shape, args.boxes, args.box, seed=1)
            rss[name] = peak_rss(p, tomos[name], pool, args.box)
        print(f"peak RSS, {args.boxes} boxes (fresh process; before extract -> peak)")
        for name in shapes:
            before, after, mapped, anon = rss[name]
            gib = tomos[name].stat().st_size / 2**30
            print(f"  {gib:.2f} GiB tomogram: {before:6.0f} -> {after:6.0f} MiB (+{after - before:.0f} MiB; "
                  f"of which tomogram pages mapped <= {mapped:.0f}, heap <= {anon:.0f})")
        diff = rss["big"][1] - rss["quarter"][1]
        print(f"  difference 1 GiB vs 0.25 GiB: {diff:+.0f} MiB  (target: within 50 MB)")
    finally:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()


if __name__ == "__main__":
    main()
