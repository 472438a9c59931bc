"""Options of the lyrics stage: Whisper extraction and SBERT text embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from wealy_cli.core.launch import DeviceOptions, NodeOptions
from wealy_cli.core.settings import CreatableDir, DataSettings, ExistingDir, Options, argument, option

DEFAULT_WHISPER = "tiny.en"
DEFAULT_SBERT = "all-MiniLM-L6-v2"


class WhisperFeatureOptions(Options):
    """What decides a stored item's content (recorded in the store; a store never mixes them)."""

    model: str = option(DEFAULT_WHISPER, "tiny.en (packaged, offline), a faster-whisper or transformers folder, "
                        "or a Hugging Face id (e.g. openai/whisper-large-v3-turbo).")
    features: Literal["decoder", "encoder"] = option(
        "decoder", "decoder: one row per token fed to the decoder; encoder: 1500 rows per 30 s window.")
    language: str = option("auto", "auto (detected once per song on its first 30 s), en, or a language code.")
    prompt: str = option("lyrics:", "Initial prompt of every song.")
    compute_type: str = option("auto", "CTranslate2 decoding precision: auto (float32 on CPU, float16 on GPU), "
                               "int8, float32, float16, int8_float16 ...")
    precision: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", "PyTorch feature pass: auto (float32 on CPU, float16 on GPU), float32, bfloat16 or float16.")
    max_seconds: float = option(300.0, "Audio read per song, in seconds (never padded).", gt=0)


class WhisperExtractOptions(DataSettings, WhisperFeatureOptions, DeviceOptions, NodeOptions):
    """``wealy extract whisper``: a dataset's audio → transcriptions and features in a store."""

    split: Literal["train", "val", "test", "all"] = option("all", "train, val, test or all (every split).")
    out: CreatableDir | None = option(None, "Store directory to create or resume.", short="-o",
                                      shown_default="runs/stores/DATASET-SPLIT-whisper")
    batch_size: int = option(8, "Songs decoded in lockstep (and windows per feature batch).", ge=1)
    limit: int | None = option(None, "Only the first N versions.", ge=1, shown_default="all")

    def output_dir(self) -> Path:
        suffix = "whisper" if self.features == "decoder" else "whisper-encoder"
        return Path(self.out) if self.out else Path("runs/stores") / f"{self.dataset}-{self.split}-{suffix}"

    def content_settings(self) -> dict[str, object]:
        """The settings that decide an item's content (recorded in the store manifest)."""
        return {"extractor": "whisper", **self.model_dump(include=set(WhisperFeatureOptions.model_fields))}


class SbertOptions(Options):
    """``wealy extract sbert``: SBERT embeddings of a Whisper store's transcriptions."""

    store: ExistingDir = argument(help="Whisper store whose transcriptions are embedded.")
    out: CreatableDir | None = option(None, "Store directory to create or resume.", short="-o",
                                      shown_default="STORE-sbert")
    model: str = option(DEFAULT_SBERT, "all-MiniLM-L6-v2 (packaged, offline), a sentence-transformers folder "
                        "or a Hugging Face id.")
    batch_size: int = option(64, "Texts per batch.", ge=1)
    device: str = option("auto", "auto, cpu, cuda, cuda:1 ...")

    def output_dir(self) -> Path:
        return Path(self.out) if self.out else Path(f"{Path(self.store).as_posix().rstrip('/')}-sbert")
