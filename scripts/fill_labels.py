"""Stand-in for the expert in the demo: fill a CSV's `label` column from a truth table.

    python scripts/fill_labels.py to_label.csv truth.csv -o labelled.csv
    python scripts/fill_labels.py --score predictions.csv truth.csv   # accuracy of predictions
"""

from __future__ import annotations

import argparse
import csv
import sys


def _read(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table")
    ap.add_argument("truth")
    ap.add_argument("-o", "--output")
    ap.add_argument("--score", action="store_true", help="print the accuracy of predicted_label")
    args = ap.parse_args()
    truth = {r["particle_id"]: r["label"] for r in _read(args.truth)}
    rows = _read(args.table)
    if args.score:
        hits = sum(truth.get(r["particle_id"]) == r["predicted_label"] for r in rows)
        print(f"accuracy against truth: {hits}/{len(rows)} = {hits / max(len(rows), 1):.3f}")
        return 0
    for r in rows:
        r["label"] = truth[r["particle_id"]]
    with open(args.output, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"filled {len(rows)} labels -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
