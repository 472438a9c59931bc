"""``wealy models list|download|upload|import``: published WEALY checkpoints."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from wealy_cli.core import ui
from wealy_cli.core.errors import UserError
from wealy_cli.core.settings import CreatableDir, WealySettings, load_settings

app = typer.Typer(help="Published WEALY checkpoints on the Hugging Face Hub.", no_args_is_help=True)


class ModelsSettings(WealySettings):
    section = "models"
    revision: str | None = None
    force: bool = False
    trust_pickle: bool = False
    private: bool = False


class _ImportSettings(ModelsSettings):
    section = "models_import"
    arguments = ("checkpoint",)
    checkpoint: Path  # checked by load_checkpoint, which names the argument
    original_config: Path | None = None  # the original configuration.yaml (--config)
    out: CreatableDir


class _UploadSettings(ModelsSettings):
    section = "models_upload"
    arguments = ("run_dir",)
    run_dir: Path  # checked by build_upload_folder, which names the argument


_CONFIG = typer.Option(None, "--config", help="YAML settings file.")
_TRUST = typer.Option(None, "--trust-pickle/--no-trust-pickle",
                      help="Load a checkpoint whose pickle names code (runs that code: only for files you "
                           "trust). [default: no-trust-pickle]")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command("list")
def list_models(details: bool = typer.Option(False, "--details", help="Also describe each model.")) -> None:
    """The eight published models: dataset, features, size, downloaded / imported or not.

    Reads only the local Hugging Face cache (HF_HUB_CACHE); never uses the network."""
    from wealy_cli.model import hub

    models = hub.list_models()
    rows = [(m.name, m.dataset, m.features, _size(m.size_bytes), "yes" if m.downloaded else "no",
             "yes" if m.imported else "no") for m in models]
    ui.show(ui.table(f"published WEALY models ({hub.ORG} on the Hugging Face Hub)",
                     ("name", "dataset", "features", "size", "downloaded", "imported"), rows))
    if details:
        ui.show(ui.table("descriptions", ("name", "description"), [(m.name, m.description) for m in models]))
    ui.console.print(f"cache: {hub.hub_cache_dir()}; imported models: {hub.models_dir()}", highlight=False)


@app.command("download")
def download(name: str = typer.Argument(..., help="Published name (see 'wealy models list') or Hub repo id."),
             revision: str = typer.Option(None, "--revision", help="Branch, tag or commit. [default: main]"),
             force: bool = typer.Option(None, "--force/--no-force",
                                        help="Download and import again even if cached. [default: no-force]"),
             trust_pickle: bool = _TRUST,
             config: Path = _CONFIG) -> None:
    """Download a model into the Hugging Face cache and import it into wealy's format."""
    from wealy_cli.model import hub

    settings = load_settings(ModelsSettings, config, revision=revision, force=force, trust_pickle=trust_pickle)
    with ui.console.status(f"fetching {hub.repo_id_for(name)}"):
        out = hub.resolve_model(name, settings.revision, settings.force, trust_pickle=settings.trust_pickle)
    info = hub.model_info(name, settings.revision)
    ui.show(ui.key_value_table(f"model {info.name}", {
        "repository": info.repo_id, "dataset": info.dataset, "features": info.features,
        "arch": info.arch, "snapshot": info.snapshot, "wealy weights": out / "best.safetensors"}))


@app.command("import")
def import_(checkpoint: Path = typer.Argument(..., help="Original .ckpt file (Lightning Fabric)."),
            original_config: Path = typer.Option(None, "--config",
                                                 help="The checkpoint's original configuration.yaml. "
                                                      "[default: the config stored in the checkpoint]"),
            out: Path = typer.Option(None, "--out", help="Output directory. [default: <ckpt dir>/<ckpt name>-wealy]"),
            trust_pickle: bool = _TRUST) -> None:
    """Convert an original WEALY .ckpt into wealy's safetensors format and check it by loading it.

    Here --config is the checkpoint's original configuration.yaml, not a wealy settings file."""
    from wealy_cli.model.original import import_checkpoint

    settings = load_settings(_ImportSettings, None, checkpoint=checkpoint, original_config=original_config,
                             out=out or checkpoint.parent / f"{checkpoint.stem}-wealy", trust_pickle=trust_pickle)
    done = import_checkpoint(settings.checkpoint, settings.out, settings.original_config, settings.trust_pickle)
    ui.show(ui.key_value_table("imported", {"checkpoint": settings.checkpoint,
                                            "weights": done / "best.safetensors",
                                            "config": done / "best.config.json"}))


@app.command("upload")
def upload(run_dir: Path = typer.Argument(..., help="Training run directory (holds best.safetensors)."),
           repo_id: str = typer.Argument(..., help="Hub repository 'owner/name'."),
           private: bool = typer.Option(None, "--private/--public", help="Repository visibility. [default: public]"),
           dry_run: Path = typer.Option(None, "--dry-run", help="Only build the folder to upload in this "
                                        "directory and stop (no network)."),
           config: Path = _CONFIG) -> None:
    """Publish a trained run: safetensors weights, settings without local paths, a model card.

    The model card (README.md) holds the run's validation metrics and usage."""
    from wealy_cli.model.card import build_upload_folder, upload_folder

    settings = load_settings(_UploadSettings, config, run_dir=run_dir, private=private)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"REPO_ID '{repo_id}' must be a Hub repository id 'owner/name'")
    if dry_run is not None:
        folder = build_upload_folder(settings.run_dir, dry_run, repo_id)
        ui.show(ui.table(f"would upload to {repo_id}", ("file", "bytes"),
                         [(p.name, p.stat().st_size) for p in sorted(folder.iterdir())]))
        return
    with tempfile.TemporaryDirectory(prefix="wealy-upload-") as tmp:
        folder = build_upload_folder(settings.run_dir, Path(tmp), repo_id)
        with ui.console.status(f"uploading to {repo_id}"):
            url = upload_folder(folder, repo_id, private=settings.private, revision=settings.revision)
    ui.show(ui.key_value_table("uploaded", {"repository": repo_id, "commit": url}))
