"""``wealy evaluate``: exact MAP / MR1 / ARP of a trained model on a dataset split."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from wealy_cli.core import ui
from wealy_cli.core.settings import CreatableDir, DataSettings, ExistingDir, ExistingPath, load_settings, write_resolved

if TYPE_CHECKING:  # imported when the command runs, keeping --help fast
    from wealy_cli.retrieval.evaluate import EvalOptions


class ModelOnSplitSettings(DataSettings):
    """What `evaluate` and `distances` share: a model, a feature store, chunking and devices."""

    store: ExistingDir
    checkpoint: ExistingPath | None = None
    model: str | None = None
    cache: CreatableDir | None = None
    chunk: int = 1500
    overlap: float = 0.9
    topk: int = 1
    batch_size: int = 32
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"

    def eval_options(self, output: Path, gpus: int = 1) -> EvalOptions:
        from wealy_cli.retrieval.evaluate import EvalOptions

        return EvalOptions(store=self.store, output=output, checkpoint=self.checkpoint, model=self.model,
                           dataset=self.dataset, split=self.split, metadata=self.metadata,
                           audio_dir=self.audio_dir, chunk=self.chunk, overlap=self.overlap, topk=self.topk,
                           batch_size=self.batch_size, cache=self.cache, gpus=gpus,
                           accelerator=self.accelerator)


class EvaluateSettings(ModelOnSplitSettings):
    section = "evaluate"
    output: CreatableDir | None = None
    gpus: int = 1

    def run_dir(self) -> Path:
        if self.output is not None:
            return self.output
        name = Path(self.checkpoint).name if self.checkpoint else str(self.model).rsplit("/", 1)[-1]
        return Path("runs") / "evaluate" / f"{name}-{self.dataset}-{self.split}"


def evaluate(
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Run directory (uses best), .safetensors file or "
                                                         "checkpoint name of a trained model."),
    model: str = typer.Option(None, "--model", help="Published model name (e.g. wealy-whisper-shs) instead of "
                                                   "--checkpoint."),
    store: Path = typer.Option(None, "--store", help="Feature store of the split (from 'wealy extract'). [required]"),
    dataset: str = typer.Option(None, "--dataset", help="shs, lyric-covers, discogs-vi or csv. [default: shs]"),
    split: str = typer.Option(None, "--split", help="train, val or test. [default: test]"),
    metadata: Path = typer.Option(None, "--metadata", help="Split files (bundled for shs and lyric-covers)."),
    output: Path = typer.Option(None, "--output", "-o", help="Run directory for results.json, per_query.csv "
                                                     "and settings.yaml. [default: runs/evaluate/<model>-<dataset>-<split>]"),
    cache: Path = typer.Option(None, "--cache", help="Folder of chunk-embedding caches. [default: OUTPUT/cache]"),
    chunk: int = typer.Option(None, "--chunk", help="Rows per chunk. [default: 1500]"),
    overlap: float = typer.Option(None, "--overlap", help="Overlap of consecutive chunks, in [0, 1). [default: 0.9]"),
    topk: int = typer.Option(None, "--topk", help="Song distance: mean of the k smallest chunk-pair cosine "
                                                  "distances. [default: 1]"),
    batch_size: int = typer.Option(None, "--batch-size", help="Chunks per model call. [default: 32]"),
    gpus: int = typer.Option(None, "--gpus", help="Workers (Lightning Fabric, one per device; CPU processes "
                                                  "without GPUs). Results are identical for any number. [default: 1]"),
    accelerator: str = typer.Option(None, "--accelerator", help="auto, cpu or gpu. [default: auto]"),
    config: Path = typer.Option(None, "--config", help="YAML settings file."),
) -> None:
    """Evaluate a model all-against-all on a split: MAP, MR1, ARP with 95 % intervals.

    Writes results.json, per_query.csv (key, clique, ap, first_rank, rp) and settings.yaml."""
    from wealy_cli.retrieval.evaluate import PER_QUERY, RESULTS, published_model_flags
    from wealy_cli.retrieval.evaluate import evaluate as run_evaluation

    flags = dict(
        checkpoint=checkpoint, model=model, store=store, dataset=dataset, split=split, metadata=metadata,
        output=output, cache=cache, chunk=chunk, overlap=overlap, topk=topk, batch_size=batch_size,
        gpus=gpus, accelerator=accelerator
    )
    flags = published_model_flags(model, flags)
    settings = load_settings(EvaluateSettings, config, **flags)
    out = settings.run_dir()
    result = run_evaluation(settings.eval_options(out, settings.gpus))
    if result is None:  # a worker other than rank 0
        return
    write_resolved(settings, out)
    m = result.metrics
    rows = [("MAP", m.map, f"± {m.map_ci:.4f}"), ("MR1", m.mr1, f"± {m.mr1_ci:.2f}"),
            ("ARP (%)", m.arp, f"± {m.arp_ci:.3f}")]
    ui.show(ui.table(f"{settings.dataset}/{settings.split}: {m.n_queries} queries "
                     f"({m.n_skipped} skipped), topk {settings.topk}", ("metric", "value", "95 % interval"), rows))
    ui.console.print(f"wrote {out / RESULTS} and {out / PER_QUERY} ({result.seconds:.1f} s)", highlight=False)
