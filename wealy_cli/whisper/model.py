"""A small PyTorch Whisper for feature extraction, loadable from CTranslate2 or transformers weights.

CTranslate2 decodes fast but exposes no hidden states, so wealy decodes with faster-whisper and
then runs *one* teacher-forced decoder pass here over each window's full input sequence
(prompt + generated tokens). With greedy decoding, those rows equal the rows the decoder
computed step by step. The module follows openai/whisper's layout and parameter names.

Weights come from a faster-whisper ``model.bin`` (CTranslate2 binary spec, read directly) or a
transformers checkpoint; :func:`to_transformers_state_dict` maps back for reference checks.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wealy_cli.core.errors import UserError


@dataclass(frozen=True)
class WhisperDims:
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int


# ---------------------------------------------------------------- the network


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)  # Whisper's key projection has no bias
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: Tensor, xa: Tensor | None = None, causal: bool = False) -> Tensor:
        source = x if xa is None else xa
        q, k, v = self.query(x), self.key(source), self.value(source)
        q, k, v = (t.unflatten(-1, (self.n_head, -1)).transpose(1, 2) for t in (q, k, v))
        # SDPA scales by 1/sqrt(d_head), the same as Whisper's d_head**-0.25 on both q and k.
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out(out.transpose(1, 2).flatten(2))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: Tensor, xa: Tensor | None = None, causal: bool = False) -> Tensor:
        x = x + self.attn(self.attn_ln(x), causal=causal)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_attn_ln(x), xa)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        d = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", torch.zeros(dims.n_audio_ctx, d))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(d, dims.n_audio_head) for _ in range(dims.n_audio_layer))
        self.ln_post = nn.LayerNorm(d)

    def forward(self, mel: Tensor) -> Tensor:
        """mel (B, n_mels, 3000) → (B, 1500, d)."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        d = dims.n_text_state
        self.token_embedding = nn.Embedding(dims.n_vocab, d)
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_text_ctx, d))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(d, dims.n_text_head, cross_attention=True) for _ in range(dims.n_text_layer))
        self.ln = nn.LayerNorm(d)

    def forward(self, tokens: Tensor, xa: Tensor) -> Tensor:
        """tokens (B, T), audio features (B, 1500, d) → last layer after the final LayerNorm (B, T, d).

        Right padding is harmless: with a causal mask no real position sees a later one."""
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = x.to(xa.dtype)
        for block in self.blocks:
            x = block(x, xa, causal=True)
        return self.ln(x)

    def logits(self, hidden: Tensor) -> Tensor:
        return hidden @ self.token_embedding.weight.to(hidden.dtype).T


class Whisper(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)


# ---------------------------------------------------------------- teacher-forced features


@torch.inference_mode()
def decoder_rows(model: Whisper, mels: Tensor | None, sequences: list[list[int]],
                 audio_features: Tensor | None = None) -> list[Tensor]:
    """One teacher-forced pass per window: rows (len(seq), d) for each window's fed tokens.

    ``mels`` (B, n_mels, 3000) on the model's device; ``audio_features`` may be given to skip
    the encoder. Rows are returned in float32 on the CPU."""
    xa = model.encoder(mels) if audio_features is None else audio_features
    longest = max(len(s) for s in sequences)
    tokens = torch.zeros(len(sequences), longest, dtype=torch.long)
    for i, seq in enumerate(sequences):
        tokens[i, : len(seq)] = torch.tensor(seq)
    hidden = model.decoder(tokens.to(xa.device), xa)
    return [hidden[i, : len(seq)].float().cpu() for i, seq in enumerate(sequences)]


@torch.inference_mode()
def greedy_tokens(model: Whisper, mel: Tensor, prompt: list[int], eot: int, max_new: int = 224) -> list[int]:
    """Plain argmax decoding (no suppression or timestamp rules): used to check a conversion
    against CTranslate2's greedy search run with the same (absent) rules."""
    xa = model.encoder(mel[None])
    tokens = list(prompt)
    for _ in range(max_new):
        hidden = model.decoder(torch.tensor([tokens], device=xa.device), xa)
        nxt = int(model.decoder.logits(hidden[0, -1]).argmax())
        if nxt == eot:
            break
        tokens.append(nxt)
    return tokens[len(prompt):]


# ---------------------------------------------------------------- CTranslate2 model.bin


_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}  # 5 = bf16 bits


def read_ct2_variables(path: Path) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 ``model.bin`` (binary spec ≤ 6), aliases resolved, weights
    as float32 (int8 weights are dequantised with their ``*_scale``)."""
    raw = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from(fmt, raw, pos)
        pos += struct.calcsize(fmt)
        return values[0]

    def string() -> str:
        nonlocal pos
        n = take("<H")
        text = raw[pos:pos + n - 1].decode("utf-8")
        pos += n
        return text

    version = take("<I")
    if version > 6:
        raise UserError(f"{path}: CTranslate2 binary version {version} is newer than this reader (≤ 6)")
    spec = string()
    if spec != "WhisperSpec":
        raise UserError(f"{path}: a {spec} model, not a Whisper model")
    take("<I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("<I")):
        name = string()
        shape = [take("<I") for _ in range(take("<B"))]
        dtype = _CT2_DTYPES[take("<B")]
        nbytes = take("<I")
        array = np.frombuffer(raw, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=pos)
        pos += nbytes
        variables[name] = array.reshape(shape)
    for _ in range(take("<I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return _dequantize(variables)


def _dequantize(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(name + "_scale")
        if value.dtype == np.int8 and scale is not None:  # ct2 int8: q = round(w * scale), per row
            value = value.astype(np.float32) / scale.astype(np.float32).reshape(-1, *([1] * (value.ndim - 1)))
        elif value.dtype == np.uint16:  # bfloat16 bits
            value = (value.astype(np.uint32) << 16).view(np.float32)
        out[name] = value
    return out


def _ct2_state_dict(v: dict[str, np.ndarray]) -> tuple[WhisperDims, dict[str, Tensor]]:
    def t(name: str) -> Tensor:
        return torch.from_numpy(np.asarray(v[name], dtype=np.float32).copy())

    sd: dict[str, Tensor] = {}

    def norm(src: str, dst: str) -> None:
        sd[dst + ".weight"], sd[dst + ".bias"] = t(src + "/gamma"), t(src + "/beta")

    def linear(src: str, dst: str) -> None:
        sd[dst + ".weight"], sd[dst + ".bias"] = t(src + "/weight"), t(src + "/bias")

    def fused(src: str, dsts: list[str]) -> None:
        weights, biases = t(src + "/weight").chunk(len(dsts)), t(src + "/bias").chunk(len(dsts))
        for dst, w, b in zip(dsts, weights, biases):
            sd[dst + ".weight"] = w
            if not dst.endswith(".key"):  # ct2 stores the (absent) key bias as zeros
                sd[dst + ".bias"] = b

    n_enc = len({m[1] for k in v if (m := re.match(r"encoder/layer_(\d+)/", k))})
    n_dec = len({m[1] for k in v if (m := re.match(r"decoder/layer_(\d+)/", k))})
    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            norm(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
            fused(f"{src}/self_attention/linear_0", [f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"])
            linear(f"{src}/self_attention/linear_1", f"{dst}.attn.out")
            if side == "decoder":
                norm(f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
                linear(f"{src}/attention/linear_0", f"{dst}.cross_attn.query")
                fused(f"{src}/attention/linear_1", [f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"])
                linear(f"{src}/attention/linear_2", f"{dst}.cross_attn.out")
            norm(f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
            linear(f"{src}/ffn/linear_0", f"{dst}.mlp.0")
            linear(f"{src}/ffn/linear_1", f"{dst}.mlp.2")
    linear("encoder/conv1", "encoder.conv1")
    linear("encoder/conv2", "encoder.conv2")
    sd["encoder.positional_embedding"] = t("encoder/position_encodings/encodings")
    norm("encoder/layer_norm", "encoder.ln_post")
    sd["decoder.token_embedding.weight"] = t("decoder/embeddings/weight")
    sd["decoder.positional_embedding"] = t("decoder/position_encodings/encodings")
    norm("decoder/layer_norm", "decoder.ln")
    dims = WhisperDims(
        n_mels=sd["encoder.conv1.weight"].shape[1],
        n_audio_ctx=sd["encoder.positional_embedding"].shape[0],
        n_audio_state=sd["encoder.conv1.weight"].shape[0],
        n_audio_head=int(v["encoder/num_heads"]),
        n_audio_layer=n_enc,
        n_vocab=sd["decoder.token_embedding.weight"].shape[0],
        n_text_ctx=sd["decoder.positional_embedding"].shape[0],
        n_text_state=sd["decoder.token_embedding.weight"].shape[1],
        n_text_head=int(v["decoder/num_heads"]),
        n_text_layer=n_dec,
    )
    return dims, sd


def load_ct2_whisper(directory: Path) -> Whisper:
    """PyTorch Whisper from a faster-whisper (CTranslate2) directory's ``model.bin``."""
    path = Path(directory) / "model.bin"
    try:
        dims, state = _ct2_state_dict(read_ct2_variables(path))
    except (KeyError, struct.error, ValueError) as err:
        raise UserError(f"{path}: not a readable CTranslate2 Whisper model ({type(err).__name__}: {err})") from err
    return _build(dims, state)


# ---------------------------------------------------------------- transformers checkpoints

# (transformers name, wealy/openai-whisper name); applied as regex substitutions in order.
_HF_NAMES = [
    (r"^model\.encoder\.embed_positions\.weight$", "encoder.positional_embedding"),
    (r"^model\.decoder\.embed_positions\.weight$", "decoder.positional_embedding"),
    (r"^model\.decoder\.embed_tokens\.", "decoder.token_embedding."),
    (r"^model\.encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^model\.decoder\.layer_norm\.", "decoder.ln."),
    (r"^model\.(encoder|decoder)\.layers\.", r"\1.blocks."),
    (r"^model\.encoder\.conv", "encoder.conv"),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
    (r"\.self_attn\.", ".attn."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.q_proj\.", ".query."), (r"\.k_proj\.", ".key."), (r"\.v_proj\.", ".value."),
    (r"\.out_proj\.", ".out."),
    (r"\.fc1\.", ".mlp.0."), (r"\.fc2\.", ".mlp.2."),
]
_TO_HF = [
    (r"^encoder\.positional_embedding$", "model.encoder.embed_positions.weight"),
    (r"^decoder\.positional_embedding$", "model.decoder.embed_positions.weight"),
    (r"^decoder\.token_embedding\.", "model.decoder.embed_tokens."),
    (r"^encoder\.ln_post\.", "model.encoder.layer_norm."),
    (r"^decoder\.ln\.", "model.decoder.layer_norm."),
    (r"^(encoder|decoder)\.blocks\.", r"model.\1.layers."),
    (r"^encoder\.conv", "model.encoder.conv"),
    (r"\.attn_ln\.", ".self_attn_layer_norm."),
    (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."),
    (r"\.mlp_ln\.", ".final_layer_norm."),
    (r"\.cross_attn\.", ".encoder_attn."),
    (r"\.attn\.", ".self_attn."),
    (r"\.query\.", ".q_proj."), (r"\.key\.", ".k_proj."), (r"\.value\.", ".v_proj."),
    (r"\.out\.", ".out_proj."),
    (r"\.mlp\.0\.", ".fc1."), (r"\.mlp\.2\.", ".fc2."),
]


def _rename(name: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def dims_from_transformers_config(config: dict) -> WhisperDims:
    return WhisperDims(
        n_mels=config["num_mel_bins"], n_audio_ctx=config["max_source_positions"],
        n_audio_state=config["d_model"], n_audio_head=config["encoder_attention_heads"],
        n_audio_layer=config["encoder_layers"], n_vocab=config["vocab_size"],
        n_text_ctx=config["max_target_positions"], n_text_state=config["d_model"],
        n_text_head=config["decoder_attention_heads"], n_text_layer=config["decoder_layers"],
    )


BIN_HINT = ("Convert it to safetensors where you trust it (transformers' save_pretrained writes "
            "model.safetensors), or use a directory that has one.")


def read_weight_file(file: Path) -> dict[str, Tensor]:
    """Tensors of one transformers weight file: ``*.safetensors`` (no code can run), or a
    ``pytorch_model*.bin`` read only through the weights-only loader (code in it is refused)."""
    file = Path(file)
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except (SafetensorError, OSError) as err:
            raise UserError(f"{file}: not a readable safetensors file ({err})") from err
    from wealy_cli.core.safepickle import load_checkpoint

    state = load_checkpoint(file, trust_hint=BIN_HINT)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise UserError(f"{file}: not a state dict (expected names mapped to tensors)")
    return state


def weight_files(directory: Path) -> list[Path]:
    """A transformers directory's weight files: safetensors when there are any, else .bin shards."""
    files = sorted(Path(directory).glob("*.safetensors")) or sorted(Path(directory).glob("pytorch_model*.bin"))
    if not files:
        raise UserError(f"{directory}: no *.safetensors or pytorch_model*.bin weights")
    return files


def load_transformers_whisper(directory: Path) -> Whisper:
    """PyTorch Whisper from a transformers checkpoint directory (config.json + safetensors/bin)."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    state: dict[str, Tensor] = {}
    for file in weight_files(directory):
        state.update(read_weight_file(file))
    mapped = {_rename(k, _HF_NAMES): v.float() for k, v in state.items() if k != "proj_out.weight"}
    return _build(dims_from_transformers_config(config), mapped)


def to_transformers_state_dict(model: Whisper) -> dict[str, Tensor]:
    """The model's weights under transformers' ``WhisperForConditionalGeneration`` names."""
    sd = {_rename(k, _TO_HF): v for k, v in model.state_dict().items()}
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]
    return sd


def _build(dims: WhisperDims, state: dict[str, Tensor]) -> Whisper:
    model = Whisper(dims)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"weights do not fit Whisper {asdict(dims)}: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")
    return model.eval()
