"""The WEALY model: a temporal transformer over Whisper (or SBERT) embedding sequences.

    x (B, T, d_in), mask (B, T) True = valid
      → Linear d_in→hidden ("pre_transformer_proj") → optional sinusoidal positions
      → pre-norm TransformerEncoder ("transformer.layers.{i}")
      → GeM pooling over valid rows ("pool.p") → Linear hidden→zdim, no bias ("proj")
      → z (B, zdim), not normalised (distance = 1 − cosine)

The "avgmlp" variant averages the valid rows and feeds an MLP ("avg_mlp.{k}"). SBERT input is
a length-1 sequence. Parameter names and config keys follow the original research code so that
its published checkpoints load into these modules.

Weights are saved as ``<name>.safetensors`` (the model config is also embedded in the file's
metadata) plus ``<name>.config.json``; both are written atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, field_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from wealy_cli.core.errors import UserError
from wealy_cli.core.files import replace_atomically, temporary_name, write_atomically
from wealy_cli.core.layers import GeMPool
from wealy_cli.model.options import ArchitectureOptions

_POOL_ALIASES = {"gem": "gem", "gempool": "gem", "mean": "mean", "meanpool": "mean"}
_META_KEY = "wealy_model_config"


class ModelConfig(ArchitectureOptions):
    """A network's sizes: the architecture options plus the input width (from the feature store).
    Keys as in the original ``configuration.yaml``; saved with the weights."""

    input_channels: int = Field(1280, ge=1)
    avg_mlp_hidden_layers: int = Field(2, ge=0)
    max_positions: int = Field(8192, ge=1)

    @field_validator("pool_type", mode="before")
    @classmethod
    def _pool_alias(cls, value: Any) -> Any:
        return _POOL_ALIASES.get(str(value).lower(), value)

    @classmethod
    def from_options(cls, options: ArchitectureOptions, input_channels: int) -> ModelConfig:
        values = options.model_dump(include=set(ArchitectureOptions.model_fields))
        if values["arch"] == "late":  # a row projection cannot widen the rows
            values["zdim"] = min(values["zdim"], input_channels)
        return cls(input_channels=input_channels, **values)

    @property
    def per_row(self) -> bool:
        """True when the model embeds every row (late interaction), not one vector per chunk."""
        return self.arch == "late"

    @property
    def text_rows(self) -> bool:
        """Whether the model reads only the rows of sung tokens."""
        return self.rows == "text" or (self.rows == "auto" and self.arch == "late")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a saved or original config, ignoring keys that do not apply (e.g. the
        original ``conv_blocks``, ``loss``). The original's ``positional_encoding: {enabled: ...}``
        mapping is accepted. A config that does not describe a valid model is a UserError."""
        values = {k: v for k, v in data.items() if k in cls.model_fields}
        pe = values.get("positional_encoding")
        if isinstance(pe, dict):
            values["positional_encoding"] = bool(pe.get("enabled", False))
        if data.get("use_avg_pooling") and "arch" not in data:
            values["arch"] = "avgmlp"
        try:
            return cls(**values)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg'].removeprefix('Value error, ')}"
                                 for e in err.errors())
            raise UserError(f"model config: {problems}") from err


# ---------------------------------------------------------------- layers


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine positions ("Attention is all you need"); no parameters."""

    def __init__(self, dim: int, max_length: int) -> None:
        super().__init__()
        position = torch.arange(max_length, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        table = torch.zeros(max_length, dim)
        table[:, 0::2] = torch.sin(position * div)
        table[:, 1::2] = torch.cos(position * div)[:, : dim // 2]
        self.register_buffer("table", table, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.table.shape[0]:
            raise ValueError(f"sequence of {x.shape[1]} rows exceeds max_positions {self.table.shape[0]}")
        return x + self.table[: x.shape[1]].to(x.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid rows; zeros for a sequence with no valid row."""
    valid = mask[..., None]
    return torch.where(valid, x, 0.0).sum(1) / valid.sum(1).clamp(min=1).to(x.dtype)


# ---------------------------------------------------------------- models


class WealyTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pre_transformer_proj = nn.Linear(cfg.input_channels, cfg.hidden_dim)
        self.positions = SinusoidalPositions(cfg.hidden_dim, cfg.max_positions) if cfg.positional_encoding else None
        layer = nn.TransformerEncoderLayer(
            cfg.hidden_dim, cfg.num_heads, cfg.ff_dim, cfg.dropout,
            activation="relu", batch_first=True, norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, cfg.num_transformer_blocks, enable_nested_tensor=False)
        self.pool = GeMPool(cfg.hidden_dim) if cfg.pool_type == "gem" else None
        self.proj = nn.Linear(cfg.hidden_dim, cfg.zdim, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _full_mask(x) if mask is None else mask.to(torch.bool)
        # Zero padded rows: attention gives them weight 0, but 0 · NaN is still NaN.
        h = self.pre_transformer_proj(torch.where(mask[..., None], x, 0.0))
        if self.positions is not None:
            h = self.positions(h)
        # A sequence with no valid row would attend to nothing (softmax of all -inf = NaN):
        # let it attend to its first row; pooling still ignores every row of it.
        ignore = ~mask
        empty = ~mask.any(1)
        if empty.any():
            ignore = ignore.clone()
            ignore[empty, 0] = False
        h = self.transformer(h, src_key_padding_mask=ignore)
        pooled = self.pool(h.transpose(1, 2), mask) if self.pool is not None else masked_mean(h.float(), mask)
        return self.proj(pooled.to(h.dtype))


class AvgMLP(nn.Module):
    """Mean over valid rows → Linear→hidden, ReLU, dropout, hidden layers → Linear→zdim."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = [nn.Linear(cfg.input_channels, cfg.hidden_dim), nn.ReLU(), nn.Dropout(cfg.dropout)]
        for _ in range(cfg.avg_mlp_hidden_layers):
            layers += [nn.Linear(cfg.hidden_dim, cfg.hidden_dim), nn.ReLU(), nn.Dropout(cfg.dropout)]
        layers.append(nn.Linear(cfg.hidden_dim, cfg.zdim))
        self.avg_mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _full_mask(x) if mask is None else mask.to(torch.bool)
        return self.avg_mlp(masked_mean(x, mask))


class LateInteraction(nn.Module):
    """Late interaction: every row is centred (by the training rows' mean), projected and
    L2-normalised; songs are then compared row by row (``ranking/late.py``).

    ``forward(x (B, T, d_in), mask) -> (B, T, zdim)`` with padded rows set to zero. Before
    training, ``initialise`` sets the centre and starts the projection at the identity (zdim =
    d_in) or at the principal axes of the centred rows: the untrained model is then the
    training-free late interaction over centred rows (or their PCA), and training improves on it."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("centre", torch.zeros(cfg.input_channels))
        self.proj = nn.Linear(cfg.input_channels, cfg.zdim)
        self.dropout = nn.Dropout(cfg.dropout)

    @torch.no_grad()
    def initialise(self, rows: torch.Tensor) -> None:
        """Centre and starting projection from a sample of training rows (N, d_in)."""
        rows = rows.double()
        centre = rows.mean(0)
        self.centre.copy_(centre.float())
        centred = rows - centre
        if self.cfg.zdim == self.cfg.input_channels:
            weight = torch.eye(self.cfg.zdim, dtype=torch.float64)
        else:
            _, _, vh = torch.linalg.svd(centred, full_matrices=False)
            weight = vh[: self.cfg.zdim]
        self.proj.weight.copy_(weight.float())
        self.proj.bias.zero_()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _full_mask(x) if mask is None else mask.to(torch.bool)
        y = self.proj(self.dropout(x - self.centre.to(x.dtype)))
        y = F.normalize(y.float(), dim=-1)
        return torch.where(mask[..., None], y, 0.0)


def _full_mask(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model; ``forward(x (B, T, d_in), mask (B, T) bool)`` gives (B, zdim),
    or (B, T, zdim) rows for ``late``."""
    return {"transformer": WealyTransformer, "avgmlp": AvgMLP, "late": LateInteraction}[cfg.arch](cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- saving and loading


def save_weights(path: Path, model: nn.Module, cfg: ModelConfig, extra: dict[str, Any] | None = None) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.config.json`` (``path`` has no suffix, e.g.
    ``run_dir / "best"``). Returns the weights file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = path.with_name(path.name + ".safetensors")
    config = path.with_name(path.name + ".config.json")
    payload = {"model": cfg.to_dict(), **(extra or {})}
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in _unwrap(model).state_dict().items()}
    tmp = temporary_name(weights)
    save_file(state, str(tmp), metadata={_META_KEY: json.dumps(cfg.to_dict()), "format": "pt"})
    replace_atomically(tmp, weights)
    write_atomically(config, json.dumps(payload, indent=2, default=str))
    return weights


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside Fabric / DDP wrappers."""
    while True:
        inner = getattr(model, "_forward_module", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def resolve_weights(path: Path) -> Path:
    """A run directory (its ``best``, else ``last``), a ``.safetensors`` file, or a checkpoint
    name without suffix (``runs/x/best``) → the weights file."""
    path = Path(path)
    if path.is_dir():
        for name in ("best", "last"):
            candidate = path / f"{name}.safetensors"
            if candidate.is_file():
                return candidate
        raise UserError(f"{path}: run directory holds no best.safetensors or last.safetensors")
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise UserError(f"{path}: checkpoint file not found")
        return path
    candidate = path.with_name(path.name + ".safetensors")
    if candidate.is_file():
        return candidate
    raise UserError(f"{path}: not a run directory, .safetensors file or checkpoint name")


def read_config(weights: Path) -> ModelConfig:
    """The model config embedded in a weights file, else its ``.config.json`` neighbour."""
    try:
        with safe_open(str(weights), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{weights}: not a readable safetensors file ({err})") from err
    if _META_KEY in meta:
        return ModelConfig.from_dict(json.loads(meta[_META_KEY]))
    config = weights.with_name(weights.name.removesuffix(".safetensors") + ".config.json")
    if not config.is_file():
        raise UserError(f"{weights}: no model config in the file and no {config.name} next to it")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{config}: not valid JSON ({err.msg})") from err
    return ModelConfig.from_dict(data.get("model", data))


def load_model(path: Path) -> tuple[nn.Module, ModelConfig]:
    """Load a saved model (eval mode, CPU). ``path``: run directory, ``.safetensors`` or name."""
    weights = resolve_weights(Path(path))
    cfg = read_config(weights)
    model = build_model(cfg)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise UserError(f"{weights}: cannot read weights ({err})") from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{weights}: weights do not match the model config "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval(), cfg
