"""Results tables in README.md (and docs/quality.md), generated from the JSON files that measured them.

Each table sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` and is rendered
from ``docs/results/NAME.json``: the ``comparison.json`` that `wealy demo` (and the quality
benchmark, which runs it on its own collection) writes, kept in the repository. No number in
these tables is typed by hand.

    python scripts/readme_tables.py --save demo runs/demo/comparison.json   # keep a new result
    python scripts/readme_tables.py                                         # rewrite README tables
    python scripts/readme_tables.py --check                                 # exit 1 if stale (tests)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = (README, REPO / "docs" / "quality.md")  # every page with results tables
RESULTS = REPO / "docs" / "results"
_BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def render(name: str) -> str:
    """The Markdown table of ``docs/results/<name>.json``."""
    data = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    ties = data.get("ties", "expected")
    extra = "val_map" in data["rows"][0]  # lever tables: the validation MAP that chose, and the best epoch
    head = f"| method ({data.get('split', 'test')} split) | kind | MAP (95 % interval) | MR1 | ARP (%) |"
    rule = "|---|---|---|---|---|" + ("---|---|" if extra else "")
    lines = [head + (" val MAP | best epoch |" if extra else ""), rule]
    for row in data["rows"]:
        interval = f" ± {row['map_ci']:.3f}" if "map_ci" in row else ""
        line = f"| {row['method']} | {row['kind']} | {row['map']:.3f}{interval} | {row['mr1']:.2f} | {row['arp']:.2f} |"
        lines.append(line + (f" {row['val_map']:.3f} | {row['best_epoch']} |" if extra else ""))
    training = data.get("training")
    if training:
        lines += ["", f"Training: best epoch {training['best_epoch']} of {training['epochs']} (validation MAP "
                  f"{training['val_map_untrained']:.3f} untrained, {training['val_map_best']:.3f} at the best epoch; "
                  "at equal validation MAP the checkpoint that separates versions from other songs more wins)."]
    lines += ["", f"Ties counted as {ties} values over random tie orders; source: `docs/results/{name}.json`."]
    return "\n".join(lines) + "\n"


def rewrite(text: str) -> str:
    return _BLOCK.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that README.md is current")
    parser.add_argument("--save", nargs=2, metavar=("NAME", "JSON"), help="keep JSON as docs/results/NAME.json")
    args = parser.parse_args()
    if args.save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.save[1], RESULTS / f"{args.save[0]}.json")
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        new = rewrite(text)
        if args.check:
            if new != text:
                sys.exit(f"{page.name}: results tables are out of date: run python scripts/readme_tables.py")
            continue
        page.write_text(new, encoding="utf-8")
        print(f"rewrote {len(_BLOCK.findall(text))} table(s) in {page}")


if __name__ == "__main__":
    main()
