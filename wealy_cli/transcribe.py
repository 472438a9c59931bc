"""faster-whisper transcription that also returns, per 30 s window, the exact tokens fed to the decoder.

faster-whisper's ``generate_segments`` yields text segments but not the prompt and generated ids
of each window, which the teacher-forced feature pass needs. :func:`transcribe` is that same
seek loop (greedy with temperature fallback, condition on previous text, timestamps, no-speech
skipping), calling faster-whisper's own ``get_prompt``, ``generate_with_fallback`` and
``_split_segments_by_timestamps``; it leaves out what wealy never uses (VAD, word timestamps,
clip ranges, hotwords). A test checks it gives the same text as ``WhisperModel.transcribe``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

from .errors import UserError


@dataclass
class DecodeOptions:
    """Decoding settings (defaults: Whisper's, with the paper's prompt)."""

    language: str = "auto"  # "auto": detect once on the first 30 s; else a language code
    initial_prompt: str | None = "lyrics:"
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    log_prob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = True
    prompt_reset_on_temperature: float = 0.5
    best_of: int = 5
    seed: int = 0  # sampling seed for temperature fallback, reset per song: reruns are identical


@dataclass
class Window:
    """One 30 s decoding window."""

    start: float  # seconds
    end: float  # seconds of audio content in the window
    mel: np.ndarray  # (n_mels, 3000), padded after computing the log-mel on unpadded audio
    tokens: list[int]  # every token fed to the decoder: prompt + generated (final end-of-text excluded)
    n_prompt: int
    text: str  # text of the segments kept from this window ("" when skipped as no speech)
    temperature: float
    no_speech: bool
    audio_features: np.ndarray | None = None  # CTranslate2's encoder output (1500, d), when kept


@dataclass
class Transcript:
    language: str
    language_probability: float
    duration: float
    windows: list[Window] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(w.text for w in self.windows).strip()


def open_model(model_dir: Path, device: str = "cpu", device_index: int = 0, compute_type: str = "auto",
               cpu_threads: int = 0) -> WhisperModel:
    """faster-whisper on a local CTranslate2 directory (never reaches a model hub)."""
    if not (Path(model_dir) / "tokenizer.json").is_file():
        raise UserError(f"{model_dir}: tokenizer.json missing (faster-whisper would fetch it from the hub)")
    try:
        return WhisperModel(str(model_dir), device=device, device_index=device_index,
                            compute_type=compute_type, cpu_threads=cpu_threads, local_files_only=True)
    except ValueError as err:  # e.g. an unsupported compute type on this device
        raise UserError(f"--compute-type {compute_type}: {err}") from err


def transcribe(model: WhisperModel, audio: np.ndarray, options: DecodeOptions,
               keep_encoder_output: bool = False) -> Transcript:
    """Decode ``audio`` (16 kHz mono) window by window; see the module docstring.

    ``keep_encoder_output`` keeps each window's encoder output (CPU models only), so the feature
    pass need not run the encoder a second time."""
    ctranslate2.set_random_seed(options.seed)
    fx = model.feature_extractor
    features = fx(audio)  # log-mel of the unpadded audio; each window is padded afterwards
    content_frames = features.shape[-1] - 1
    language, probability = _language(model, features, options.language)
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
    fw_options = _faster_whisper_options(tokenizer, options, model.model.is_multilingual)
    result = Transcript(language, probability, len(audio) / fx.sampling_rate)

    all_tokens: list[int] = []
    if options.initial_prompt:
        all_tokens.extend(tokenizer.encode(" " + options.initial_prompt.strip()))
    prompt_reset_since = 0
    seek = 0
    while seek < content_frames:
        time_offset = seek * fx.time_per_frame
        segment_size = min(fx.nb_max_frames, content_frames - seek)
        mel = pad_or_trim(features[:, seek:seek + segment_size])
        prompt = model.get_prompt(tokenizer, all_tokens[prompt_reset_since:])
        encoded = model.encode(mel)
        decoded, avg_logprob, temperature, _ = model.generate_with_fallback(encoded, prompt, tokenizer, fw_options)
        generated = list(decoded.sequences_ids[0])
        fed = prompt + generated
        if len(fed) >= model.max_length:  # stopped by the length limit: the last token was never fed
            fed = fed[:-1]
        window = Window(time_offset, time_offset + segment_size * fx.time_per_frame, mel, fed, len(prompt),
                        "", temperature, no_speech=False,
                        audio_features=np.array(encoded)[0] if keep_encoder_output else None)
        result.windows.append(window)

        if _no_speech(decoded, avg_logprob, options):
            window.no_speech = True
            seek += segment_size
            continue
        segments, seek, _ = model._split_segments_by_timestamps(
            tokenizer=tokenizer, tokens=generated, time_offset=time_offset, segment_size=segment_size,
            segment_duration=segment_size * fx.time_per_frame, seek=seek)
        for segment in segments:
            text = tokenizer.decode(segment["tokens"])
            if segment["start"] == segment["end"] or not text.strip():
                continue
            all_tokens.extend(segment["tokens"])
            window.text += text
        if not options.condition_on_previous_text or temperature > options.prompt_reset_on_temperature:
            prompt_reset_since = len(all_tokens)
    return result


def _language(model: WhisperModel, features: np.ndarray, language: str) -> tuple[str, float]:
    if not model.model.is_multilingual:
        if language not in ("auto", "en"):
            raise UserError(f"--language {language}: this model is English-only (use 'en' or 'auto')")
        return "en", 1.0
    if language != "auto":
        return language, 1.0
    detected, probability, _ = model.detect_language(features=features)  # first 30 s only
    return detected, float(probability)


def _no_speech(decoded, avg_logprob: float, options: DecodeOptions) -> bool:
    """faster-whisper's rule for skipping a window as silence."""
    if options.no_speech_threshold is None or decoded.no_speech_prob <= options.no_speech_threshold:
        return False
    return not (options.log_prob_threshold is not None and avg_logprob > options.log_prob_threshold)


def _faster_whisper_options(tokenizer: Tokenizer, options: DecodeOptions, multilingual: bool) -> TranscriptionOptions:
    return TranscriptionOptions(
        beam_size=1, best_of=options.best_of, patience=1.0, length_penalty=1.0, repetition_penalty=1.0,
        no_repeat_ngram_size=0, log_prob_threshold=options.log_prob_threshold,
        no_speech_threshold=options.no_speech_threshold,
        compression_ratio_threshold=options.compression_ratio_threshold,
        condition_on_previous_text=options.condition_on_previous_text,
        prompt_reset_on_temperature=options.prompt_reset_on_temperature,
        temperatures=list(options.temperatures), initial_prompt=options.initial_prompt, prefix=None,
        suppress_blank=True, suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
        without_timestamps=False, max_initial_timestamp=1.0, word_timestamps=False,
        prepend_punctuations="", append_punctuations="", multilingual=False, max_new_tokens=None,
        clip_timestamps=[], hallucination_silence_threshold=None, hotwords=None,
    )
