"""Re-score a trained late-interaction model (colbert.py's .pt) with other song-score options
(symmetrisation, top fraction). The options are compared on val; test is printed alongside
but only the val-best option counts.

    python colbert_eval.py lin384-crop
"""

from __future__ import annotations

import sys

import torch
from colbert import Projection, li_from_projected, project_split
from common import RESULTS, load, record, save_matrix, score


def load_model(name: str) -> tuple[Projection, object, dict]:
    saved = torch.load(RESULTS / "colbert" / f"{name}.pt", weights_only=False)
    args = saved["args"]
    state = saved["state"]
    d = saved["mu"].shape[0]
    model = Projection(args["proj"], d, args["dim"], None, args["hidden"], dropout=args.get("dropout", 0.0))
    model.load_state_dict(state)
    return model, saved["mu"], args


def main(name: str) -> None:
    model, mu, args = load_model(name)
    rows = args.get("rows", "text")
    mats = {s: project_split(model, [x.select(rows) for x in load(s).songs], mu) for s in ("val", "test")}
    for sym, top in (("mean", 1.0), ("mean", 0.75), ("mean", 0.5), ("min", 1.0), ("shorter", 1.0)):
        results = {}
        for s in ("val", "test"):
            d = li_from_projected(mats[s], sym, top)
            results[s] = score(d, load(s))
            if (sym, top) != ("mean", 1.0):
                save_matrix(f"colbert-{name}-sym-{sym}-top-{top:g}", load(s), d)
        record("colbert_eval", f"{name} sym={sym} top={top:g}", results, model=name, sym=sym, top=top)


if __name__ == "__main__":
    main(sys.argv[1])
