"""CLEWS model: official parameter names, strict checkpoint loading, safe unpickling, shingling."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from wealy_cli.clews.model import (
    CheckpointError,
    ClewsConfig,
    ClewsModel,
    CQTPrepare,
    load_clews,
    read_state_dict,
    shingle,
    shingle_starts,
)
from wealy_cli.core.layers import GeMPool

torch.set_num_threads(1)
TINY = ClewsConfig(frontend_channels=(4, 8), blocks=(1, 2, 1, 1), channels=(8, 16, 32, 64), zdim=24)


def official_names(blocks=(3, 4, 6, 3), channels=(256, 512, 1024, 2048), first=256) -> dict[str, tuple]:
    """State-dict names and shapes of the official CLEWS model, written out from its published
    layout (models/clews.py + lib/layers.py of sony/clews), independently of wealy's classes."""
    def bn(prefix: str, n: int) -> dict[str, tuple]:
        return {f"{prefix}.weight": (n,), f"{prefix}.bias": (n,), f"{prefix}.running_mean": (n,),
                f"{prefix}.running_var": (n,), f"{prefix}.num_batches_tracked": ()}

    names: dict[str, tuple] = {"cqt.0.lenghts": (84,), "cqt.0.cqt_kernels_real": (84, 1, 16384),
                               "cqt.0.cqt_kernels_imag": (84, 1, 16384), "frontend.0.gain": (1,),
                               "frontend.0.bias": (1,), "frontend.1.weight": (128, 1, 12, 3),
                               **bn("frontend.2", 128), "frontend.4.weight": (first, 128, 12, 3)}
    i, cin = 0, first
    for n, cout in zip(blocks, channels):
        for j in range(n):
            a = cin if j == 0 else cout
            mid = max(a, cout) // 2
            p = f"backbone.{i}"
            names.update(bn(f"{p}.convs.0.bn", a // 2))
            names.update({f"{p}.convs.0.inst.weight": (a // 2,), f"{p}.convs.0.inst.bias": (a // 2,),
                          f"{p}.convs.2.conv.weight": (mid, a, 3, 3), f"{p}.convs.5.conv.weight": (cout, mid, 3, 3),
                          f"{p}.gain": (1,)})
            names.update(bn(f"{p}.convs.3", mid))
            if a != cout:  # the published widths change at every stage with a stride
                names.update(bn(f"{p}.skip.0", a))
                names[f"{p}.skip.2.conv.weight"] = (cout, a, 3, 3)
            i += 1
        cin = cout
    names.update({"pool.p": (1, 1, 1), **bn("proj.0", 2048), "proj.1.weight": (2048, 2048)})
    return names


def official_conf():
    """The official .ckpt pickles its OmegaConf config (a class wealy never imports) next to the
    weights; the tests pickle a real one."""
    from omegaconf import OmegaConf

    return OmegaConf.create({"model": {"zdim": 2048}, "training": {"lr": 2e-4}})


@pytest.fixture(scope="module")
def full_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = ClewsModel()  # the published SHS size, random weights
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not name.startswith("cqt."):
            tensor.normal_(0, 0.02)
    return model.state_dict()


def test_names_and_shapes_match_the_official_layout(full_state):
    expected = official_names()
    assert set(full_state) == set(expected)
    assert {k: tuple(v.shape) for k, v in full_state.items()} == expected


def test_official_checkpoint_layout_loads_strictly(tmp_path: Path, full_state):
    path = tmp_path / "checkpoint_best.ckpt"
    torch.save({"model": full_state, "optim": {"state": {}, "param_groups": [{"lr": 2e-4}]},
                "sched": {"best": 0.8}, "conf": official_conf(), "epoch": 123, "lr": 2e-4,
                "cost_best": torch.tensor(0.87)}, path)
    model = load_clews(path)
    assert model.config.zdim == 2048 and model.config.blocks == (3, 4, 6, 3)
    loaded = model.state_dict()
    assert set(loaded) == set(full_state)
    for name in ("frontend.1.weight", "backbone.7.convs.2.conv.weight", "pool.p", "proj.1.weight",
                 "cqt.0.cqt_kernels_real", "proj.0.running_var"):
        assert torch.equal(loaded[name], full_state[name]), name


def test_dvi_sized_checkpoint_and_prefixed_state_dict(tmp_path: Path):
    cfg = ClewsConfig(frontend_channels=(4, 8), blocks=(1, 2, 1, 1), channels=(8, 16, 32, 64), zdim=12)
    state = ClewsModel(cfg).state_dict()
    path = tmp_path / "wrapped.ckpt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    model = load_clews(path)
    assert model.config.zdim == 12 and model.config.blocks == (1, 2, 1, 1)
    assert model.config.channels == (8, 16, 32, 64)


def test_checkpoint_with_wrong_shapes_is_a_user_error(tmp_path: Path):
    state = ClewsModel(TINY).state_dict()
    state["frontend.2.weight"] = torch.ones(3)
    path = tmp_path / "bad.ckpt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        load_clews(path)


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_checkpoint_pickle_cannot_run_code(tmp_path: Path):
    marker = tmp_path / "pwned"
    evil = _RunsCode()
    evil.target = str(marker)
    state = ClewsModel(TINY).state_dict()
    path = tmp_path / "evil.ckpt"
    torch.save({"model": state, "conf": evil}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        read_state_dict(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(evil))
    with pytest.raises(CheckpointError):
        read_state_dict(raw)
    assert not marker.exists()


def test_cqt_preparation_and_gem_match_hand_computation():
    x = torch.rand(2, 1, 5, 7) * 4
    prep = CQTPrepare().eval()
    with torch.no_grad():
        prep.gain.fill_(2.0)
        prep.bias.fill_(-1.0)
        got = prep(x).numpy()
    ref = np.sqrt(x.numpy())
    for b in range(2):
        r = ref[b] - ref[b].min()
        np.testing.assert_allclose(got[b], 2 * r / (r.max() + 1e-6) - 1, rtol=1e-5, atol=1e-6)
    pool = GeMPool()
    h = torch.rand(3, 4, 2, 5) + 0.1
    p = 1 + math.log1p(math.exp(pool.p.item()))
    assert abs(p - 3.0) < 1e-6
    expected = (h.numpy().reshape(3, 4, -1) ** 3).mean(-1) ** (1 / 3)
    np.testing.assert_allclose(pool(h).detach().numpy(), expected, rtol=1e-5)


def test_shingle_counts_and_padding():
    sr, length, hop = 16000, 20 * 16000, 5 * 16000
    # shorter than one shingle: one shingle, the signal repeated from its start
    short = torch.arange(1, 1601, dtype=torch.float32)
    s = shingle(short, length, hop)
    assert s.shape == (1, length)
    assert torch.equal(s[0], torch.from_numpy(np.tile(short.numpy(), 200)))
    # exactly one shingle
    assert shingle(torch.ones(length), length, hop).shape == (1, length)
    # one sample more: a second shingle, whose tail wraps around to the start
    sig = torch.arange(length + 1, dtype=torch.float32)
    s = shingle(sig, length, hop)
    assert s.shape == (2, length)
    assert s[1, 0] == hop and s[1, length - hop] == length and s[1, length - hop + 1] == 0
    # the 600 s cap (applied when decoding): 1 + (600 - 20) / 5 = 117 shingles
    assert len(shingle_starts(600 * sr, length, hop)) == 117
    assert len(shingle_starts(38 * sr, length, hop)) == 5  # 1 + ceil(18 / 5)


def test_shingles_are_embedded_independently_of_the_batch():
    torch.manual_seed(1)
    model = ClewsModel(TINY).eval()
    for p in model.parameters():
        if p.ndim:
            torch.nn.init.normal_(p, std=0.2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 20 * 16000)
    with torch.inference_mode():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert together.shape == (3, 24)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(together[0], together[1])


def test_cqt_front_end_puts_a_tone_in_its_semitone_bin():
    model = ClewsModel(TINY).eval()
    t = torch.arange(20 * 16000) / 16000
    tones = torch.stack([torch.sin(2 * math.pi * f * t) for f in (440.0, 110.0, 1760.0)])
    with torch.inference_mode():
        spec = model.spectrogram(tones)
    # 84 bins from C1 = 32.70 Hz, 12 per octave; 20 ms hop pooled by 5 → 10 frames per second
    assert spec.shape == (3, 1, 84, 200)
    peaks = spec[:, 0, :, 20:180].mean(-1).argmax(-1).tolist()
    expected = [round(12 * math.log2(f / 32.70)) for f in (440.0, 110.0, 1760.0)]
    assert peaks == expected == [45, 21, 69]


def _official_force_length(x: torch.Tensor, length: int, allow_longer: bool) -> torch.Tensor:
    """sony/clews lib/tensor_ops.force_length with pad_mode="repeat", cut_mode="start", written out."""
    if x.size(-1) == length or (x.size(-1) > length and allow_longer):
        return x
    aux = x.clone()
    while aux.size(-1) < length:
        aux = torch.cat([aux, x], dim=-1)
    return aux if allow_longer else aux[..., :length]


def _official_prepare(audio: torch.Tensor, shingle_seconds: float, hop: float, minlen: float = 20.0,
                      sr: int = 16000) -> torch.Tensor:
    """sony/clews models/clews.py Model.prepare up to the CQT: get_frames(pad_mode="repeat"), then
    every frame forced to at least ``minlen`` (the training shingle length) by repetition."""
    length, step = int(sr * shingle_seconds), int(sr * hop)
    padded_length = max(int(math.ceil((audio.size(-1) - length) / step)), 0) * step + length
    frames = _official_force_length(audio[None], padded_length, allow_longer=False).unfold(-1, length, step)
    return _official_force_length(frames, int(sr * minlen), allow_longer=True)[0]


@pytest.mark.parametrize("shingle_seconds", [10.0, 7.0, 20.0, 25.0])
def test_short_shingles_are_repeated_to_the_training_length_as_officially(shingle_seconds):
    """--shingle-seconds below 20: each shingle is repeated whole until ≥ 20 s (10 s → 20 s,
    7 s → 21 s), exactly as the official code; 20 s and longer shingles are untouched."""
    from wealy_cli.clews.extract import song_shingles

    torch.manual_seed(3)
    audio = torch.randn(37 * 16000)
    model = ClewsModel(TINY).eval()
    ours = model.prepare(song_shingles(audio, shingle_seconds, 5.0))
    official = _official_prepare(audio, shingle_seconds, 5.0)
    assert ours.shape == official.shape and torch.equal(ours, official)
    expected_seconds = {10.0: 20, 7.0: 21, 20.0: 20, 25.0: 25}[shingle_seconds]
    assert ours.shape[-1] == expected_seconds * 16000
    with torch.inference_mode():  # forward applies the rule: the same as embedding the official frames
        torch.testing.assert_close(model(song_shingles(audio, shingle_seconds, 5.0)),
                                   model.embed(model.cqt(official).unsqueeze(1)))
        if shingle_seconds < 20:  # and it matters
            unrepeated = model.embed(model.cqt(song_shingles(audio, shingle_seconds, 5.0)).unsqueeze(1))
            assert not torch.allclose(unrepeated, model(song_shingles(audio, shingle_seconds, 5.0)), atol=1e-4)
