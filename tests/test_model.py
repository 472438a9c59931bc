"""WEALY model: parameter layout of the original, masking, GeM, save/load."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from wealy_cli.core.errors import UserError
from wealy_cli.model.network import ModelConfig, build_model, load_model, save_weights

torch.set_num_threads(1)

SMALL = dict(input_channels=12, hidden_dim=16, zdim=8, num_heads=4, ff_dim=32, num_transformer_blocks=2)


def test_paper_config_parameter_names_and_shapes():
    model = build_model(ModelConfig(input_channels=1280))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["pre_transformer_proj.weight"] == (768, 1280)
    assert shapes["pool.p"] == (1, 768, 1)
    assert shapes["proj.weight"] == (512, 768)
    assert "proj.bias" not in shapes
    for i in range(4):
        assert shapes[f"transformer.layers.{i}.self_attn.in_proj_weight"] == (3 * 768, 768)
        assert shapes[f"transformer.layers.{i}.linear1.weight"] == (1024, 768)
        assert shapes[f"transformer.layers.{i}.norm1.weight"] == (768,)
    assert "transformer.layers.4.linear1.weight" not in shapes
    # GeM starts at p = 3: the stored θ satisfies 1 + softplus(θ) = 3.
    theta = model.state_dict()["pool.p"].flatten()[0].item()
    assert 1 + math.log1p(math.exp(theta)) == pytest.approx(3.0)


def test_avgmlp_parameter_names():
    model = build_model(ModelConfig(input_channels=384, arch="avgmlp"))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {
        "avg_mlp.0.weight": (768, 384), "avg_mlp.0.bias": (768,),
        "avg_mlp.3.weight": (768, 768), "avg_mlp.3.bias": (768,),
        "avg_mlp.6.weight": (768, 768), "avg_mlp.6.bias": (768,),
        "avg_mlp.9.weight": (512, 768), "avg_mlp.9.bias": (512,),
    }


def test_config_from_original_yaml_keys():
    original = {"input_channels": 384, "hidden_dim": 768, "zdim": 512, "conv_blocks": 0, "num_heads": 12,
                "ff_dim": 1024, "dropout": 0.1, "num_transformer_blocks": 4, "pool_type": "gempool",
                "positional_encoding": {"enabled": True, "type": "sinusoidal"},
                "loss": {"type": "ntxent", "temperature": 0.1}}
    cfg = ModelConfig.from_dict(original)
    assert (cfg.input_channels, cfg.pool_type, cfg.positional_encoding, cfg.arch) == (384, "gem", True, "transformer")
    with pytest.raises(UserError, match="divisible"):
        ModelConfig.from_dict({"hidden_dim": 10, "num_heads": 3})


@pytest.mark.parametrize("arch,positions", [("transformer", False), ("transformer", True), ("avgmlp", False)])
def test_padding_never_changes_an_embedding(arch, positions):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL, arch=arch, positional_encoding=positions)).eval()
    lengths = [7, 3, 1]
    seqs = [torch.randn(n, 12) for n in lengths]
    # Reference: each sequence alone, no padding, no mask.
    alone = torch.cat([model(s[None]) for s in seqs])
    for extra in (0, 5, 40):
        T = max(lengths) + extra
        x = torch.full((3, T, 12), float("nan"))  # padded rows hold garbage (even NaN)
        mask = torch.zeros(3, T, dtype=torch.bool)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = s
            mask[i, : len(s)] = True
        torch.testing.assert_close(model(x, mask), alone, atol=1e-5, rtol=1e-4)


def test_empty_sequence_is_finite_with_finite_gradients():
    torch.manual_seed(0)
    for arch in ("transformer", "avgmlp"):
        model = build_model(ModelConfig(**SMALL, arch=arch)).train()
        x = torch.randn(2, 6, 12)
        mask = torch.tensor([[True] * 6, [False] * 6])
        z = model(x, mask)
        assert torch.isfinite(z).all()
        z.pow(2).sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_gem_pool_matches_hand_computation():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL)).eval()
    with torch.no_grad():
        model.pool.p.copy_(torch.randn(1, 16, 1))
    h = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    got = model.pool(h.transpose(1, 2), mask).detach().numpy()  # (B, C, T) layout
    theta = model.pool.p.detach().numpy().reshape(16)
    p = 1 + np.log1p(np.exp(theta))
    for b, n in enumerate((3, 5)):
        rows = np.clip(h[b, :n].numpy().astype(np.float64), 1e-6, None)
        expected = np.mean(rows ** p, axis=0) ** (1 / p)
        np.testing.assert_allclose(got[b], expected, rtol=1e-4)


def test_sinusoidal_positions_match_formula():
    model = build_model(ModelConfig(**SMALL, positional_encoding=True))
    table = model.positions.table
    d = 16
    for pos in (0, 1, 37):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_sbert_input_as_length_one_sequence():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**SMALL, "input_channels": 384})).eval()
    z = model(torch.randn(4, 1, 384), torch.ones(4, 1, dtype=torch.bool))
    assert z.shape == (4, 8) and torch.isfinite(z).all()


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(**SMALL)
    model = build_model(cfg).eval()
    weights = save_weights(tmp_path / "run" / "best", model, cfg, {"epoch": 7, "val_map": 0.5})
    assert weights == tmp_path / "run" / "best.safetensors"
    meta = json.loads((tmp_path / "run" / "best.config.json").read_text())
    assert meta["epoch"] == 7 and meta["model"]["hidden_dim"] == 16
    assert not list((tmp_path / "run").glob(".*tmp"))
    x = torch.randn(2, 5, 12)
    for where in (tmp_path / "run", weights, tmp_path / "run" / "best"):
        loaded, loaded_cfg = load_model(where)
        assert loaded_cfg == cfg and not loaded.training
        torch.testing.assert_close(loaded(x), model(x))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="no best.safetensors"):
        load_model(tmp_path)
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="x.safetensors"):
        load_model(bad)
    with pytest.raises(UserError, match="nothing"):
        load_model(tmp_path / "nothing")
