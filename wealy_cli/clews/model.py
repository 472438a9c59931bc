"""A CLEWS-compatible audio embedding model (Serrà et al., ICML 2025; official code sony/clews, MIT).

Audio (16 kHz) is cut into shingles; each shingle becomes a CQT (7 octaves x 12 bins, 20 ms hop,
5-frame average pooling), is compressed and normalised, goes through a 2-D conv front end and a
ResNet of instance-batch-norm (IBN) residual blocks, and is GeM-pooled and projected to one
embedding. Module and buffer names follow the official code, so the published ``shs-clews`` and
``dvi-clews`` state dicts load with strict checking::

    cqt.0.{cqt_kernels_real,cqt_kernels_imag,lenghts}      nnAudio CQT1992v2 (+ cqt.1 avg pool)
    frontend.0.{gain,bias}                                 CQT preparation (learned affine)
    frontend.1 conv, frontend.2 BatchNorm, frontend.4 conv
    backbone.{i}.convs.{0: bn/inst, 2: conv, 3: bn, 5: conv}, backbone.{i}.skip.{0,2}, .gain
    pool.p                                                 GeM exponent, shape (1, 1, 1)
    proj.0 BatchNorm1d, proj.1 Linear without bias

The architecture sizes (channels, blocks per stage, output dim) are read from the checkpoint's
tensors, so ``shs-clews`` (2048-d) and ``dvi-clews`` (1024-d) both load without options.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wealy_cli.core.errors import UserError
from wealy_cli.core.layers import GeMPool
from wealy_cli.core.safepickle import load_checkpoint

SAMPLE_RATE = 16000


@dataclass
class ClewsConfig:
    """Model sizes; defaults are the published SHS configuration (``shs-clews.yaml``)."""

    sample_rate: int = SAMPLE_RATE
    cqt_hop_seconds: float = 0.02
    cqt_octaves: int = 7
    cqt_bins_per_octave: int = 12
    cqt_filter_scale: float = 1.0
    cqt_pool: int = 5
    cqt_power: float = 0.5
    frontend_channels: tuple[int, int] = (128, 256)
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    channels: tuple[int, ...] = (256, 512, 1024, 2048)
    down: tuple[int, ...] = (1, 2, 2, 1)
    zdim: int = 2048
    shingle_seconds: float = 20.0  # the training shingle length: the length used at test time

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ---------------------------------------------------------------- layers


class CQTPrepare(nn.Module):
    """Magnitude compression (power), min-max normalisation per shingle, learned gain and bias."""

    def __init__(self, power: float = 0.5, eps: float = 1e-6) -> None:
        super().__init__()
        self.power = power
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def _normalise(self, h: torch.Tensor) -> torch.Tensor:
        h = h - h.amin(dim=(2, 3), keepdim=True)
        return h / (h.amax(dim=(2, 3), keepdim=True) + self.eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, 1, F, T)
        h = self._normalise(h.clamp(min=0).pow(self.power))
        if self.training:
            # The official code dithers by 1e-6 to break ties while training; at inference
            # we leave it out so that embeddings are deterministic (a 1e-6 change otherwise).
            h = self._normalise(h + self.eps * torch.rand_like(h))
        return self.gain * h + self.bias


class PadConv2d(nn.Module):
    """A 'same'-padded square-kernel convolution (named ``conv`` inside, as in the original)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(h)


class InstanceBatchNorm2d(nn.Module):
    """Batch norm on the first half of the channels, instance norm on the second half."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels // 2)
        self.inst = nn.InstanceNorm2d(channels // 2, affine=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(h, 2, dim=1)
        return torch.cat([self.bn(a), self.inst(b)], dim=1)


class IBNResBlock(nn.Module):
    """Pre-activation residual block: IBN-ReLU-conv-BN-ReLU-conv, scaled by a learned gain
    that starts at 0 (so each block starts as its skip path)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        mid = max(1, max(cin, cout) // 2)
        mid += mid % 2  # IBN splits channels in two halves
        self.convs = nn.Sequential(
            InstanceBatchNorm2d(cin), nn.ReLU(), PadConv2d(cin, mid, 3, stride),
            nn.BatchNorm2d(mid), nn.ReLU(), PadConv2d(mid, cout, 3),
        )
        if cin != cout or stride != 1:
            self.skip: nn.Module = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), PadConv2d(cin, cout, 3, stride))
        else:
            self.skip = nn.Identity()
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.gain * self.convs(h) + self.skip(h)


def _cqt(cfg: ClewsConfig) -> nn.Module:
    from nnAudio.features import CQT1992v2  # imported here: building kernels is the slow part

    return nn.Sequential(
        CQT1992v2(sr=cfg.sample_rate, hop_length=int(cfg.cqt_hop_seconds * cfg.sample_rate),
                  n_bins=cfg.cqt_octaves * cfg.cqt_bins_per_octave, bins_per_octave=cfg.cqt_bins_per_octave,
                  filter_scale=cfg.cqt_filter_scale, trainable=False, verbose=False),
        nn.AvgPool1d(cfg.cqt_pool, stride=cfg.cqt_pool),
    )


# ---------------------------------------------------------------- model


class ClewsModel(nn.Module):
    """Shingles of audio (S, samples) → embeddings (S, zdim)."""

    def __init__(self, cfg: ClewsConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = cfg or ClewsConfig()
        if not len(cfg.blocks) == len(cfg.channels) == len(cfg.down):
            raise ValueError("blocks, channels and down need one entry per stage")
        self.cqt = _cqt(cfg)
        c0, c1 = cfg.frontend_channels
        self.frontend = nn.Sequential(
            CQTPrepare(cfg.cqt_power),
            nn.Conv2d(1, c0, (12, 3), stride=(1, 2), bias=False),
            nn.BatchNorm2d(c0),
            nn.ReLU(),
            nn.Conv2d(c0, c1, (12, 3), stride=2, bias=False),
        )
        blocks: list[nn.Module] = []
        cin = c1
        for n, cout, stride in zip(cfg.blocks, cfg.channels, cfg.down):
            blocks.append(IBNResBlock(cin, cout, stride))
            blocks += [IBNResBlock(cout, cout) for _ in range(n - 1)]
            cin = cout
        self.backbone = nn.Sequential(*blocks)
        self.pool = GeMPool()
        self.proj = nn.Sequential(nn.BatchNorm1d(cin), nn.Linear(cin, cfg.zdim, bias=False))

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def shingle_samples(self) -> int:
        return int(round(self.config.shingle_seconds * self.config.sample_rate))

    def prepare(self, shingles: torch.Tensor) -> torch.Tensor:
        """Shingles shorter than the training shingle are repeated whole until they are at least
        that long, as the official ``Model.prepare`` does (``force_length(..., pad_mode="repeat",
        allow_longer=True)`` to ``minlen`` = the training shingle length): with 20 s training
        shingles, a 10 s shingle becomes 20 s and a 7 s one 21 s; longer shingles are unchanged."""
        length = shingles.shape[-1]
        if length >= self.shingle_samples:
            return shingles
        return shingles.repeat(*([1] * (shingles.ndim - 1)), math.ceil(self.shingle_samples / length))

    def spectrogram(self, shingles: torch.Tensor) -> torch.Tensor:
        """(S, samples) → pooled CQT magnitude (S, 1, bins, frames), after ``prepare``."""
        return self.cqt(self.prepare(shingles)).unsqueeze(1)

    def embed(self, spec: torch.Tensor) -> torch.Tensor:
        """(S, 1, bins, frames) → (S, zdim)."""
        h = self.backbone(self.frontend(spec))
        return self.proj(self.pool(h))

    def forward(self, shingles: torch.Tensor) -> torch.Tensor:
        return self.embed(self.spectrogram(shingles))


# ---------------------------------------------------------------- shingling


def shingle_starts(n_samples: int, length: int, hop: int) -> list[int]:
    """Start samples of the shingles of a signal, as the official test code cuts them:
    1 + ceil((n - length) / hop) shingles (one when the signal is shorter than a shingle)."""
    if length <= 0 or hop <= 0:
        raise ValueError("shingle length and hop must be positive")
    count = max(math.ceil((n_samples - length) / hop), 0) + 1
    return [i * hop for i in range(count)]


def shingle(audio: torch.Tensor, length: int, hop: int) -> torch.Tensor:
    """Cut a 1-D signal into (S, length) shingles. Signals are extended by repeating them from
    their start (the official "repeat" padding) until the last shingle is full."""
    if audio.ndim != 1 or audio.numel() == 0:
        raise ValueError("expected a non-empty 1-D signal")
    starts = shingle_starts(audio.numel(), length, hop)
    needed = starts[-1] + length
    if audio.numel() < needed:
        audio = audio.repeat(math.ceil(needed / audio.numel()))[:needed]
    return audio.unfold(0, length, hop)[: len(starts)]


# ---------------------------------------------------------------- checkpoints


class CheckpointError(UserError):
    """A CLEWS checkpoint that cannot be read or does not match the architecture."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The model state dict of an official CLEWS checkpoint (Lightning Fabric ``.ckpt``: a dict
    holding it under ``model``), a bare state dict saved with torch, or a ``.safetensors`` file.

    Pickled parts are read with ``core.safepickle.load_checkpoint`` (weights-only): tensors and plain
    data are rebuilt, the pickled OmegaConf configuration becomes inert data, and a file that names
    any other code is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--checkpoint {path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any parse failure is a bad file
            raise CheckpointError(f"--checkpoint {path}: not a readable safetensors file ({err})") from err
    try:
        obj = load_checkpoint(path)  # weights-only; the official OmegaConf config becomes inert data
    except UserError as err:
        raise CheckpointError(f"--checkpoint {err}") from err
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"--checkpoint {path}: no model state dict found (expected a dict of tensors "
                              "or a dict holding one under 'model')")
    # DDP / Fabric wrappers add a prefix when a wrapped module was saved; drop it.
    for prefix in ("module.", "_forward_module."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def config_from_state_dict(state: dict[str, torch.Tensor]) -> ClewsConfig:
    """Architecture sizes read from tensor shapes. Stage strides are not stored in weights: a
    4-stage backbone uses the published (1, 2, 2, 1)."""
    try:
        c0 = state["frontend.1.weight"].shape[0]
        c1 = state["frontend.4.weight"].shape[0]
        n_bins = state["cqt.0.cqt_kernels_real"].shape[0]
        zdim = state["proj.1.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"not a CLEWS state dict: missing {err.args[0]!r}") from None
    outs = []
    i = 0
    while f"backbone.{i}.convs.5.conv.weight" in state:
        outs.append(int(state[f"backbone.{i}.convs.5.conv.weight"].shape[0]))
        i += 1
    blocks: list[int] = []
    channels: list[int] = []
    for c in outs:  # consecutive blocks with the same width form a stage
        if channels and channels[-1] == c:
            blocks[-1] += 1
        else:
            channels.append(c)
            blocks.append(1)
    if len(channels) != 4:
        raise CheckpointError(f"not a CLEWS state dict: expected 4 backbone stages, found {len(channels)}")
    default = ClewsConfig()
    return ClewsConfig(cqt_octaves=n_bins // default.cqt_bins_per_octave, frontend_channels=(c0, c1),
                       blocks=tuple(blocks), channels=tuple(channels), zdim=zdim)


def load_clews(path: Path, device: str | torch.device = "cpu") -> ClewsModel:
    """Build the model that fits a checkpoint and load its weights strictly, in eval mode."""
    state = read_state_dict(path)
    cfg = config_from_state_dict(state)
    with torch.device("meta"):  # no random init of 200M weights that are overwritten at once
        model = ClewsModel(cfg)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise CheckpointError(f"--checkpoint {path}: weights do not fit the CLEWS model ({first})") from err
    return model.to(device).eval()
