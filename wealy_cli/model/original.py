"""Import the original research code's checkpoints into wealy's format, without running their code.

An original checkpoint is a Lightning-Fabric ``.ckpt``: a pickled dict ``{"model": state_dict,
"optim": ..., "sched": ..., "conf": DictConfig, "epoch": ..., "lr": ..., "cost_best": ...}``
next to a ``configuration.yaml`` (OmegaConf) whose ``model:`` section has the sizes and whose
``data:`` section says which features and dataset the model was trained on.

Loading is safe by default: ``torch.load(weights_only=True)`` rebuilds only tensors and plain
containers. The training config inside the file is an OmegaConf object; its classes are replaced
by inert stand-ins that only hold the pickled data (OmegaConf itself is never imported or called),
so a published checkpoint loads without trusting it. Anything else a pickle names could run code
while loading, so it is refused unless the caller passes ``trust_pickle=True``.

The result is ``<out>/best.safetensors`` + ``best.config.json`` (``model.save_weights``), checked
by loading it back with ``model.load_model``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from wealy_cli.core.errors import UserError
from wealy_cli.core.safepickle import load_checkpoint, plain
from wealy_cli.model.network import ModelConfig, build_model, load_model, save_weights

# Original data.embedding_type → wealy's feature name.
FEATURES = {
    "last_hidden_states": "whisper",
    "last_hidden_states_en": "whisper-en",
    "sbert": "sbert",
    "encoder": "whisper-encoder",
}
# Original data.dataset_name → wealy's dataset name (``wealy_cli.core.datasets``).
DATASETS = {"shs": "shs", "shs100k": "shs", "lyric-covers": "lyric-covers", "lyc": "lyric-covers",
            "discogs-vi": "discogs-vi", "dvi": "discogs-vi"}

# Prefixes added by wrappers (DDP, Fabric, torch.compile) in front of the module names.
_WRAPPER_PREFIXES = ("_forward_module.", "module.", "_orig_mod.")
# Original entries with no counterpart: the loss module, recomputed sinusoids, empty conv stack.
_DROPPED = (re.compile(r"^_loss_fn\."), re.compile(r"^positional_encoding\.pe$"))

def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The model's state dict inside a checkpoint: under "model" (Fabric), "state_dict"
    (Lightning), or the checkpoint itself."""
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner.state_dict()
            if _is_state_dict(inner):
                return dict(inner)
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
    raise UserError(f"{path}: no model state dict found (expected a 'model' entry; found {keys})")


def map_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original parameter names → wealy's. They are the same modules; only wrapper prefixes and
    entries without a counterpart (loss module, stored sinusoid table) go."""
    mapped = {}
    for name, tensor in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, changed = name[len(prefix):], True
        if any(rule.match(name) for rule in _DROPPED):
            continue
        if name.startswith("conv_layers."):
            raise UserError("checkpoint has convolutional downsampling blocks (conv_blocks > 0), "
                            "which wealy's model does not implement")
        mapped[name] = tensor.detach().to("cpu", torch.float32)
    return mapped


# ---------------------------------------------------------------- configuration.yaml


@dataclass
class OriginalConfig:
    """What an original ``configuration.yaml`` says about a model."""

    model: ModelConfig
    dataset: str | None = None
    features: str | None = None  # wealy feature name, e.g. "whisper"
    embedding_type: str | None = None  # the original's name, e.g. "last_hidden_states"
    chunk_size: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)


_INTERPOLATION = re.compile(r"\$\{([^}]*)\}")


def _lookup(root: dict[str, Any], dotted: str) -> Any:
    node: Any = root
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def resolve_interpolations(data: Any, root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """Resolve OmegaConf ``${a.b}`` references to other keys of the same file. Resolver calls
    (``${oc.env:X}``) and missing keys are left as written; ``read_original_config`` refuses them
    only where a value it needs contains one."""
    root = data if root is None else root
    if isinstance(data, dict):
        return {k: resolve_interpolations(v, root, depth) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_interpolations(v, root, depth) for v in data]
    if not isinstance(data, str) or "${" not in data or depth > 10:
        return data
    whole = _INTERPOLATION.fullmatch(data)
    try:
        if whole and ":" not in whole.group(1):
            return resolve_interpolations(_lookup(root, whole.group(1).strip()), root, depth + 1)
        return _INTERPOLATION.sub(
            lambda m: str(resolve_interpolations(_lookup(root, m.group(1).strip()), root, depth + 1))
            if ":" not in m.group(1) else m.group(0), data)
    except KeyError:
        return data


def _check_resolved(value: Any, where: str, source: str) -> Any:
    text = yaml.safe_dump(value) if isinstance(value, (dict, list)) else str(value)
    if "${" in text:
        raise UserError(f"{source}: '{where}' holds an OmegaConf interpolation that cannot be resolved "
                        f"from the file itself ({text.strip()[:80]}); replace it with its value")
    return value


def original_config_from_dict(data: dict[str, Any], source: str) -> OriginalConfig:
    """Map the original keys: ``model.*`` → ModelConfig, ``data.use_avg_pooling`` → arch,
    ``data.embedding_type`` → features, ``data.dataset_name`` → dataset."""
    data = resolve_interpolations(data)
    model = data.get("model")
    if not isinstance(model, dict):
        raise UserError(f"{source}: no 'model:' section (is this an original configuration.yaml?)")
    model = _check_resolved(model, "model", source)
    section = data.get("data") if isinstance(data.get("data"), dict) else {}
    if int(model.get("conv_blocks") or 0) > 0:
        raise UserError(f"{source}: model.conv_blocks = {model['conv_blocks']}: convolutional "
                        "downsampling is not implemented in wealy")
    values = dict(model)
    pe = model.get("positional_encoding")
    if isinstance(pe, dict):  # the original used positions only for type "sinusoidal"
        values["positional_encoding"] = bool(pe.get("enabled")) and str(pe.get("type", "")).lower() == "sinusoidal"
        if pe.get("max_length"):
            values["max_positions"] = int(pe["max_length"])
    avg = bool(_check_resolved(section.get("use_avg_pooling", False), "data.use_avg_pooling", source))
    values["arch"] = "avgmlp" if avg else "transformer"
    cfg = ModelConfig.from_dict(values)
    embedding_type = section.get("embedding_type")
    dataset = section.get("dataset_name")
    chunk = section.get("chunk_size")
    return OriginalConfig(
        model=cfg,
        dataset=DATASETS.get(str(dataset).lower(), str(dataset)) if dataset else None,
        features=FEATURES.get(str(embedding_type), str(embedding_type)) if embedding_type else None,
        embedding_type=str(embedding_type) if embedding_type else None,
        chunk_size=int(chunk) if isinstance(chunk, int) else None,
        raw=data,
    )


def read_original_config(path: Path) -> OriginalConfig:
    """Read an original ``configuration.yaml`` (plain YAML; OmegaConf is not needed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with 'model:' and 'data:' sections")
    return original_config_from_dict(data, str(path))


# ---------------------------------------------------------------- import


# Keys of the original config that hold machine-specific paths; dropped before publishing.
_PATH_KEYS = {"path", "checkpoint", "working_dir", "logs", "cache"}


def portable_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The original config without its local paths (``path:`` section, checkpoint location)."""
    return {k: v for k, v in raw.items() if k not in _PATH_KEYS}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_checkpoint(checkpoint: Path, out_dir: Path, config: Path | None = None,
                      trust_pickle: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Convert an original ``.ckpt`` (+ its ``configuration.yaml``; without one, the config
    stored in the checkpoint is used) into ``out_dir/best.safetensors``. Returns ``out_dir``."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    obj = load_checkpoint(checkpoint, trust_pickle=trust_pickle)
    if config is not None:
        original = read_original_config(config)
    else:
        embedded = plain(obj.get("conf")) if isinstance(obj, dict) else None
        if not isinstance(embedded, dict):
            raise UserError(f"{checkpoint}: holds no training config; pass its configuration.yaml "
                            "with --config")
        original = original_config_from_dict(embedded, f"{checkpoint} (stored config)")
    state = map_state_dict(_state_dict_of(obj, checkpoint))
    model = build_model(original.model)
    _load_strict(model, state, checkpoint, original.model)
    payload = {
        "source": {"checkpoint": checkpoint.name, "sha256": sha256(checkpoint),
                   "epoch": obj.get("epoch") if isinstance(obj, dict) else None},
        "dataset": original.dataset, "features": original.features,
        "embedding_type": original.embedding_type, "chunk_size": original.chunk_size,
        "original_config": portable_config(original.raw), **(extra or {}),
    }
    save_weights(out_dir / "best", model, original.model, extra=_json_safe(payload))
    verify_import(out_dir, model)
    return out_dir


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: Path, cfg: ModelConfig) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise UserError(f"{source}: weights do not match the configuration (arch {cfg.arch}, "
                        f"input_channels {cfg.input_channels}): missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}, shape mismatch {wrong[:2]}")
    model.load_state_dict(state, strict=True)


@torch.no_grad()
def verify_import(out_dir: Path, reference: nn.Module, rows: int = 7) -> None:
    """Load the written files back and check that they give the same embeddings as the model
    built from the checkpoint's tensors."""
    loaded, cfg = load_model(out_dir)
    reference = reference.eval()
    x = torch.randn(2, rows, cfg.input_channels, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, rows, dtype=torch.bool)
    mask[1, rows // 2:] = False
    if not torch.equal(loaded(x, mask), reference(x, mask)):
        raise UserError(f"{out_dir}: the imported weights do not reproduce the checkpoint's "
                        "embeddings (the written file is damaged?)")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)
