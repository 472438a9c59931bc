"""Options of the retrieval stage: evaluating a model on a split, its distance matrix, the
transcription baselines, and catalogue search (index and search)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, model_validator

from wealy_cli.clews.options import ClewsDistanceOptions, Redux
from wealy_cli.core.launch import DeviceOptions, NodeOptions
from wealy_cli.core.settings import (
    CommaList,
    CreatableDir,
    DatasetName,
    DataSettings,
    ExistingDir,
    ExistingFile,
    ExistingPath,
    Options,
    argument,
    option,
)
from wealy_cli.ranking.options import ChunkOptions, EmbedOptions, TieOptions

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


# ---------------------------------------------------------------- catalogue search

INDEX_KINDS = ("flat", "ivf-pq", "hnsw")


class IndexKindOptions(Options):
    """The FAISS index of the chunk embeddings. An approximate kind only proposes candidate songs;
    their distances are always computed exactly."""

    kind: Literal["flat", "ivf-pq", "hnsw"] = option(
        "flat", "flat: exact inner product; ivf-pq: inverted lists of product-quantised chunks, for large "
        "catalogues (64 bytes a chunk); hnsw: a graph over float32 chunks.")
    nlist: int = option(0, "ivf-pq: inverted lists; 0 = about 4·√chunks.", ge=0)
    m: int = option(64, "ivf-pq: sub-quantizers, bytes per chunk at 8 bits; must divide the embedding size.", ge=1)
    nbits: int = option(8, "ivf-pq: bits per sub-quantizer code.", ge=1, le=16)
    opq: bool = option(True, "ivf-pq: learn a rotation (OPQ) before quantising: better recall at the same "
                       "--nprobe.")
    nprobe: int = option(128, "ivf-pq: lists visited per query chunk (the default of 'wealy search'; 128 reaches "
                         "recall@10 0.955 at a million songs, 64 0.926).", ge=1)
    hnsw_m: int = option(32, "hnsw: neighbours per graph node.", ge=2)
    ef_construction: int = option(80, "hnsw: search breadth while adding chunks.", ge=1)
    ef_search: int = option(128, "hnsw: search breadth while searching (the default of 'wealy search').", ge=1)
    train_size: int = option(0, "ivf-pq: chunks sampled to train the codebooks; 0 = 40 per list, at least 65,536.",
                             ge=0)


class FaissThreads(Options):
    threads: int = option(0, "FAISS (OpenMP) threads; 0 = one per core.", ge=0)


class CatalogueSongs(Options):
    """Which songs go into an index, and with what labels and metadata."""

    store: ExistingDir = option(help="Feature store of the songs (from 'wealy extract whisper').")
    dataset: DatasetName | None = option(
        None, "Index the songs of this dataset's split found in the store, with its labels and metadata: shs, "
        "lyric-covers, discogs-vi or csv (a catalogue CSV needs only a 'path' column).",
        shown_default="every song of the store")
    split: Literal["train", "val", "test", "all"] = option("all", "With --dataset: train, val, test or all.")
    metadata: ExistingPath | None = option(
        None, "Split files (folder) or the collection CSV for --dataset csv.",
        shown_default="bundled split files for shs and lyric-covers")
    audio_dir: ExistingDir | None = option(None, "Folder with the audio files (relative CSV paths: the CSV's folder).")
    batch_size: int = option(32, "Chunks per model call.", ge=1)
    cache: CreatableDir | None = option(None, "Folder of chunk-embedding caches (shared with evaluate and "
                                        "distances; kept).", shown_default="INDEX/.cache, removed once built")
    clews_store: ExistingDir | None = option(
        None, "CLEWS store of the same songs (from 'wealy extract clews'): the index keeps their audio embeddings "
        "so that 'wealy search --alpha' fuses lyrics and audio.")
    clews_redux: Redux = option("bpwr-5", "CLEWS song distance from shingle-pair distances: bpwr-K, min or mean.")
    fusion_sample: int = option(1000, "Songs whose all-against-all distances give the fusion normalisation "
                                "statistics (all of them when the index has fewer).", ge=2)


class IndexBuildRun(ModelSource, ChunkOptions, CatalogueSongs, IndexKindOptions, FaissThreads, DeviceOptions,
                    NodeOptions):
    """``wealy index build``: a feature store's songs → chunk embeddings → a search index."""

    output: CreatableDir = option(help="Index directory to create (or to resume an interrupted build in).",
                                  short="-o")
    model: str | None = option(None, "A published model (see 'wealy models list') instead of --checkpoint; it "
                               "also sets --chunk and --topk unless given.")


class IndexAddRun(CatalogueSongs, FaissThreads, DeviceOptions, NodeOptions):
    """``wealy index add``: more songs into an index, with its checkpoint and chunking, no retraining."""

    index: ExistingDir = argument(help="Index directory (from 'wealy index build').")
    checkpoint: ExistingPath | None = option(None, "The index's model, if it moved (checked against the weights "
                                             "digest the index records).", shown_default="the index's")
    model: str | None = option(None, "The index's published model, instead of --checkpoint.")


class SearchOptions(FaissThreads):
    """How a query is ranked against the index."""

    top: int = option(10, "Results per query.", ge=1)
    probe: int = option(100, "Nearest indexed chunks fetched per query chunk; their songs are the candidates "
                        "(raised for an exact top with the flat index and topk 1).", ge=1)
    topk: int | None = option(None, "Song distance: mean of the k smallest chunk-pair cosine distances.", ge=1,
                              shown_default="the index's")
    nprobe: int | None = option(None, "ivf-pq: lists visited per query chunk.", ge=1, shown_default="the index's")
    ef_search: int | None = option(None, "hnsw: search breadth.", ge=1, shown_default="the index's")
    alpha: float = option(0.0, "Weight of the CLEWS (audio) distance: fused = lyrics + alpha · audio, both "
                          "normalised by --normalize (needs an index built with --clews-store).", ge=0.0)
    normalize: Literal["none", "zscore", "rank"] = option(
        "none", "Normalisation of each distance before fusing, as 'wealy fuse' does, with the statistics of the "
        "index's all-against-all matrix.")


class SearchRun(SearchOptions):
    """``wealy search``: the indexed songs nearest to each query."""

    index: ExistingDir = argument(help="Index directory (from 'wealy index build').")
    query: list[ExistingFile] = argument([], help="Audio files to search with (extracted with the index's "
                                         "Whisper settings, embedded with its checkpoint).")
    key: str | None = option(None, "Search with a song already in the index, by key (it comes back too, at ~0).")
    queries: ExistingFile | None = option(None, "CSV with a column 'path' of audio files to search with.")
    checkpoint: ExistingPath | None = option(None, "The index's model, if it moved (checked against the weights "
                                             "digest the index records).", shown_default="the index's")
    clews_checkpoint: ExistingFile | None = option(None, "CLEWS checkpoint that embeds audio queries for --alpha "
                                                   "(the one the index's CLEWS store was made with).")
    format: Literal["table", "json", "csv"] = option("table", "table (on screen), or json / csv on stdout.")

    @model_validator(mode="after")
    def _some_query(self) -> SearchRun:
        given = bool(self.query) + (self.key is not None) + (self.queries is not None)
        if given != 1:
            raise ValueError("give audio files (QUERY...), --key KEY or --queries FILE.csv: exactly one of them")
        return self
