"""Late-interaction levers measured through wealy itself: the recipe (`configs/late.yaml`, what
`run.py` trains) with one change each, trained on the benchmark's train split (best epoch on
validation) and evaluated on validation and test. Writes the JSON behind the levers table of
docs/quality.md (`docs/results/quality-levers.json`, rendered by scripts/readme_tables.py).

    python benchmarks/quality/levers.py --runs runs/quality/levers --recipe runs/quality/run \\
        --out docs/results/quality-levers.json

Each run directory NAME holds ``train/`` and ``{val,test}/results.json`` (from ``wealy train
--config configs/late.yaml ... <change>`` and ``wealy evaluate --split val|test``); the recipe
row comes from the benchmark run itself (its ``train`` and ``evaluate`` outputs are the same
commands without a change).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CHANGES = {
    "dropout0.1": "--dropout 0.1",
    "dropwin0.3": "--drop-windows 0.3 (30 s windows dropped)",
    "noise0.1": "--noise 0.1 (feature noise)",
    "mask0.3": "--mask-share 0.3 (a contiguous span removed)",
    "wd0.01": "--weight-decay 0.01",
    "crop0.3": "--crop-min 0.3 (random 30–100 % views)",
}


def metrics(path: Path) -> dict:
    m = json.loads(path.read_text())["metrics"]
    return {k: float(m[k]) for k in ("map", "map_ci", "mr1", "mr1_ci", "arp", "arp_ci")}


def best_epoch(train: Path) -> int:
    return int(json.loads((train / "best.config.json").read_text())["epoch"])


def recipe_val(run: Path) -> float:
    """The recipe's validation MAP: ``wealy evaluate --split val`` of its checkpoint (written to
    ``evaluate-val/``), else the best epoch's row of its metrics.csv (validation = evaluation)."""
    import csv

    if (run / "evaluate-val" / "results.json").is_file():
        return metrics(run / "evaluate-val" / "results.json")["map"]
    epoch = best_epoch(run / "train")
    with open(run / "train" / "metrics.csv", newline="") as fh:
        return float(next(r for r in csv.DictReader(fh) if int(r["epoch"]) == epoch)["val_map"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, required=True, help="the run.py run directory")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    recipe = args.recipe
    rows = [{"method": "recipe (configs/late.yaml)", "kind": "model",
             "val_map": recipe_val(recipe), "best_epoch": best_epoch(recipe / "train"),
             **metrics(recipe / "evaluate" / "results.json")}]
    for name, change in CHANGES.items():
        run = args.runs / name
        if not (run / "test" / "results.json").is_file():
            continue
        val = metrics(run / "val" / "results.json")["map"]
        rows.append({"method": f"recipe + {change}", "kind": "lever", "val_map": val,
                     "best_epoch": best_epoch(run / "train"), **metrics(run / "test" / "results.json")})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "split": "test", "ties": "expected"}, indent=2) + "\n")
    print(f"{len(rows)} rows → {args.out}")


if __name__ == "__main__":
    main()
