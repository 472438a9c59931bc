"""The whole pipeline on a small collection, as a user would run it: extract → SBERT → baselines →
train → evaluate → distances → fuse → one comparison table and figure.

The model is the late-interaction recipe (``configs/late.yaml``). Everything chosen is chosen on
the validation split: the checkpoint (best validation MAP), the text baseline fused with and the
fusion weight (``--normalize zscore``); the test split is only measured.

Each step is a `wealy` command line run through an injected ``runner`` (the CLI's own entry
point), so the demo exercises exactly what users type. A step that finished leaves a marker
in ``<run>/.done/``; a rerun skips it, so a second run takes seconds.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from wealy_cli.core.datasets import load_split
from wealy_cli.core.errors import UserError
from wealy_cli.core.lock import LOCK_FILE, run_lock
from wealy_cli.core.settings import CreatableDir, ExistingFile, Options, option

Runner = Callable[[list[str]], int]
# Oracles use the clique labels: they bound what transcriptions allow, they are not methods.
ORACLES = ("ideal", "modified-ideal", "random", "modified-random")


def bundled_collection() -> Path:
    """The demo collection shipped with wealy: 24 songs × 3–4 synthesised versions."""
    return Path(str(resources.files("wealy_cli") / "data" / "demo" / "collection.csv"))


def model_config() -> Path:
    """The bundled training recipe the demo uses: late interaction (``configs/late.yaml``)."""
    return Path(str(resources.files("wealy_cli") / "configs" / "late.yaml"))


class DemoOptions(Options):
    """``wealy demo``: which collection, where the run goes, and the training budget."""

    collection: ExistingFile | None = option(None, "A collection CSV (clique,version,path,split).",
                                             shown_default="the bundled 24-song collection")
    run_dir: CreatableDir = option(Path("runs/demo"), "Where every step writes.", short="-o")
    train_minutes: float = option(5.0, "Training time limit in minutes.", gt=0)
    max_epochs: int = option(30, "Training epochs at most.", ge=1)
    whisper_model: str | None = option(None, "Whisper model for extraction.", shown_default="the packaged tiny.en")
    seed: int = option(42, "Seed of training and the random baselines.")
    fresh: bool = option(False, "Start over (delete the run directory) instead of skipping finished steps.",
                         negative="--resume")

    def collection_csv(self) -> Path:
        return self.collection or bundled_collection()


@dataclass
class Step:
    name: str
    argv: list[str]
    seconds: float | None = None
    skipped: bool = False


class Demo:
    """Plans and runs the steps; reads their outputs into one comparison."""

    def __init__(self, opts: DemoOptions, quiet: bool = False) -> None:
        self.opts = opts
        self.collection = opts.collection_csv()
        self.quiet = quiet
        run = opts.run_dir
        self.whisper_store = run / "stores" / "whisper"
        self.sbert_store = run / "stores" / "sbert"
        self.baselines_dir = run / "baselines"
        self.val_baselines_dir = run / "baselines-val"
        self.train_dir = run / "train"
        self.eval_dir = run / "evaluate"
        self.wealy_matrix = run / "evaluate" / "wealy-test.npz"
        self.wealy_val_matrix = run / "evaluate" / "wealy-val.npz"
        self.fuse_dir = run / "fuse"
        self.val_fuse_dir = run / "fuse-val"
        self.done_dir = run / ".done"

    def _data(self, split: str | None = "test") -> list[str]:
        args = ["--dataset", "csv", "--metadata", str(self.collection)]
        return args + (["--split", split] if split else [])

    def steps(self) -> list[Step]:
        o = self.opts
        extract = ["extract", "whisper", *self._data("all"), "--out", str(self.whisper_store), "--gpus", "0"]
        if o.whisper_model:
            extract += ["--model", o.whisper_model]
        # A batch of at most 16 items, never more than the training split holds.
        n_train = len(load_split("csv", "train", self.collection, check_audio=False))
        batch = str(max(2, min(16, n_train)))
        train = ["train", "--store", str(self.whisper_store), *self._data(None), "--output", str(self.train_dir),
                 "--batch-size", batch, "--time-limit", str(o.train_minutes), "--max-epochs", str(o.max_epochs),
                 "--seed", str(o.seed), "--config", str(model_config())]
        model = ["--checkpoint", str(self.train_dir), "--store", str(self.whisper_store)]

        def baselines(split: str, out: Path) -> list[str]:
            return ["baselines", "--store", str(self.whisper_store), *self._data(split), "--output", str(out),
                    "--save-distances", "--seed", str(o.seed)]

        return [
            Step("extract whisper", extract),
            Step("extract sbert", ["extract", "sbert", str(self.whisper_store), "--out", str(self.sbert_store)]),
            Step("baselines", baselines("test", self.baselines_dir)),
            Step("baselines val", baselines("val", self.val_baselines_dir)),
            Step("train", train),
            Step("evaluate", ["evaluate", *model, *self._data(), "--output", str(self.eval_dir), "--gpus", "0"]),
            Step("distances", ["distances", *model, *self._data(), "--output", str(self.wealy_matrix)]),
            Step("distances val", ["distances", *model, *self._data("val"), "--output", str(self.wealy_val_matrix)]),
            # Their inputs depend on earlier results (the baseline, the weight): built when they run.
            Step("fuse val", []),
            Step("fuse", []),
        ]

    def fuse_argv(self, split: str) -> list[str]:
        """Fusion with the best baseline on validation: the whole weight grid on val, then test at
        the weight val picked."""
        best = self.best_baseline()
        if split == "val":
            return ["fuse", str(self.wealy_val_matrix), str(self.baseline_matrix(best, self.val_baselines_dir)),
                    "--alphas", "0:2:0.1", "--normalize", "zscore", "--output", str(self.val_fuse_dir)]
        return ["fuse", str(self.wealy_matrix), str(self.baseline_matrix(best)), "--alphas", f"{self.val_alpha():g}",
                "--normalize", "zscore", "--output", str(self.fuse_dir)]

    def val_alpha(self) -> float:
        """The fusion weight with the best validation MAP."""
        best = json.loads((self.val_fuse_dir / "fusion_summary.json").read_text())["best"]
        return float(next(iter(best["weights"].values())))

    def run(self, runner: Runner, on_step: Callable[[Step], None] | None = None) -> list[Step]:
        """Run (or skip) every step; ``--fresh`` first empties the run directory, under the lock."""
        run_dir = self.opts.run_dir
        with run_lock(run_dir, "demo run"):  # a second demo on this directory is refused
            if self.opts.fresh and run_dir.exists():
                self._clear(run_dir)
            return self._run(runner, on_step)

    @staticmethod
    def _clear(run_dir: Path) -> None:
        if not (run_dir / ".done").is_dir():
            raise UserError(f"--fresh: {run_dir} is not a demo run directory (no .done/); not deleting it")
        for entry in run_dir.iterdir():
            if entry.name == LOCK_FILE:
                continue  # held by this run
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()

    def _run(self, runner: Runner, on_step: Callable[[Step], None] | None) -> list[Step]:
        self.opts.run_dir.mkdir(parents=True, exist_ok=True)
        self.done_dir.mkdir(exist_ok=True)
        steps = self.steps()
        for step in steps:
            marker = self.done_dir / step.name.replace(" ", "-")
            if marker.exists():
                step.skipped = True
            else:
                if step.name.startswith("fuse"):
                    step.argv = self.fuse_argv("val" if step.name == "fuse val" else "test")
                argv = (["--quiet"] if self.quiet else []) + step.argv
                start = time.perf_counter()
                code = runner(argv)
                step.seconds = time.perf_counter() - start
                if code != 0:
                    raise UserError(f"demo step '{step.name}' failed (exit code {code}): wealy {' '.join(argv)}")
                marker.write_text(f"{step.seconds:.3f}\n")
            if on_step:
                on_step(step)
        return steps

    # ------------------------------------------------------------ results

    def baseline_results(self, directory: Path | None = None) -> dict[str, dict]:
        path = (directory or self.baselines_dir) / "baseline_results.json"
        return json.loads(path.read_text())["results"]

    def best_baseline(self) -> str:
        """The transcription baseline with the best validation MAP (what the model is fused with)."""
        results = self.baseline_results(self.val_baselines_dir)
        methods = {k: v for k, v in results.items() if k not in ORACLES}
        if not methods:
            raise UserError(f"{self.baselines_dir}: no transcription baseline to fuse with")
        return max(methods, key=lambda k: _metrics(methods[k])["map"])

    def baseline_matrix(self, name: str, directory: Path | None = None) -> Path:
        path = (directory or self.baselines_dir) / f"{name}_distances.npz"
        if not path.is_file():
            raise UserError(f"{path}: no distance matrix for baseline '{name}' (run baselines --save-distances)")
        return path

    def comparison(self) -> list[dict]:
        """One row per method: name, kind, MAP/MR1/ARP with intervals."""
        rows = []
        for name, result in self.baseline_results().items():
            m = _metrics(result)
            rows.append({"method": name, "kind": "oracle" if name in ORACLES else "baseline", **m})
        wealy = json.loads((self.eval_dir / "results.json").read_text())["metrics"]
        rows.append({"method": "WEALY late interaction (trained here)", "kind": "model", **_pick(wealy)})
        best = json.loads((self.fuse_dir / "fusion_summary.json").read_text())["best"]
        rows.append({"method": f"WEALY + {self.best_baseline()} (zscore, α={self.val_alpha():g} chosen on val)",
                     "kind": "fusion", **_pick(best)})
        return rows

    def training(self) -> dict[str, float]:
        """The training run in four numbers (from its metrics.csv): validation MAP untrained
        (epoch 0) and at the best epoch, the best epoch, and the epochs run."""
        with open(self.train_dir / "metrics.csv", newline="") as fh:
            history = {int(r["epoch"]): float(r["val_map"]) for r in csv.DictReader(fh)}
        best_epoch = int(json.loads((self.train_dir / "best.config.json").read_text())["epoch"])
        return {"best_epoch": best_epoch, "epochs": max(history), "val_map_untrained": history[0],
                "val_map_best": history[best_epoch]}


def _pick(m: dict) -> dict:
    return {k: float(m[k]) for k in ("map", "map_ci", "mr1", "mr1_ci", "arp", "arp_ci") if k in m}


def _metrics(result: dict) -> dict:
    return _pick(result.get("metrics", result))


def plot_comparison(rows: list[dict], path: Path, title: str = "wealy demo") -> Path:
    """Horizontal bars of MAP with 95 % intervals, one per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"oracle": "#bbbbbb", "baseline": "#6b8fb4", "model": "#d1603d", "fusion": "#7a4ea3"}
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    names = [r["method"] for r in rows]
    ax.barh(names, [r["map"] for r in rows], xerr=[r.get("map_ci", 0) for r in rows],
            color=[colors.get(r["kind"], "#888888") for r in rows], capsize=3)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("MAP (test split, 95 % interval)")
    ax.set_title(f"{title}: version identification from sung lyrics")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
