"""``wealy train``: train a WEALY model on a feature store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from wealy_cli.core import ui
from wealy_cli.core.settings import CreatableDir, DataSettings, ExistingDir, SplitName, load_settings, write_resolved

if TYPE_CHECKING:  # the library is imported when the command runs, keeping --help fast
    from wealy_cli.model.training import TrainOptions


class TrainSettings(DataSettings):
    section = "train"
    store: ExistingDir
    output: CreatableDir | None = None
    name: str = "wealy"
    val_split: SplitName = "val"
    per_clique: int = 2
    batch_size: int = 64
    chunk: int = 1500
    workers: int = 2
    arch: Literal["transformer", "avgmlp"] = "transformer"
    hidden_dim: int = 768
    zdim: int = 512
    num_transformer_blocks: int = 4
    num_heads: int = 12
    ff_dim: int = 1024
    dropout: float = 0.1
    pool_type: Literal["gem", "mean"] = "gem"
    positional_encoding: bool = False
    loss: Literal["ntxent", "triplet", "clews"] = "ntxent"
    temperature: float = 0.1
    margin: float = 0.1
    gather: bool = True
    lr: float = 1e-4
    weight_decay: float = 1e-3
    warmup_epochs: int = 50
    min_lr: float = 1e-6
    grad_clip: float = 1.0
    max_epochs: int = 1000
    patience: int = 0
    time_limit: float = 0.0
    limit_batches: int = 0
    gpus: int = 1
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"
    seed: int = 42
    resume: bool = False

    def run_dir(self) -> Path:
        return self.output if self.output is not None else Path("runs") / "train" / self.name


def options_from(settings: TrainSettings, input_channels: int) -> TrainOptions:
    from wealy_cli.model.losses import LossConfig
    from wealy_cli.model.network import ModelConfig
    from wealy_cli.model.training import TrainOptions

    model = ModelConfig(input_channels=input_channels, hidden_dim=settings.hidden_dim, zdim=settings.zdim,
                        num_transformer_blocks=settings.num_transformer_blocks, num_heads=settings.num_heads,
                        ff_dim=settings.ff_dim, dropout=settings.dropout, pool_type=settings.pool_type,
                        positional_encoding=settings.positional_encoding, arch=settings.arch)
    loss = LossConfig(type=settings.loss, temperature=settings.temperature, margin=settings.margin)
    return TrainOptions(
        output=settings.run_dir(), model=model, loss=loss, per_clique=settings.per_clique,
        batch_size=settings.batch_size, chunk=settings.chunk, max_epochs=settings.max_epochs, lr=settings.lr,
        weight_decay=settings.weight_decay, warmup_epochs=settings.warmup_epochs, min_lr=settings.min_lr,
        grad_clip=settings.grad_clip, gather=settings.gather, devices=settings.gpus,
        accelerator=settings.accelerator, precision=settings.precision, workers=settings.workers,
        seed=settings.seed, patience=settings.patience, time_limit=settings.time_limit,
        limit_batches=settings.limit_batches, resume=settings.resume,
    )


def train(
    store: Path = typer.Option(None, "--store", help="Feature store made by 'wealy extract'. [required]"),
    dataset: str = typer.Option(None, "--dataset", help="shs | lyric-covers | discogs-vi | csv. [default: shs]"),
    metadata: Path = typer.Option(None, "--metadata", help="Split files (a CSV with clique,version,path,split for "
                                  "'csv'). [default: bundled split files]"),
    split: str = typer.Option(None, "--split", help="Training split. [default: train]"),
    val_split: str = typer.Option(None, "--val-split", help="Validation split. [default: val]"),
    output: Path = typer.Option(None, "--output", "-o", help="Run directory. [default: runs/train/<name>]"),
    name: str = typer.Option(None, "--name", help="Run name for the default --output. [default: wealy]"),
    per_clique: int = typer.Option(None, "--per-clique", help="Versions of a clique per item. [default: 2]"),
    batch_size: int = typer.Option(None, "--batch-size", help="Items per device per step. [default: 64]"),
    chunk: int = typer.Option(None, "--chunk", help="Rows per random crop (validation: first rows). [default: 1500]"),
    workers: int = typer.Option(None, "--workers", help="DataLoader worker processes. [default: 2]"),
    arch: str = typer.Option(None, "--arch", help="transformer | avgmlp. [default: transformer]"),
    hidden_dim: int = typer.Option(None, "--hidden-dim", help="Model width. [default: 768]"),
    zdim: int = typer.Option(None, "--zdim", help="Embedding size. [default: 512]"),
    num_transformer_blocks: int = typer.Option(None, "--layers", help="Transformer blocks. [default: 4]"),
    num_heads: int = typer.Option(None, "--heads", help="Attention heads. [default: 12]"),
    ff_dim: int = typer.Option(None, "--ff-dim", help="Feed-forward width. [default: 1024]"),
    dropout: float = typer.Option(None, "--dropout", help="Dropout. [default: 0.1]"),
    pool_type: str = typer.Option(None, "--pool", help="gem | mean. [default: gem]"),
    positional_encoding: bool = typer.Option(None, "--positions/--no-positions",
                                             help="Sinusoidal positions. [default: no-positions]"),
    loss: str = typer.Option(None, "--loss", help="ntxent | triplet | clews. [default: ntxent]"),
    temperature: float = typer.Option(None, "--temperature", help="NT-Xent temperature. [default: 0.1]"),
    margin: float = typer.Option(None, "--margin", help="Triplet margin (cosine distance). [default: 0.1]"),
    gather: bool = typer.Option(None, "--gather/--no-gather",
                                help="Loss over the global batch of all devices. [default: gather]"),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate (AdamW). [default: 1e-4]"),
    weight_decay: float = typer.Option(None, "--weight-decay", help="AdamW weight decay. [default: 1e-3]"),
    warmup_epochs: int = typer.Option(None, "--warmup-epochs", help="Linear warm-up epochs, then cosine. [default: 50]"),
    min_lr: float = typer.Option(None, "--min-lr", help="Stop when the lr falls below this. [default: 1e-6]"),
    grad_clip: float = typer.Option(None, "--grad-clip", help="Max gradient norm, 0 = off. [default: 1.0]"),
    max_epochs: int = typer.Option(None, "--max-epochs", help="Epochs at most. [default: 1000]"),
    patience: int = typer.Option(None, "--patience", help="Stop after this many epochs without a better "
                                 "validation MAP, 0 = never. [default: 0]"),
    time_limit: float = typer.Option(None, "--time-limit", help="Stop after this many minutes, 0 = none "
                                     "(an unfinished epoch is discarded). [default: 0]"),
    limit_batches: int = typer.Option(None, "--limit-batches", help="Steps per epoch at most, 0 = all. [default: 0]"),
    gpus: int = typer.Option(None, "--gpus", "--devices", help="Devices (DDP when > 1; CPU processes with "
                             "--accelerator cpu). [default: 1]"),
    accelerator: str = typer.Option(None, "--accelerator", help="auto | cpu | gpu. [default: auto]"),
    precision: str = typer.Option(None, "--precision", help="auto | 32 | bf16-mixed | 16-mixed. "
                                  "[default: auto = bf16-mixed on GPU, 32 on CPU]"),
    seed: int = typer.Option(None, "--seed", help="Random seed. [default: 42]"),
    resume: bool = typer.Option(None, "--resume/--no-resume", help="Continue the run in --output from its "
                                "state.pt. [default: no-resume]"),
    config: Path = typer.Option(None, "--config", help="YAML settings file."),
) -> None:
    """Train a WEALY model contrastively on a feature store; checkpoints go to --output."""
    settings = load_settings(TrainSettings, config, **{k: v for k, v in locals().items() if k != "config"})
    from wealy_cli.core.datasets import load_split  # heavy imports after the flags are read (keeps --help fast)
    from wealy_cli.core.store import Store
    from wealy_cli.model.network import build_model, count_parameters
    from wealy_cli.model.training import train as run_training

    feature_store = Store(settings.store)
    train_split = load_split(settings.dataset, settings.split, settings.metadata, check_audio=False)
    val_split = load_split(settings.dataset, settings.val_split, settings.metadata, check_audio=False)
    train_split = train_split.restrict(feature_store.keys())
    val_split = val_split.restrict(feature_store.keys())
    opts = options_from(settings, feature_store.dim)
    main_process = os.environ.get("LOCAL_RANK", "0") == "0"
    if main_process:
        write_resolved(settings, opts.output, "settings.yaml")
        ui.console.print(f"train: {len(train_split)} versions / {train_split.n_cliques()} cliques; "
                         f"val: {len(val_split)} / {val_split.n_cliques()}; model "
                         f"{count_parameters(build_model(opts.model)) / 1e6:.2f} M parameters → {opts.output}",
                         highlight=False)
    result = run_training(opts, feature_store, train_split, val_split)
    if main_process:
        ui.show(ui.key_value_table(f"train {opts.output}", {
            "epochs": result.epochs, "best epoch": result.best_epoch, "best val MAP": result.best_map,
            "stopped": result.stop_reason,
        }))
