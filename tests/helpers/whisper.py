"""transformers' own Whisper as an independent reference for wealy's PyTorch Whisper."""

from __future__ import annotations

import numpy as np
import torch
from transformers import (
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from wealy_cli.whisper.model import to_transformers_state_dict


def hf_twin(network) -> WhisperForConditionalGeneration:
    """transformers' own Whisper implementation holding the same weights."""
    d = network.dims
    config = WhisperConfig(vocab_size=d.n_vocab, num_mel_bins=d.n_mels, d_model=d.n_text_state,
                           encoder_layers=d.n_audio_layer, decoder_layers=d.n_text_layer,
                           encoder_attention_heads=d.n_audio_head, decoder_attention_heads=d.n_text_head,
                           encoder_ffn_dim=4 * d.n_audio_state, decoder_ffn_dim=4 * d.n_text_state,
                           max_source_positions=d.n_audio_ctx, max_target_positions=d.n_text_ctx)
    model = WhisperForConditionalGeneration(config).eval()
    model.load_state_dict(to_transformers_state_dict(network), strict=True)
    return model


class ForceTokens(LogitsProcessor):
    """Makes generate() emit exactly ``sequence`` (then end-of-text)."""

    def __init__(self, sequence: list[int], eot: int) -> None:
        self.sequence, self.eot = sequence, eot

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        target = self.sequence[n] if n < len(self.sequence) else self.eot
        forced = torch.full_like(scores, -float("inf"))
        forced[:, target] = 0.0
        return forced


def generate_rows(hf, mel: np.ndarray, tokens: list[int], n_prompt: int, eot: int) -> tuple[torch.Tensor, list[int]]:
    """Rows the decoder computes step by step in transformers' generate (KV cache, one token per step)."""
    out = GenerationMixin.generate(
        hf, input_features=torch.from_numpy(mel)[None], decoder_input_ids=torch.tensor([tokens[:n_prompt]]),
        logits_processor=LogitsProcessorList([ForceTokens(tokens, eot)]), do_sample=False, num_beams=1,
        max_new_tokens=448 - n_prompt, output_hidden_states=True, return_dict_in_generate=True,
        eos_token_id=eot, pad_token_id=eot)
    rows = torch.cat([step[-1][0] for step in out.decoder_hidden_states])  # last layer, after the final LayerNorm
    return rows, out.sequences[0].tolist()
