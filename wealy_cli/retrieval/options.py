"""Options of the retrieval stage: evaluating a model on a split, its distance matrix, and the
transcription baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, model_validator

from wealy_cli.clews.options import ClewsDistanceOptions
from wealy_cli.core.launch import DeviceOptions, NodeOptions
from wealy_cli.core.settings import CommaList, CreatableDir, DataSettings, ExistingDir, ExistingPath, Options, option
from wealy_cli.ranking.options import EmbedOptions, TieOptions

BASELINES = ("sbert", "tfidf-cosine", "tfidf-lucene", "bm25", "ideal", "random", "modified-ideal",
             "modified-random")
_ALIASES = {name.replace("-", "_"): name for name in BASELINES}


class ModelSource(Options):
    """A trained WEALY model: your own run or a published one."""

    checkpoint: ExistingPath | None = option(
        None, "A trained model: run directory (uses best), .safetensors file or checkpoint name.")
    model: str | None = option(None, "A published model (see 'wealy models list') instead of --checkpoint; it "
                               "also sets --dataset and its evaluation settings.")


class ModelOnSplit(DataSettings, ModelSource, EmbedOptions):
    """What `evaluate` and `distances` share: a model, the split's feature store and its chunking."""

    store: ExistingDir = option(help="Feature store of the split (from 'wealy extract').")
    cache: CreatableDir | None = option(None, "Folder of chunk-embedding caches (reused across runs).",
                                        shown_default="next to the output")


class EvaluateRun(ModelOnSplit, DeviceOptions, NodeOptions, TieOptions):
    """``wealy evaluate``: a model ranked all-against-all on a split."""

    output: CreatableDir | None = option(None, "Run directory for results.json, per_query.csv and settings.yaml.",
                                         short="-o", shown_default="runs/evaluate/MODEL-DATASET-SPLIT")

    def run_dir(self) -> Path:
        if self.output is not None:
            return self.output
        name = Path(self.checkpoint).name if self.checkpoint else str(self.model).rsplit("/", 1)[-1]
        return Path("runs") / "evaluate" / f"{name}-{self.dataset}-{self.split}"


class DistancesRun(ModelOnSplit, ClewsDistanceOptions, TieOptions, DeviceOptions, NodeOptions):
    """``wealy distances``: the all-against-all distance matrix of a split, written to a file."""

    output: Path = option(help="Matrix file: .npz, .h5 or .pkl.", short="-o")
    format: Literal["npz", "hdf5", "pickle"] | None = option(
        None, "npz or hdf5 (safe), or pickle (the original tools' layout).", shown_default="from the suffix")
    features: Literal["wealy", "clews"] = option(
        "wealy", "wealy: embed the store with a trained model; clews: compare stored CLEWS shingle embeddings "
        "(from 'extract clews').")

    @model_validator(mode="after")
    def _model_or_clews(self) -> DistancesRun:
        if self.features == "clews" and (self.checkpoint is not None or self.model is not None):
            raise ValueError("--features clews compares stored CLEWS embeddings; --checkpoint/--model do not apply")
        return self


def _baseline_names(names: list[str]) -> list[str]:
    known = [_ALIASES.get(n, n) for n in names]
    unknown = [n for n in known if n not in BASELINES]
    if unknown or not known:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(BASELINES)}")
    return list(dict.fromkeys(known))


BaselineNames = Annotated[CommaList, AfterValidator(_baseline_names)]


class BaselineOptions(TieOptions):
    """The transcription baselines' own knobs (TF-IDF and validity rules are the paper's, fixed)."""

    seed: int = option(42, "Seed of the random baselines.")
    lucene_terms: int = option(12, "tfidf-lucene (\"more like this\"): terms kept per query.", ge=1)
    bm25_k1: float = option(1.5, "BM25 k1.", ge=0.0)
    bm25_b: float = option(0.75, "BM25 b.", ge=0.0, le=1.0)
    sbert_model: str | None = option(None, "sentence-transformers folder or hub name for sbert.",
                                     shown_default="packaged all-MiniLM-L6-v2")
    sbert_batch_size: int = option(64, "Texts per SBERT batch.", ge=1)


class BaselinesRun(DataSettings, BaselineOptions):
    """``wealy baselines``: every baseline on a split, with its metrics (and matrices)."""

    store: ExistingDir = option(help="Whisper feature store whose items carry the transcription.")
    output: CreatableDir = option(help="Output folder.", short="-o")
    compute: BaselineNames = option(list(BASELINES), "Comma-separated baselines: " + ", ".join(BASELINES) + ".",
                                    shown_default="all")
    save_distances: bool = option(False, "Also write each baseline's matrix (for 'wealy fuse').")
    distance_format: Literal["npz", "hdf5", "pickle"] = option("npz", "Format of the saved matrices.")
