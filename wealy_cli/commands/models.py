"""``wealy models list|download|upload|import``: published WEALY checkpoints."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from wealy_cli.commands.params import command
from wealy_cli.core import ui
from wealy_cli.core.errors import UserError
from wealy_cli.core.settings import CommandSettings, CreatableDir, argument, option

app = typer.Typer(help="Published WEALY checkpoints on the Hugging Face Hub.", no_args_is_help=True)

TRUST_HELP = "Load a checkpoint whose pickle names code (runs that code: only for files you trust)."


class ModelsListSettings(CommandSettings):
    section = "models_list"
    details: bool = option(False, "Also describe each model.")


class ModelsDownloadSettings(CommandSettings):
    section = "models_download"
    name: str = argument(help="Published name (see 'wealy models list') or Hub repo id 'owner/name'.")
    revision: str | None = option(None, "Branch, tag or commit.", shown_default="main")
    force: bool = option(False, "Download and import again even if cached.")
    trust_pickle: bool = option(False, TRUST_HELP)


class ModelsImportSettings(CommandSettings):
    section = "models_import"
    checkpoint: Path = argument(help="Original .ckpt file (Lightning Fabric).")
    original_config: Path | None = option(None, "The checkpoint's original configuration.yaml (not a wealy "
                                          "settings file).", flag="--config",
                                          shown_default="the config stored in the checkpoint")
    out: CreatableDir | None = option(None, "Output directory.", shown_default="CKPT_DIR/CKPT_NAME-wealy")
    trust_pickle: bool = option(False, TRUST_HELP)


class ModelsUploadSettings(CommandSettings):
    section = "models_upload"
    run_dir: Path = argument(help="Training run directory (holds best.safetensors).")
    repo_id: str = argument(help="Hub repository 'owner/name'.")
    private: bool = option(False, "Create the repository as private.", negative="--public")
    revision: str | None = option(None, "Branch to upload to.", shown_default="main")
    dry_run: Path | None = option(None, "Only build the folder to upload in this directory and stop (no network).")


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command("list")
@command(ModelsListSettings, config=False)
def list_models(settings: ModelsListSettings) -> None:
    """The eight published models: dataset, features, size, downloaded / imported or not.

    Reads only the local Hugging Face cache (HF_HUB_CACHE); never uses the network."""
    from wealy_cli.model import hub

    models = hub.list_models()
    rows = [(m.name, m.dataset, m.features, _size(m.size_bytes), "yes" if m.downloaded else "no",
             "yes" if m.imported else "no") for m in models]
    ui.show(ui.table(f"published WEALY models ({hub.ORG} on the Hugging Face Hub)",
                     ("name", "dataset", "features", "size", "downloaded", "imported"), rows, no_wrap=(0,)))
    if settings.details:
        ui.show(ui.table("descriptions", ("name", "description"), [(m.name, m.description) for m in models],
                         no_wrap=(0,)))
    ui.console.print(f"cache: {hub.hub_cache_dir()}; imported models: {hub.models_dir()}", highlight=False)


@app.command("download")
@command(ModelsDownloadSettings)
def download(settings: ModelsDownloadSettings) -> None:
    """Download a model into the Hugging Face cache and import it into wealy's format."""
    from wealy_cli.model import hub

    with ui.console.status(f"fetching {hub.repo_id_for(settings.name)}"):
        out = hub.resolve_model(settings.name, settings.revision, settings.force, trust_pickle=settings.trust_pickle)
    info = hub.model_info(settings.name, settings.revision)
    ui.show(ui.key_value_table(f"model {info.name}", {
        "repository": info.repo_id, "dataset": info.dataset, "features": info.features,
        "arch": info.arch, "snapshot": info.snapshot, "wealy weights": out / "best.safetensors"}))


@app.command("import")
@command(ModelsImportSettings, config=False)
def import_(settings: ModelsImportSettings) -> None:
    """Convert an original WEALY .ckpt into wealy's safetensors format and check it by loading it."""
    from wealy_cli.model.original import import_checkpoint

    out = settings.out or settings.checkpoint.parent / f"{settings.checkpoint.stem}-wealy"
    done = import_checkpoint(settings.checkpoint, out, settings.original_config, settings.trust_pickle)
    ui.show(ui.key_value_table("imported", {"checkpoint": settings.checkpoint,
                                            "weights": done / "best.safetensors",
                                            "config": done / "best.config.json"}))


@app.command("upload")
@command(ModelsUploadSettings)
def upload(settings: ModelsUploadSettings) -> None:
    """Publish a trained run: safetensors weights, settings without local paths, a model card.

    The model card (README.md) holds the run's validation metrics and usage."""
    from wealy_cli.model.card import build_upload_folder, upload_folder

    repo_id = settings.repo_id
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"argument REPO_ID '{repo_id}' must be a Hub repository id 'owner/name'")
    if settings.dry_run is not None:
        folder = build_upload_folder(settings.run_dir, settings.dry_run, repo_id)
        ui.show(ui.table(f"would upload to {repo_id}", ("file", "bytes"),
                         [(p.name, p.stat().st_size) for p in sorted(folder.iterdir())]))
        return
    with tempfile.TemporaryDirectory(prefix="wealy-upload-") as tmp:
        folder = build_upload_folder(settings.run_dir, Path(tmp), repo_id)
        with ui.console.status(f"uploading to {repo_id}"):
            url = upload_folder(folder, repo_id, private=settings.private, revision=settings.revision)
    ui.show(ui.key_value_table("uploaded", {"repository": repo_id, "commit": url}))
