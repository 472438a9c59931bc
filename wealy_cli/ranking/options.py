"""Options of the shared ranking maths: how songs are cut into chunks and scored, and how
distance matrices are fused."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

from wealy_cli.core.settings import CreatableDir, ExistingFile, Options, argument, option

PAPER_CHUNK = 1500  # rows per chunk in the paper, for training crops and evaluation alike
MAX_ALPHAS = 10_000
_NUMBER = r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*"


class ChunkOptions(Options):
    """A song → overlapping chunks of feature rows → one embedding each → song distance."""

    chunk: int = option(PAPER_CHUNK, "Feature rows per chunk (a shorter song is one masked chunk).", ge=1)
    overlap: float = option(0.9, "Overlap of consecutive chunks; stride = chunk × (1 − overlap).", ge=0.0, lt=1.0)
    topk: int = option(1, "Song distance: mean of the k smallest chunk-pair cosine distances.", ge=1)


class EmbedOptions(ChunkOptions):
    """Chunking plus how many chunks the model embeds per call."""

    batch_size: int = option(32, "Chunks per model call.", ge=1)


class TieOptions(Options):
    """How candidates at exactly the same distance are ranked by the metrics."""

    ties: Literal["expected", "pessimistic"] = option(
        "expected", "Tied distances: expected (the average over every order of the tied candidates: "
        "order-free, a constant matrix scores chance) or pessimistic (relevant after non-relevant: a lower "
        "bound).")


def parse_alphas(value: Any) -> list[float]:
    """``start:stop:step`` (stop included within float tolerance), a comma list ``0,0.5,1`` or a
    list of numbers (a YAML list) → the distinct weights in order."""
    if isinstance(value, (list, tuple)):
        alphas = [float(v) for v in value]
    else:
        text = str(value).strip()
        if re.fullmatch(rf"{_NUMBER}:{_NUMBER}:{_NUMBER}", text):
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0:
                raise ValueError(f"{text!r}: the step must be > 0")
            if stop < start:
                raise ValueError(f"{text!r}: stop {stop:g} is below start {start:g}")
            count = math.floor((stop - start) / step + 1e-9) + 1
            if count > MAX_ALPHAS:
                raise ValueError(f"{text!r}: {count} values (at most {MAX_ALPHAS})")
            alphas = [round(start + i * step, 12) for i in range(count)]
        elif re.fullmatch(rf"{_NUMBER}(?:,{_NUMBER})*", text):
            alphas = [float(v) for v in text.split(",")]
        else:
            raise ValueError(f"{text!r}: expected start:stop:step (e.g. 0:2:0.1) or a comma list of numbers "
                             "(e.g. 0,0.5,1)")
    if not alphas or any(not math.isfinite(a) or a < 0 for a in alphas):
        raise ValueError("weights must be finite numbers ≥ 0")
    return list(dict.fromkeys(alphas))


Alphas = Annotated[list[float], BeforeValidator(parse_alphas)]


class FuseOptions(TieOptions):
    """Late fusion m1 + α·m2 (+ one weight per further input) over a grid of weights."""

    alphas: Alphas = option("0:2:0.1", "Weights of each extra input: start:stop:step (stop included) or a "
                            "list 0,0.5,1.", shown_default="0:2:0.1")
    normalize: Literal["none", "zscore", "rank"] = option(
        "none", "Per-matrix normalisation before combining.")
    save_fused: bool = option(False, "Also write the fused matrix of the best weights (fused_best.npz).")


class FuseRun(FuseOptions):
    """``wealy fuse``: distance-matrix files in, a metrics table per weight out."""

    inputs: list[ExistingFile] = argument(help="Two or more distance-matrix files (.npz, .h5, or .pkl in the "
                                          "original tools' layout).", min_length=2)
    output: CreatableDir | None = option(None, "Output folder.", short="-o", shown_default="runs/fuse/STEM+STEM")

    def output_dir(self) -> Path:
        if self.output is not None:
            return self.output
        return Path("runs") / "fuse" / "+".join(p.stem for p in self.inputs)
