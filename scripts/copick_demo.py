"""Build a local copick project from `cryoal simulate --tomograms` output, with copick's own API.

    python scripts/copick_demo.py SIM_DIR PROJECT_DIR

Writes PROJECT_DIR/copick.json (an overlay root in PROJECT_DIR/overlay; one pickable object per
simulated class, plus `particle` for a picker's unclassified picks), one run per tomogram (the MRC
stored as an OME-Zarr pyramid at its voxel spacing, type `wbp`), and picks:

* user `expert`, session `1`: the seed-labelled particles (SIM_DIR/seed_labels.csv), one pick set
  per class: the annotations a lab already has;
* user `picker`, session `1`, object `particle`: every other pick (what a particle picker found);
* PROJECT_DIR/truth.csv: the true class (copick object name) of every pick under the particle id
  `cryoal extract --copick` gives it, for `scripts/fill_labels.py` to play the expert.

No network: everything comes from SIM_DIR.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import mrcfile
import numpy as np


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _star_particles(path: Path) -> list[dict[str, str]]:
    from cryoal.io.star import particles_block, read_star

    table = particles_block(read_star(path), str(path))
    return [dict(zip(table, values, strict=True)) for values in zip(*table.values(), strict=True)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sim", type=Path)
    ap.add_argument("project", type=Path)
    args = ap.parse_args()

    import copick
    from copick.util.escape import sanitize_name

    # copick names hold no '_': ring_c6 becomes the object ring-c6
    truth = {r["particle_id"]: sanitize_name(r["label"], suppress_warnings=True)
             for r in _rows(args.sim / "truth.csv")}
    seeds = {r["particle_id"] for r in _rows(args.sim / "seed_labels.csv")}
    classes = sorted(set(truth.values()))
    objects = [{"name": name, "is_particle": True, "label": k + 1, "radius": 80.0}
               for k, name in enumerate(classes)]
    objects.append({"name": "particle", "is_particle": True, "label": len(classes) + 1, "radius": 80.0})
    overlay = (args.project / "overlay").resolve()
    overlay.mkdir(parents=True, exist_ok=True)
    config = args.project / "copick.json"
    config.write_text(json.dumps({
        "config_type": "filesystem", "name": "cryoal demo", "description": "from cryoal simulate --tomograms",
        "version": "0.2.0", "pickable_objects": objects, "overlay_root": f"local://{overlay}",
        "overlay_fs_args": {"auto_mkdir": True},
    }, indent=2))
    root = copick.from_file(str(config))

    particles = _star_particles(args.sim / "tomograms.star")
    truth_rows = []
    for tomo in sorted({p["rlnTomoName"] for p in particles}):
        with mrcfile.open(args.sim / "tomograms" / f"{tomo}.mrc", permissive=True) as mrc:
            data = np.asarray(mrc.data, dtype=np.float32)
            pixel = float(mrc.voxel_size.x)
        run = root.new_run(tomo)
        run.new_voxel_spacing(pixel).new_tomogram("wbp").from_numpy(data)
        centre = np.asarray(data.shape[::-1], dtype=float) / 2 * pixel  # RELION 5's centre, in Å
        sets: dict[tuple[str, str], list] = {}
        for p in particles:
            if p["rlnTomoName"] != tomo:
                continue
            xyz = np.array([float(p[f"rlnCenteredCoordinate{a}Angst"]) for a in "XYZ"]) + centre
            pid = p["rlnTomoParticleName"]
            key = ("expert", truth[pid]) if pid in seeds else ("picker", "particle")
            sets.setdefault(key, []).append((xyz, truth[pid]))
        for (user, obj), points in sorted(sets.items()):
            picks = run.new_picks(obj, session_id="1", user_id=user)
            picks.from_numpy(np.array([xyz for xyz, _ in points]))
            for k, (_, label) in enumerate(points):
                truth_rows.append((f"{tomo}_{obj}_{user}_1_{k}", label))  # extract --copick's particle ids
    with open(args.project / "truth.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["particle_id", "label"])
        writer.writerows(truth_rows)
    n_seed = len(seeds)
    print(f"copick project {config}: {len(root.runs)} runs, {len(truth_rows)} picks "
          f"({n_seed} by expert, labelled), objects {', '.join(o['name'] for o in objects)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
