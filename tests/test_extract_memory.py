"""Memory and start-up of `cryoal extract`, measured in fresh subprocesses (Linux: /proc).

Peak RSS counts the pages of a memory-mapped file that the process has touched, so a
naive memory-mapped extraction grows towards the tomogram's size. These tests show that extract
does not: the same 200 picks cost about the same peak memory from a 4x larger tomogram.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np

REPO = Path(__file__).resolve().parents[1]

RSS_SCRIPT = r"""
import sys
import numpy as np
from cryoal.extract import ExtractOptions, extract
from cryoal.extract import tomograms

tomo, pool, release = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if not release:  # the control: never unmap what was read
    tomograms.TomogramReader.release = lambda self: None
    tomograms.TomogramReader._release_before = lambda self, z: None
depth, height, width = (int(v) for v in sys.argv[4].split(","))
rng = np.random.default_rng(0)
lines = ["tomo,x,y,z"]
for k in range(200):  # the same 200 picks, spread from the first to the last slice
    z = 16 + (depth - 32) * k // 200
    lines.append(f"T,{rng.integers(16, width - 16)},{rng.integers(16, height - 16)},{z}")
open(pool + ".csv", "w").write("\n".join(lines) + "\n")


def peak_rss_mib():
    # VmHWM, the peak resident set of this process's memory map. (ru_maxrss would do, but Linux
    # carries it over from the parent across fork+exec, so a big pytest process would mask it.)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024


before = peak_rss_mib()
extract(pool + ".csv", tomo, pool, ExtractOptions(box=32))
print(peak_rss_mib() - before)
"""


def write_big_tomogram(path: Path, shape_zyx: tuple[int, int, int]) -> None:
    """A real (non-sparse) float32 MRC, written fast: a header, then one random slab repeated."""
    depth, height, width = shape_zyx
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.zeros((2, 2, 2), np.float32))
    with mrcfile.open(path, mode="r+", permissive=True, header_only=True) as mrc:
        mrc.header.nx, mrc.header.ny, mrc.header.nz = width, height, depth
        mrc.header.mx, mrc.header.my, mrc.header.mz = width, height, depth
        mrc.header.cella = (width * 10.0, height * 10.0, depth * 10.0)
    slab = np.random.default_rng(1).normal(size=(8, height, width)).astype(np.float32).tobytes()
    with open(path, "r+b") as fh:
        fh.truncate(1024)
        fh.seek(1024)
        for _ in range(depth // 8):
            fh.write(slab)


def _peak_rss_delta(tmp_path: Path, tomo: Path, shape: tuple[int, int, int], release: bool) -> float:
    script = tmp_path / "rss.py"
    script.write_text(RSS_SCRIPT)
    pool = tmp_path / f"{tomo.stem}-{int(release)}.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [str(tomo), str(pool), "1" if release else "0", ",".join(map(str, shape))]
    out = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_tomogram_size(tmp_path):
    small_shape, big_shape = (80, 512, 512), (320, 512, 512)  # 80 MiB and 320 MiB
    small, big = tmp_path / "small.mrc", tmp_path / "big.mrc"
    write_big_tomogram(small, small_shape)
    write_big_tomogram(big, big_shape)
    with mrcfile.mmap(big, mode="r") as mrc:  # the fast writer made a valid, complete MRC
        assert mrc.data.shape == big_shape and np.std(mrc.data[-1, :8, :8]) > 0.5
    small_mb = _peak_rss_delta(tmp_path, small, small_shape, release=True)
    big_mb = _peak_rss_delta(tmp_path, big, big_shape, release=True)
    # The control shows that the measurement sees mapped pages: without unmapping, the 320 MiB
    # tomogram's pages pile up.
    control_mb = _peak_rss_delta(tmp_path, big, big_shape, release=False)
    assert control_mb - big_mb > 150, (small_mb, big_mb, control_mb)
    assert big_mb - small_mb < 30, (small_mb, big_mb, control_mb)
    assert big_mb < 320 / 2, (small_mb, big_mb, control_mb)


def test_extract_command_does_not_import_torch(tmp_path):
    tomo = tmp_path / "TS_01.mrc"
    with mrcfile.new(tomo) as mrc:
        mrc.set_data(np.random.default_rng(0).normal(size=(20, 24, 28)).astype(np.float32))
        mrc.voxel_size = 10.0
    (tmp_path / "picks.csv").write_text("tomo,x,y,z\nTS_01,14,12,10\n")
    code = (
        "import sys\n"
        "from cryoal.cli import app\n"
        "try:\n"
        f"    app(['extract', {str(tmp_path / 'picks.csv')!r}, '-t', {str(tmp_path)!r}, '-o', "
        f"{str(tmp_path / 'pool.h5')!r}, '--box', '8', '--bin', '2'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "extracted 1 particle" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "False"
