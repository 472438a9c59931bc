"""``wealy fuse``: fuse distance matrices of several modalities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import typer

from wealy_cli.core import ui
from wealy_cli.core.errors import UserError
from wealy_cli.core.settings import CreatableDir, ExistingFile, WealySettings, load_settings, write_resolved
from wealy_cli.ranking.fusion import (
    align,
    best_row,
    combine,
    fuse_grid,
    normalize,
    own_entries,
    parse_alphas,
    plot_map,
    write_csv,
)
from wealy_cli.ranking.matrixfile import DistanceMatrix, read_matrix, write_matrix


class FuseSettings(WealySettings):
    section = "fuse"
    arguments = ("inputs",)
    inputs: list[ExistingFile]
    output: CreatableDir
    alphas: str = "0:2:0.1"
    normalize: Literal["none", "zscore", "rank"] = "none"
    save_fused: bool = False


def fuse(
    inputs: list[Path] = typer.Argument(None, help="Two or more distance-matrix files (.npz, .h5, or .pkl "
                                        "in the original tools' layout)."),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder. [required]"),
    alphas: str = typer.Option(None, "--alphas", help="Weights of each extra input: start:stop:step "
                               "(stop included) or a list 0,0.5,1. [default: 0:2:0.1]"),
    normalize_: str = typer.Option(None, "--normalize", help="Per-matrix normalisation before combining: "
                                   "none, zscore or rank. [default: none]"),
    save_fused: bool = typer.Option(None, "--save-fused/--no-save-fused", help="Also write the fused "
                                    "matrix of the best weights (fused_best.npz). [default: no-save-fused]"),
    config: Path = typer.Option(None, "--config", help="YAML settings file."),
) -> None:
    """Fuse distance matrices: m1 + alpha·m2 (+ one weight per further input), metrics per weight.

    Writes fusion_results.csv, fusion_map.png, fusion_summary.json and settings.yaml to --output."""
    settings = load_settings(FuseSettings, config, inputs=inputs or None, output=output, alphas=alphas,
                             normalize=normalize_, save_fused=save_fused)
    if len(settings.inputs) < 2:
        raise UserError(f"give at least two distance-matrix files to fuse (got {len(settings.inputs)})")
    values = parse_alphas(settings.alphas)
    names = _names(settings.inputs)
    aligned = align([read_matrix(p) for p in settings.inputs], names)
    ui.show(ui.table("alignment on version keys", list(aligned.report[0]), [r.values() for r in aligned.report]))
    rows = fuse_grid(aligned, values, settings.normalize)
    best = best_row(rows)
    out = settings.output
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "fusion_results.csv", rows, names)
    plot_map(out / "fusion_map.png", rows, names)
    summary = {"inputs": [str(p) for p in settings.inputs], "normalize": settings.normalize,
               "alignment": aligned.report, "best": {"weights": dict(zip(names[1:], rows[best].weights)),
                                                     **rows[best].metrics}}
    (out / "fusion_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if settings.save_fused:
        own = own_entries(aligned.query_keys, aligned.candidate_keys)
        fused = combine([normalize(d, settings.normalize, own) for d in aligned.distances], rows[best].weights)
        write_matrix(out / "fused_best.npz", DistanceMatrix(fused, aligned.query_keys, aligned.candidate_keys,
                                                            aligned.query_cliques, aligned.candidate_cliques,
                                                            summary))
    write_resolved(settings, out)
    table = [(("★ " if i == best else "") + ", ".join(f"{w:g}" for w in r.weights),
              f"{r.metrics['map']:.4f} ± {r.metrics['map_ci']:.4f}", f"{r.metrics['mr1']:.2f}",
              f"{r.metrics['arp']:.3f}") for i, r in enumerate(rows)]
    ui.show(ui.table(f"fusion of {', '.join(names)} (normalize={settings.normalize}; ★ best MAP)",
                     (f"weight ({', '.join(names[1:])})", "MAP", "MR1", "ARP (%)"), table))


def _names(paths: list[Path]) -> list[str]:
    """Short, unique labels for the inputs: file stems (numbered when they repeat)."""
    stems = [p.stem for p in paths]
    return [s if stems.count(s) == 1 else f"{s}#{i + 1}" for i, s in enumerate(stems)]
