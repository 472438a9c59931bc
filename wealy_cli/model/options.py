"""Options of the model stage: the WEALY architecture, its loss and its training recipe.

Defaults are the paper's configuration (DESIGN §3–5); ``configs/paper.yaml`` spells them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator

from wealy_cli.core.launch import DeviceOptions, NodeOptions
from wealy_cli.core.settings import CreatableDir, DataSettings, ExistingDir, Options, SplitName, option
from wealy_cli.ranking.options import PAPER_CHUNK, ChunkOptions, TieOptions


class ArchitectureOptions(Options):
    """Sizes of the WEALY network (input_channels comes from the feature store)."""

    arch: Literal["transformer", "avgmlp", "late"] = option(
        "transformer", "transformer (the paper's: one pooled vector per chunk), avgmlp (mean of the rows, then an "
        "MLP), or late (late interaction: every sung token's row is projected and songs are compared row by row; "
        "see configs/late.yaml).")
    hidden_dim: int = option(768, "Model width.", ge=1)
    zdim: int = option(512, "Embedding size (late: per row, at most the input width).", ge=1)
    num_transformer_blocks: int = option(4, "Transformer blocks.", ge=0, flag="--layers")
    num_heads: int = option(12, "Attention heads (they must divide --hidden-dim).", ge=1, flag="--heads")
    ff_dim: int = option(1024, "Feed-forward width.", ge=1)
    dropout: float = option(0.1, "Dropout.", ge=0.0, lt=1.0)
    pool_type: Literal["gem", "mean"] = option("gem", "Pooling over time: gem (learned generalised mean) or mean.",
                                               flag="--pool")
    positional_encoding: bool = option(False, "Add sinusoidal positions to the rows.", flag="--positions")
    rows: Literal["auto", "all", "text"] = option(
        "auto", "Feature rows a song is made of: all, or text (the rows of sung tokens: prompt, special and "
        "timestamp rows dropped); auto = text for --arch late, all otherwise.", flag="--rows")
    late_fraction: float = option(
        0.5, "--arch late: a song's score averages the best matches of this fraction of its rows (1 = all).",
        gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ArchitectureOptions:
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"--hidden-dim {self.hidden_dim} must be divisible by --heads {self.num_heads}")
        return self


class LossOptions(Options):
    """The contrastive loss (DESIGN §4)."""

    loss: Literal["ntxent", "triplet", "clews"] = option("ntxent", "ntxent (the paper's), triplet or clews.")
    temperature: float = option(0.1, "NT-Xent temperature.", gt=0.0)
    margin: float = option(0.1, "Triplet margin (cosine distance).", ge=0.0)
    clews_gamma: float = option(8.0, "CLEWS loss: γ of the uniformity term.", gt=0.0)
    clews_bias: float = option(1.0, "CLEWS loss: b of the uniformity term.")
    clews_weight: float = option(0.5, "CLEWS loss: weight of the uniformity term.", ge=0.0)


class ViewOptions(Options):
    """How training views of an item differ between epochs (all seeded, all off by default; their
    effect on the quality benchmark: docs/quality.md)."""

    crop_min: float = option(1.0, "Each training view is a random sub-sequence of this share to all of an item's "
                             "rows (then at most --chunk); 1 = whole items (off).", gt=0.0, le=1.0)
    mask_share: float = option(0.0, "Each view loses one contiguous span of a random share up to this of its rows; "
                               "0 = off.", ge=0.0, lt=1.0)
    drop_windows: float = option(0.0, "Each 30 s Whisper window of a view is dropped with this probability (one "
                                 "is always kept); 0 = off.", ge=0.0, lt=1.0)
    noise: float = option(0.0, "Gaussian noise of this many times each feature dimension's spread in the view; "
                          "0 = off.", ge=0.0)

    @classmethod
    def of(cls, opts: Options) -> ViewOptions:
        return cls.model_validate(opts.model_dump(include=set(cls.model_fields)))


class TrainOptions(ArchitectureOptions, LossOptions, ViewOptions, TieOptions):
    """The training recipe (DESIGN §5)."""

    per_clique: int = option(2, "Versions of a clique per item (the anchor and its positives).", ge=2)
    batch_size: int = option(64, "Items per device per step.", ge=1)
    chunk: int = option(PAPER_CHUNK, "Rows per random training crop (validation: the first rows).", ge=1)
    loader_workers: int = option(2, "DataLoader processes reading crops.", ge=0)
    gather: bool = option(True, "Loss over the global batch of all devices.")
    lr: float = option(1e-4, "Peak learning rate (AdamW).", gt=0.0)
    weight_decay: float = option(1e-3, "AdamW weight decay.", ge=0.0)
    warmup_epochs: int = option(50, "Linear warm-up epochs, then cosine decay.", ge=0)
    min_lr: float = option(1e-6, "Stop once the learning rate falls below this (after warm-up).", ge=0.0)
    grad_clip: float = option(1.0, "Largest gradient norm; 0 = no clipping.", ge=0.0)
    max_epochs: int = option(1000, "Epochs at most.", ge=1)
    patience: int = option(20, "Stop after this many epochs (after warm-up) without a better validation MAP; "
                           "0 = never.", ge=0)
    time_limit: float = option(0.0, "Stop after this many minutes (an unfinished epoch is discarded); 0 = none.",
                               ge=0.0)
    limit_batches: int = option(0, "Steps per epoch at most; 0 = all.", ge=0)
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = option(
        "auto", "auto = bf16-mixed on GPU, 32 on CPU.")
    seed: int = option(42, "Random seed (order, crops, initialisation).")
    val_mode: Literal["evaluate", "first"] = option(
        "evaluate", "Validation scoring of a pooled model (late interaction always scores every sung row): evaluate "
        "(every validation version cut into --chunk-row chunks overlapping by --val-overlap, song distance = mean of "
        "the --val-topk smallest chunk distances, as 'wealy evaluate') or first (each version's first --chunk rows "
        "only, as the original code).")
    val_overlap: float = ChunkOptions.model_fields["overlap"]
    val_topk: int = ChunkOptions.model_fields["topk"]


class TrainRun(DataSettings, TrainOptions, DeviceOptions, NodeOptions):
    """``wealy train``: the recipe, where the data is and where the run goes."""

    store: ExistingDir = option(help="Feature store made by 'wealy extract'.")
    split: SplitName = option("train", "Training split.")
    val_split: SplitName = option("val", "Validation split (picks the best checkpoint).")
    output: CreatableDir | None = option(None, "Run directory.", short="-o", shown_default="runs/train/NAME")
    name: str = option("wealy", "Run name for the default --output.")
    resume: bool = option(False, "Continue the run in --output from its state.pt.")

    def run_dir(self) -> Path:
        return self.output if self.output is not None else Path("runs") / "train" / self.name
