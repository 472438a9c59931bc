"""What ``wealy models upload`` publishes: weights, a config without local paths, a model card.

    weights.safetensors   the run's best (else last) weights; model config in its metadata
    weights.config.json   model config + training summary (epoch, validation MAP)
    config.yaml           the run's resolved settings with every local path removed
    metrics.csv           per-epoch training metrics, if the run wrote them
    README.md             model card: what it is, its numbers, how to use it

The folder is built locally (and can be inspected with ``--dry-run``); the upload itself is one
``HfApi.upload_folder`` call.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from wealy_cli.core.errors import UserError
from wealy_cli.model.network import load_model, resolve_weights, save_weights

REMOVED = "<local path removed>"


def is_local_path(value: Any) -> bool:
    """A string that names a file or directory on this machine (absolute, relative with a
    separator, or home-relative); URLs and plain words are kept."""
    if not isinstance(value, str) or "://" in value:
        return False
    return value.startswith(("/", "~", "./", "../")) or "/" in value or "\\" in value


def strip_local_paths(data: Any) -> Any:
    """A copy of ``data`` with every local path replaced by a placeholder."""
    if isinstance(data, dict):
        return {k: strip_local_paths(v) for k, v in data.items()}
    if isinstance(data, list):
        return [strip_local_paths(v) for v in data]
    return REMOVED if is_local_path(data) else data


def _best_row(metrics_csv: Path) -> dict[str, float]:
    """The epoch with the highest validation MAP from a run's metrics.csv."""
    with open(metrics_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))

    def number(text: str | None) -> float | None:
        try:
            return float(text) if text not in (None, "") else None
        except ValueError:
            return None

    scored = [r for r in rows if number(r.get("val_map")) is not None]
    if not scored:
        return {}
    best = max(scored, key=lambda r: number(r["val_map"]))
    return {k: number(v) for k, v in best.items() if number(v) is not None}


def model_card(repo_id: str, model: dict[str, Any], summary: dict[str, Any],
               settings: dict[str, Any], metrics: dict[str, float]) -> str:
    """README.md for the Hub: what was trained on what, its validation numbers, usage."""
    name = repo_id.split("/")[-1]
    dataset = settings.get("dataset", "unknown")
    rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    metric_table = "\n".join(["| metric | value |", "|---|---|", *rows]) if rows else "No metrics recorded."
    arch = model.get("arch", "transformer")
    shape = (f"{model.get('num_transformer_blocks')} pre-norm transformer blocks, {model.get('num_heads')} heads, "
             f"hidden {model.get('hidden_dim')}, GeM pooling" if arch == "transformer"
             else f"averaged-embedding MLP, hidden {model.get('hidden_dim')}")
    return f"""---
library_name: wealy
tags:
- music
- version-identification
- lyrics
- audio
---

# {name}

A WEALY model (Whisper Embeddings for Audio-based LYrics matching) for version identification:
it maps a song's embedding sequence to one {model.get('zdim')}-d vector; distance = 1 − cosine.

- training data: `{dataset}` (split `{settings.get('split', 'train')}`), input dim {model.get('input_channels')}
- architecture: {shape}
- loss: {settings.get('loss', 'unknown')}; best epoch {summary.get('epoch', '?')}

## Validation metrics (best epoch)

{metric_table}

## Usage

```bash
pip install wealy
wealy models download {repo_id}
wealy evaluate --model {repo_id}   # plus your data locations: see 'wealy evaluate --help'
```

Weights are `weights.safetensors` (the model config is in its metadata and in
`weights.config.json`); `config.yaml` holds the training settings, with local paths removed.
"""


def build_upload_folder(run_dir: Path, out_dir: Path, repo_id: str) -> Path:
    """Fill ``out_dir`` with what ``wealy models upload`` would publish for ``run_dir``."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    weights = resolve_weights(run_dir)
    model, cfg = load_model(weights)
    sidecar = weights.with_name(weights.name.removesuffix(".safetensors") + ".config.json")
    summary = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
    summary = strip_local_paths({k: v for k, v in summary.items() if k != "model"})
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(out_dir / "weights", model, cfg, summary)
    settings: dict[str, Any] = {}
    if (run_dir / "settings.yaml").is_file():
        loaded = yaml.safe_load((run_dir / "settings.yaml").read_text(encoding="utf-8"))
        settings = strip_local_paths(loaded if isinstance(loaded, dict) else {})
    (out_dir / "config.yaml").write_text(
        yaml.safe_dump({"model": cfg.to_dict(), "training": settings}, sort_keys=False), encoding="utf-8")
    metrics: dict[str, Any] = {}
    if (run_dir / "metrics.csv").is_file():
        shutil.copyfile(run_dir / "metrics.csv", out_dir / "metrics.csv")
        metrics = {k: v for k, v in _best_row(run_dir / "metrics.csv").items() if k.startswith("val_") or k == "epoch"}
    if not metrics and isinstance(summary.get("val_map"), (int, float)):
        metrics = {"val_map": float(summary["val_map"])}
    (out_dir / "README.md").write_text(model_card(repo_id, cfg.to_dict(), summary, settings, metrics),
                                       encoding="utf-8")
    return out_dir


def upload_folder(folder: Path, repo_id: str, private: bool = False, revision: str | None = None) -> str:
    """Create the repo if needed and upload ``folder`` (needs the network and a Hub token)."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf_errors

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 commit_message="Upload WEALY model (wealy models upload)")
    except (hf_errors.HfHubHTTPError, hf_errors.OfflineModeIsEnabled, hf_errors.LocalTokenNotFoundError,
            OSError) as err:
        raise UserError(f"upload to {repo_id} failed: {str(err).splitlines()[0] if str(err) else type(err).__name__} "
                        "(needs network access and a token: 'hf auth login' or HF_TOKEN)") from err
    return str(getattr(info, "commit_url", f"https://huggingface.co/{repo_id}"))
