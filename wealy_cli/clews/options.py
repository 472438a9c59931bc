"""Options of the audio stage: CLEWS extraction and CLEWS song distances."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, model_validator

from wealy_cli.core.launch import DeviceOptions, NodeOptions
from wealy_cli.core.settings import CreatableDir, DataSettings, ExistingFile, Options, option


class ClewsExtractOptions(DataSettings, DeviceOptions, NodeOptions):
    """``wealy extract clews``: a dataset's audio → CLEWS shingle embeddings in a store."""

    checkpoint: ExistingFile = option(help="CLEWS checkpoint: the official shs-clews / dvi-clews .ckpt, or a "
                                      ".safetensors state dict.")
    out: CreatableDir = option(help="Store directory to create or resume.", short="-o")
    max_seconds: float = option(600.0, "Audio read per song, in seconds.", gt=0)
    hop: float = option(5.0, "Seconds between shingle starts.", gt=0)
    shingle_seconds: float = option(20.0, "Shingle length in seconds (shorter shingles are repeated to 20 s, as "
                                    "the official code does).", gt=0)
    batch_size: int = option(16, "Shingles per forward pass.", ge=1)
    loader_workers: int = option(1, "Audio decoding processes feeding the model.", ge=0)

    @model_validator(mode="after")
    def _shingle_fits(self) -> ClewsExtractOptions:
        if self.shingle_seconds > self.max_seconds:
            raise ValueError(f"--shingle-seconds {self.shingle_seconds:g} is longer than --max-seconds "
                             f"{self.max_seconds:g}")
        return self


def parse_redux(redux: str) -> tuple[str, int]:
    """'bpwr-5' → ('bpwr', 5); 'min' → ('min', 0); 'mean' → ('mean', 0)."""
    if redux in ("min", "mean"):
        return redux, 0
    match = re.fullmatch(r"bpwr-(\d+)", redux)
    if match and int(match[1]) >= 1:
        return "bpwr", int(match[1])
    raise ValueError(f"{redux!r}: expected bpwr-K (K ≥ 1, e.g. bpwr-5, bpwr-10), min or mean")


def _check_redux(value: str) -> str:
    parse_redux(value)
    return value


Redux = Annotated[str, AfterValidator(_check_redux)]


class ClewsDistanceOptions(Options):
    """How CLEWS shingle embeddings become one song distance."""

    redux: Redux = option("bpwr-5", "Song distance from shingle-pair distances: bpwr-K (mean of the K best pairs "
                          "without replacement), min or mean.")
    block: int = option(32, "Songs per block of the streamed computation.", ge=1)
