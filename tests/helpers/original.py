"""The original research code's WEALY architecture, rebuilt independently of wealy's classes, and
its checkpoint files (Lightning Fabric .ckpt + OmegaConf configuration.yaml)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

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
