"""Importing original WEALY checkpoints: same embeddings as the original architecture, safe loading."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from wealy_cli.core.errors import UserError
from wealy_cli.core.safepickle import UnsafeCheckpointError, load_checkpoint, plain
from wealy_cli.model.network import load_model
from wealy_cli.model.original import import_checkpoint, read_original_config

torch.set_num_threads(1)

SIZES = dict(input_channels=12, hidden_dim=16, zdim=8, num_heads=4, ff_dim=32, num_transformer_blocks=2)


# ---------------------------------------------------------------- the original architecture, rebuilt here


class OriginalGeM(nn.Module):
    """The original GeM: mean over *all* frames of clamp(x)^p, p = 1 + softplus(θ), θ shape (1, C, 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.randn(1, channels, 1) * 0.5 + math.log(math.exp(2) - 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h (B, C, T)
        power = 1 + nn.functional.softplus(self.p)
        return h.clamp(min=1e-6).pow(power).mean(-1).pow(1 / power.squeeze(-1))


class OriginalPositions(nn.Module):
    """Sinusoids stored as a persistent buffer ``pe`` (1, L, C), as the original did."""

    def __init__(self, dim: int, length: int = 64) -> None:
        super().__init__()
        pe = torch.zeros(length, dim)
        pos = torch.arange(length).float()[:, None]
        div = torch.exp(torch.arange(0, dim, 2).float() * -(math.log(10000.0) / dim))
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]]


class OriginalModel(nn.Module):
    """Module names and forward pass of the research code's ``lib/models/wealy.py`` (no padding)."""

    def __init__(self, avg: bool, positions: bool = False, pool: str = "gempool") -> None:
        super().__init__()
        c = SIZES
        self.avg = avg
        if avg:
            hid = c["hidden_dim"]
            self.avg_mlp = nn.Sequential(
                nn.Linear(c["input_channels"], hid), nn.ReLU(), nn.Dropout(0.1),
                nn.Linear(hid, hid), nn.ReLU(), nn.Dropout(0.1),
                nn.Linear(hid, hid), nn.ReLU(), nn.Dropout(0.1),
                nn.Linear(hid, c["zdim"]))
            return
        self.conv_layers = nn.Identity()
        self.pre_transformer_proj = nn.Linear(c["input_channels"], c["hidden_dim"])
        self.positional_encoding = OriginalPositions(c["hidden_dim"]) if positions else nn.Identity()
        layer = nn.TransformerEncoderLayer(c["hidden_dim"], c["num_heads"], c["ff_dim"], 0.1,
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, c["num_transformer_blocks"], enable_nested_tensor=False)
        self.pool = OriginalGeM(c["hidden_dim"]) if pool == "gempool" else None
        self.proj = nn.Linear(c["hidden_dim"], c["zdim"], bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.avg:
            return self.avg_mlp(h.mean(1))
        x = self.transformer(self.positional_encoding(self.pre_transformer_proj(h)))
        x = x.transpose(1, 2)
        x = self.pool(x) if self.pool is not None else x.mean(-1)
        return self.proj(x)


def write_original(directory: Path, model: nn.Module, avg: bool, positions: bool = False,
                   pool: str = "gempool", extra: dict | None = None) -> tuple[Path, Path]:
    """best.ckpt in the Fabric layout + configuration.yaml with the original keys."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = {
        "jobname": "test",
        "path": {"cache": str(directory / "cache"), "logs": str(directory / "logs")},
        "data": {"dataset_name": "shs", "embedding_type": "last_hidden_states", "use_avg_pooling": avg,
                 "chunk_size": 1500, "samplerate": 16000},
        "model": {"name": "wealy", **SIZES, "conv_blocks": 0, "conv_kernel_size": 9, "conv_stride": 4,
                  "dropout": 0.1, "pool_type": pool,
                  "positional_encoding": {"enabled": positions, "type": "sinusoidal", "max_length": 64},
                  "loss": {"type": "ntxent", "temperature": 0.1}},
    }
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.LinearLR(optim, start_factor=0.005, total_iters=50)
    # What fabric.save writes for state = {model, optim, sched, conf, epoch, lr, cost_best}.
    ckpt = {"model": model.state_dict(), "optim": optim.state_dict(), "sched": sched.state_dict(),
            "conf": OmegaConf.create(conf), "epoch": 7, "lr": 1e-4, "cost_best": 0.61, **(extra or {})}
    torch.save(ckpt, directory / "best.ckpt")
    (directory / "configuration.yaml").write_text(yaml.safe_dump(conf), encoding="utf-8")
    return directory / "best.ckpt", directory / "configuration.yaml"


def _inputs(rows: int = 9, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, rows, SIZES["input_channels"], generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("avg,positions,pool", [(False, False, "gempool"), (False, True, "gempool"),
                                                (False, False, "meanpool"), (True, False, "gempool")])
@torch.no_grad()
def test_imported_model_matches_the_original_architecture(tmp_path, avg, positions, pool):
    torch.manual_seed(0)
    reference = OriginalModel(avg, positions, pool).eval()
    ckpt, config = write_original(tmp_path / "run", reference, avg, positions, pool)
    out = import_checkpoint(ckpt, tmp_path / "imported", config)
    model, cfg = load_model(out)
    assert (cfg.arch, cfg.positional_encoding, cfg.pool_type) == (
        "avgmlp" if avg else "transformer", positions, "mean" if pool == "meanpool" else "gem")
    x = _inputs()
    expected = reference(x)
    assert torch.allclose(model(x, torch.ones(x.shape[:2], dtype=torch.bool)), expected, atol=1e-5)
    # Padded batch: wealy with a mask equals the original run on each unpadded sequence.
    lengths = [9, 5, 2]
    mask = torch.arange(9)[None] < torch.tensor(lengths)[:, None]
    padded = torch.where(mask[..., None], x, torch.zeros_like(x))
    each = torch.cat([reference(x[i: i + 1, :n]) for i, n in enumerate(lengths)])
    assert torch.allclose(model(padded, mask), each, atol=1e-5)


def test_import_records_data_settings_and_drops_local_paths(tmp_path):
    torch.manual_seed(0)
    ckpt, config = write_original(tmp_path / "run", OriginalModel(False), avg=False)
    out = import_checkpoint(ckpt, tmp_path / "imported", config)
    text = (out / "best.config.json").read_text()
    assert str(tmp_path) not in text
    data = yaml.safe_load(text)  # JSON is YAML
    assert (data["dataset"], data["features"], data["chunk_size"]) == ("shs", "whisper", 1500)
    assert data["source"]["epoch"] == 7


def test_config_stored_in_the_checkpoint_is_used_without_configuration_yaml(tmp_path):
    torch.manual_seed(0)
    reference = OriginalModel(True).eval()
    ckpt, _ = write_original(tmp_path / "run", reference, avg=True)
    out = import_checkpoint(ckpt, tmp_path / "imported", config=None)
    model, cfg = load_model(out)
    assert cfg.arch == "avgmlp"
    x = _inputs()
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)


def test_omegaconf_is_never_rebuilt(tmp_path):
    torch.manual_seed(0)
    ckpt, config = write_original(tmp_path / "run", OriginalModel(False), avg=False)
    loaded = load_checkpoint(ckpt)
    assert "omegaconf" not in type(loaded["conf"]).__module__
    assert plain(loaded["conf"]) == yaml.safe_load(config.read_text())


def test_checkpoint_with_an_arbitrary_object_is_refused(tmp_path, wealy):
    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(tmp_path / "payload-ran"),))

    torch.manual_seed(0)
    ckpt, config = write_original(tmp_path / "run", OriginalModel(False), avg=False, extra={"hook": Payload()})
    with pytest.raises(UnsafeCheckpointError, match="trust-pickle"):
        load_checkpoint(ckpt)
    proc = wealy("models", "import", ckpt, "--config", config, "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert "refused to load" in proc.stderr and "os.makedirs" in proc.stderr and "--trust-pickle" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "payload-ran").exists() and not (tmp_path / "out").exists()
    # The user vouches for the file: it loads (and the payload does run, as the message warned).
    proc = wealy("models", "import", ckpt, "--config", config, "--out", tmp_path / "out", "--trust-pickle")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "payload-ran").is_dir() and (tmp_path / "out" / "best.safetensors").is_file()


def test_configuration_errors_are_user_errors(tmp_path):
    base = {"model": {**SIZES, "conv_blocks": 0, "zdim": "${model.hidden_dim}"}, "data": {"use_avg_pooling": False}}
    path = tmp_path / "configuration.yaml"
    path.write_text(yaml.safe_dump(base))
    assert read_original_config(path).model.zdim == SIZES["hidden_dim"]  # interpolation resolved
    for model_update, message in [({"hidden_dim": "${oc.env:HIDDEN}"}, "interpolation"),
                                  ({"conv_blocks": 2}, "conv_blocks")]:
        path.write_text(yaml.safe_dump({**base, "model": {**base["model"], **model_update}}))
        with pytest.raises(UserError, match=message):
            read_original_config(path)
    path.write_text("data: {}\n")
    with pytest.raises(UserError, match="no 'model:' section"):
        read_original_config(path)


def test_mismatched_weights_and_non_checkpoints_are_user_errors(tmp_path):
    torch.manual_seed(0)
    ckpt, config = write_original(tmp_path / "run", OriginalModel(False), avg=False)
    wrong = yaml.safe_load(config.read_text())
    wrong["model"]["input_channels"] = 20
    config.write_text(yaml.safe_dump(wrong))
    with pytest.raises(UserError, match="do not match"):
        import_checkpoint(ckpt, tmp_path / "imported", config)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="not a"):
        load_checkpoint(junk)
