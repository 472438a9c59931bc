"""The published WEALY checkpoints on the Hugging Face Hub: registry, download, offline use.

Downloads go through ``huggingface_hub`` and live in its cache (``HF_HUB_CACHE``, by default
``~/.cache/huggingface/hub``); ``HF_HUB_OFFLINE=1`` makes every lookup use that cache only. A
downloaded original checkpoint is imported once into wealy's format (``original.py``) under
``models_dir()/<name>/<commit>/``, so a new revision on the Hub never mixes with an old import.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors

from wealy_cli.core.errors import UserError
from wealy_cli.model.network import load_model, save_weights
from wealy_cli.model.original import import_checkpoint, read_original_config

ORG = "audio-based-lyrics-matching"
# Files worth fetching from a model repo: original checkpoints and config, or wealy's format.
_PATTERNS = ["*.ckpt", "*.yaml", "*.safetensors", "*.json", "README.md"]


@dataclass(frozen=True)
class PublishedModel:
    """What is known about a published model before downloading it (the original README)."""

    name: str
    dataset: str
    features: str  # wealy feature name; "unknown" where the original does not say
    description: str

    @property
    def repo_id(self) -> str:
        return f"{ORG}/{self.name}"


REGISTRY: dict[str, PublishedModel] = {m.name: m for m in (
    PublishedModel("wealy-whisper-shs", "shs", "whisper",
                   "temporal transformer on Whisper decoder embeddings, language auto-detected (paper: 0.640 MAP)"),
    PublishedModel("wealy-sbert-shs", "shs", "sbert",
                   "transformer on the SBERT (all-MiniLM-L6-v2, 384-d) embedding of the transcription, "
                   "a length-1 sequence"),
    PublishedModel("wealy-whisper-en-shs", "shs", "whisper-en",
                   "temporal transformer on Whisper decoder embeddings, English forced (paper: 0.578 MAP)"),
    PublishedModel("wealy-avgembmlp-shs", "shs", "whisper",
                   "MLP on the time-averaged embeddings (the original README calls it 'Avg Embedding MLP'; "
                   "Whisper input assumed, its configuration.yaml decides)"),
    PublishedModel("wealy-cls-shs", "shs", "unknown",
                   "'CLS token' variant: the original README does not say what it feeds the model; "
                   "its configuration.yaml decides"),
    PublishedModel("wealy-whisper-lyc", "lyric-covers", "whisper",
                   "temporal transformer on Whisper decoder embeddings, language auto-detected (paper: 0.692 MAP)"),
    PublishedModel("wealy-sbert-lyc", "lyric-covers", "sbert",
                   "transformer on the SBERT embedding of the transcription, a length-1 sequence"),
    PublishedModel("wealy-whisper-dvi", "discogs-vi", "whisper",
                   "temporal transformer on Whisper decoder embeddings, language auto-detected (paper: 0.328 MAP)"),
)}


class MissingModelError(UserError):
    """A model is neither in the local cache nor downloadable now."""


@dataclass
class ModelInfo:
    """A model's identity and the data settings it implies (from its configuration once
    downloaded, else from the registry)."""

    name: str
    repo_id: str
    dataset: str | None
    features: str | None
    description: str
    arch: str | None = None
    input_channels: int | None = None
    chunk_size: int | None = None
    topk: int | None = None
    snapshot: Path | None = None  # local Hugging Face snapshot, if downloaded
    imported: Path | None = None  # wealy-format directory, if imported
    size_bytes: int | None = None

    @property
    def downloaded(self) -> bool:
        return self.snapshot is not None

    def data_settings(self) -> dict[str, Any]:
        """Settings a command applies when evaluating with this model (data locations excluded)."""
        values = {"dataset": self.dataset, "features": self.features, "chunk": self.chunk_size, "topk": self.topk}
        return {k: v for k, v in values.items() if v is not None and v != "unknown"}


# ---------------------------------------------------------------- names and places


def repo_id_for(name: str) -> str:
    """A registry name → its repository; ``owner/repo`` passes through."""
    if name in REGISTRY:
        return REGISTRY[name].repo_id
    if name.count("/") == 1 and all(name.split("/")):
        return name
    raise UserError(f"unknown model '{name}': use one of {', '.join(REGISTRY)} or a Hub repo id "
                    "'owner/name' (see 'wealy models list')")


def short_name(name: str) -> str:
    return name.split("/")[-1]


def models_dir() -> Path:
    """Where imported models go: ``WEALY_MODELS_DIR``, else ``$XDG_CACHE_HOME/wealy/models``."""
    if os.environ.get("WEALY_MODELS_DIR"):
        return Path(os.environ["WEALY_MODELS_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wealy" / "models"


def hub_cache_dir(cache_dir: Path | None = None) -> Path:
    return Path(cache_dir) if cache_dir else Path(hf_constants.HF_HUB_CACHE)


def is_offline() -> bool:
    return bool(hf_constants.HF_HUB_OFFLINE)


# ---------------------------------------------------------------- cache and download


def cached_snapshot(repo_id: str, revision: str | None = None, cache_dir: Path | None = None) -> Path | None:
    """The local snapshot directory of ``repo_id`` at ``revision`` (default: main), or None."""
    try:
        path = huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                                 local_files_only=True, allow_patterns=_PATTERNS)
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled, FileNotFoundError, ValueError):
        return None
    path = Path(path)
    return path if _model_files(path) else None


def _model_files(snapshot: Path) -> list[Path]:
    return sorted(p for p in snapshot.iterdir() if p.suffix in (".ckpt", ".safetensors"))


def _missing_message(name: str, repo_id: str, revision: str | None, cache_dir: Path | None, cause: str) -> str:
    at = f" at revision {revision}" if revision else ""
    return (f"model '{name}' ({repo_id}{at}) is not in the Hugging Face cache {hub_cache_dir(cache_dir)} "
            f"and cannot be downloaded now ({cause}). On a machine with network access run "
            f"'wealy models download {name}' and copy that cache here (or point HF_HUB_CACHE at it), "
            "or import a local original checkpoint with 'wealy models import CKPT --config configuration.yaml'")


def download(name: str, revision: str | None = None, force: bool = False, cache_dir: Path | None = None) -> Path:
    """The model's snapshot directory, fetched from the Hub unless cached (or ``force``; offline,
    ``force`` takes the cached snapshot, so that ``resolve_model`` imports it again)."""
    repo_id = repo_id_for(name)
    if not force or is_offline():  # offline, --force can only re-import what is cached
        cached = cached_snapshot(repo_id, revision, cache_dir)
        if cached is not None:
            return cached
    if is_offline():
        raise MissingModelError(_missing_message(name, repo_id, revision, cache_dir, "HF_HUB_OFFLINE is set"))
    try:
        path = Path(huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                                      force_download=force, allow_patterns=_PATTERNS))
    except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError) as err:
        raise MissingModelError(f"model '{name}': repository {repo_id} not found on the Hub or not "
                                f"accessible ({type(err).__name__})") from err
    except hf_errors.RevisionNotFoundError as err:
        raise MissingModelError(f"model '{name}': revision '{revision}' not found in {repo_id}") from err
    except (hf_errors.LocalEntryNotFoundError, hf_errors.HfHubHTTPError, OSError) as err:
        detail = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        cause = f"the Hub cannot be reached: {detail}"
        raise MissingModelError(_missing_message(name, repo_id, revision, cache_dir, cause)) from err
    if not _model_files(path):
        raise UserError(f"model '{name}': {repo_id} holds no .ckpt or .safetensors file")
    return path


# ---------------------------------------------------------------- import into wealy's format


def _pick(files: list[Path], suffix: str, snapshot: Path) -> Path | None:
    found = [p for p in files if p.suffix == suffix]
    if len(found) > 1:
        preferred = [p for p in found if p.stem in ("best", "weights", "model")]
        if len(preferred) != 1:
            raise UserError(f"{snapshot}: several {suffix} files ({', '.join(p.name for p in found)}); "
                            "cannot tell which is the model")
        return preferred[0]
    return found[0] if found else None


def import_snapshot(snapshot: Path, out_dir: Path, trust_pickle: bool = False) -> Path:
    """Convert a downloaded repo (original ``.ckpt`` + ``configuration.yaml``, or wealy's
    ``weights.safetensors``) into ``out_dir/best.safetensors``, written whole or not at all."""
    files = _model_files(snapshot)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        weights = _pick(files, ".safetensors", snapshot)
        source = {"repo_snapshot": snapshot.name}
        if weights is not None:  # already wealy's format (uploaded with 'wealy models upload')
            model, cfg = load_model(weights)
            sidecar = weights.with_name(weights.stem + ".config.json")
            extra = _read_json(sidecar) if sidecar.is_file() else {}
            extra.pop("model", None)
            save_weights(tmp / "best", model, cfg, {**extra, **source})
        else:
            ckpt = _pick(files, ".ckpt", snapshot)
            config = snapshot / "configuration.yaml"
            import_checkpoint(ckpt, tmp, config if config.is_file() else None, trust_pickle, extra=source)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from err
    return data if isinstance(data, dict) else {}


def imported_dir(name: str, snapshot: Path) -> Path:
    return models_dir() / short_name(name) / snapshot.name


def resolve_model(name: str, revision: str | None = None, force: bool = False, *,
                  trust_pickle: bool = False, cache_dir: Path | None = None) -> Path:
    """A local directory with the model in wealy's format (``best.safetensors`` + config):
    downloaded and imported as needed. Give it to ``model.load_model``."""
    snapshot = download(name, revision, force, cache_dir)
    out = imported_dir(name, snapshot)
    if force or not (out / "best.safetensors").is_file():
        import_snapshot(snapshot, out, trust_pickle=trust_pickle)
    return out


# ---------------------------------------------------------------- information


def _size(snapshot: Path) -> int:
    # Snapshot entries are links into blobs/; stat() follows them.
    return sum(p.stat().st_size for p in snapshot.iterdir() if p.is_file())


def model_info(name: str, revision: str | None = None, cache_dir: Path | None = None) -> ModelInfo:
    """Registry facts, refined by the downloaded configuration where there is one (never
    touches the network)."""
    repo_id = repo_id_for(name)
    known = REGISTRY.get(name)
    info = ModelInfo(name=short_name(name), repo_id=repo_id, dataset=known.dataset if known else None,
                     features=known.features if known else None,
                     description=known.description if known else "not a published WEALY model")
    info.snapshot = cached_snapshot(repo_id, revision, cache_dir)
    if info.snapshot is None:
        return info
    info.size_bytes = _size(info.snapshot)
    config = info.snapshot / "configuration.yaml"
    if config.is_file():
        original = read_original_config(config)
        info.dataset = original.dataset or info.dataset
        info.features = original.features or info.features
        info.arch, info.input_channels = original.model.arch, original.model.input_channels
        info.chunk_size = original.chunk_size
        info.topk = _find_int(original.raw, ("topk_distance", "topk"))
    out = imported_dir(name, info.snapshot)
    info.imported = out if (out / "best.safetensors").is_file() else None
    return info


def _find_int(data: Any, keys: tuple[str, ...]) -> int | None:
    if isinstance(data, dict):
        for key, value in data.items():
            if key in keys and isinstance(value, int) and not isinstance(value, bool):
                return value
            found = _find_int(value, keys)
            if found is not None:
                return found
    return None


def list_models(cache_dir: Path | None = None) -> list[ModelInfo]:
    return [model_info(name, cache_dir=cache_dir) for name in REGISTRY]
