"""The whole pipeline on a small collection, as a user would run it: extract → SBERT → baselines →
train → evaluate → distances → fuse → one comparison table and figure.

Each step is a `wealy` command line run through an injected ``runner`` (the CLI's own entry
point), so the demo exercises exactly what users type. A step that finished leaves a marker
in ``<run>/.done/``; a rerun skips it, so a second run takes seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from wealy_cli.core.datasets import load_split
from wealy_cli.core.errors import UserError
from wealy_cli.core.lock import run_lock

Runner = Callable[[list[str]], int]
# Oracles use the clique labels: they bound what transcriptions allow, they are not methods.
ORACLES = ("ideal", "modified-ideal", "random", "modified-random")


def bundled_collection() -> Path:
    """The demo collection shipped with wealy: 24 songs × 3–4 synthesised versions."""
    return Path(str(resources.files("wealy_cli") / "data" / "demo" / "collection.csv"))


@dataclass
class DemoOptions:
    collection: Path
    run_dir: Path
    train_minutes: float = 1.5
    max_epochs: int = 150
    whisper_model: str | None = None  # None: the extract command's default (packaged tiny.en)
    seed: int = 42
    quiet: bool = False
    # A small WEALY for a CPU minute; the paper's sizes are `wealy train`'s defaults.
    model_flags: list[str] = field(default_factory=lambda: [
        "--hidden-dim", "256", "--zdim", "128", "--layers", "2", "--heads", "4", "--ff-dim", "512",
        "--dropout", "0.1", "--chunk", "512", "--workers", "0", "--warmup-epochs", "5",
        "--lr", "5e-4", "--min-lr", "1e-7"])


@dataclass
class Step:
    name: str
    argv: list[str]
    seconds: float | None = None
    skipped: bool = False


class Demo:
    """Plans and runs the steps; reads their outputs into one comparison."""

    def __init__(self, opts: DemoOptions) -> None:
        self.opts = opts
        run = opts.run_dir
        self.whisper_store = run / "stores" / "whisper"
        self.sbert_store = run / "stores" / "sbert"
        self.baselines_dir = run / "baselines"
        self.train_dir = run / "train"
        self.eval_dir = run / "evaluate"
        self.wealy_matrix = run / "evaluate" / "wealy-test.npz"
        self.fuse_dir = run / "fuse"
        self.done_dir = run / ".done"

    def _data(self, split: str | None = "test") -> list[str]:
        args = ["--dataset", "csv", "--metadata", str(self.opts.collection)]
        return args + (["--split", split] if split else [])

    def steps(self) -> list[Step]:
        o = self.opts
        extract = ["extract", "whisper", *self._data("all"), "--out", str(self.whisper_store)]
        if o.whisper_model:
            extract += ["--model", o.whisper_model]
        # A batch of at most 16 items, never more than the training split holds.
        n_train = len(load_split("csv", "train", o.collection, check_audio=False))
        batch = str(max(2, min(16, n_train)))
        train = ["train", "--store", str(self.whisper_store), *self._data(None), "--output", str(self.train_dir),
                 "--batch-size", batch, "--time-limit", str(o.train_minutes), "--max-epochs", str(o.max_epochs), "--seed", str(o.seed),
                 "--accelerator", "cpu", "--gpus", "1", *o.model_flags]
        model = ["--checkpoint", str(self.train_dir), "--store", str(self.whisper_store), *self._data(),
                 "--accelerator", "cpu"]
        return [
            Step("extract whisper", extract),
            Step("extract sbert", ["extract", "sbert", str(self.whisper_store), "--out", str(self.sbert_store)]),
            Step("baselines", ["baselines", "--store", str(self.whisper_store), *self._data(),
                               "--output", str(self.baselines_dir), "--save-distances", "--seed", str(o.seed)]),
            Step("train", train),
            Step("evaluate", ["evaluate", *model, "--output", str(self.eval_dir)]),
            Step("distances", ["distances", *model, "--output", str(self.wealy_matrix)]),
            Step("fuse", []),  # its inputs depend on the baselines' results: built when it runs
        ]

    def fuse_argv(self) -> list[str]:
        best = self.best_baseline()
        return ["fuse", str(self.wealy_matrix), str(self.baseline_matrix(best)), "--alphas", "0:2:0.1",
                "--output", str(self.fuse_dir)]

    def run(self, runner: Runner, on_step: Callable[[Step], None] | None = None) -> list[Step]:
        with run_lock(self.opts.run_dir, "demo run"):  # a second demo on this directory is refused
            return self._run(runner, on_step)

    def _run(self, runner: Runner, on_step: Callable[[Step], None] | None) -> list[Step]:
        self.opts.run_dir.mkdir(parents=True, exist_ok=True)
        self.done_dir.mkdir(exist_ok=True)
        steps = self.steps()
        for step in steps:
            marker = self.done_dir / step.name.replace(" ", "-")
            if marker.exists():
                step.skipped = True
            else:
                if step.name == "fuse":
                    step.argv = self.fuse_argv()
                argv = (["--quiet"] if self.opts.quiet else []) + step.argv
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

    def baseline_results(self) -> dict[str, dict]:
        return json.loads((self.baselines_dir / "baseline_results.json").read_text())["results"]

    def best_baseline(self) -> str:
        results = self.baseline_results()
        methods = {k: v for k, v in results.items() if k not in ORACLES}
        if not methods:
            raise UserError(f"{self.baselines_dir}: no transcription baseline to fuse with")
        return max(methods, key=lambda k: _metrics(methods[k])["map"])

    def baseline_matrix(self, name: str) -> Path:
        path = self.baselines_dir / f"{name}_distances.npz"
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
        rows.append({"method": "WEALY (trained here)", "kind": "model", **_pick(wealy)})
        summary = json.loads((self.fuse_dir / "fusion_summary.json").read_text())
        best = summary["best"]
        weight = next(iter(best["weights"].values()))
        rows.append({"method": f"WEALY + {self.best_baseline()} (α={weight:g})", "kind": "fusion", **_pick(best)})
        return rows


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
