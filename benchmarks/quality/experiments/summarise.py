"""Markdown tables of every recorded result (RESULTS/*.jsonl), for docs/quality-findings.md.

    python summarise.py > /work/runs-quality/results/summary.md
"""

from __future__ import annotations

import json

from common import RESULTS

ORDER = ["baselines", "training_free", "fusion", "colbert", "colbert_eval", "wealy"]


def cell(s: dict | None) -> str:
    if not s:
        return "–"
    return f"{s['map']:.3f} ± {s['map_ci']:.3f}"


def main() -> None:
    for exp in ORDER:
        path = RESULTS / f"{exp}.jsonl"
        if not path.exists():
            continue
        print(f"\n### {exp}\n")
        extra_cols = exp in ("colbert", "wealy")
        head = "| method | val MAP | val MR1 | val ARP | test MAP | test MR1 | test ARP |"
        if extra_cols:
            head += " best epoch | CPU min |"
        if exp == "fusion":
            head += " α |"
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for line in path.read_text().splitlines():
            r = json.loads(line)
            v, t = r.get("val"), r.get("test")
            row = (f"| {r['method']} | {cell(v)} | {v['mr1']:.2f} | {v['arp']:.2f} | {cell(t)} | "
                   + (f"{t['mr1']:.2f} | {t['arp']:.2f} |" if t else "– | – |"))
            if extra_cols:
                row += f" {r.get('best_epoch')} | {r.get('cpu_minutes')} |"
            if exp == "fusion":
                row += f" {r.get('alpha')} |"
            print(row)


if __name__ == "__main__":
    main()
