"""faster-whisper transcription that also returns, per 30 s window, the exact tokens fed to the decoder.

faster-whisper's ``generate_segments`` yields text segments but not the prompt and generated ids
of each window, which the teacher-forced feature pass needs. :func:`transcribe_many` is that same
seek loop (greedy with temperature fallback, condition on previous text, timestamps, no-speech
skipping), calling faster-whisper's own ``get_prompt`` and ``_split_segments_by_timestamps`` and
following its ``generate_with_fallback``; it leaves out what wealy never uses (VAD, word timestamps,
clip ranges, hotwords). A test checks it gives the same text as ``WhisperModel.transcribe``.

Songs are decoded in lockstep: up to ``batch_size`` songs are in flight, and each round decodes the
current window of every one of them in one CTranslate2 ``generate`` call per prompt length
(CTranslate2 needs the start-of-transcript token at the same position in a batch). At batch 1
the decoder is bound by reading its weights once per token; a batch reads them once for all.
A window whose greedy result fails faster-whisper's checks (too repetitive, too unlikely) falls
back to sampling at rising temperatures, as in faster-whisper's ``generate_with_fallback``, with a
seed taken from the window itself (see :func:`_with_fallback`).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import TranscriptionOptions, get_compression_ratio, get_suppressed_tokens

from wealy_cli.core.errors import UserError


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
    seed: int = 0  # mixed with each window's content into the seed of its temperature fallback
    max_new_tokens: int | None = None  # tokens generated per window at most (None: Whisper's limit, 224)


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


class Transcriber(WhisperModel):
    """faster-whisper's model on a local CTranslate2 directory, able to open a fresh replica of itself."""

    def __init__(self, model_dir: Path, device: str, device_index: int, compute_type: str, cpu_threads: int) -> None:
        super().__init__(str(model_dir), device=device, device_index=device_index, compute_type=compute_type,
                         cpu_threads=cpu_threads, local_files_only=True)
        self._replica = dict(model_path=str(model_dir), device=device, device_index=device_index,
                             compute_type=self.model.compute_type, intra_threads=cpu_threads)

    def fresh_replica(self) -> ctranslate2.models.Whisper:
        """The same model in a new CTranslate2 object (new worker thread, new random generator)."""
        return ctranslate2.models.Whisper(**self._replica)


def open_model(model_dir: Path, device: str = "cpu", device_index: int = 0, compute_type: str = "auto",
               cpu_threads: int = 0) -> Transcriber:
    """faster-whisper on a local CTranslate2 directory (never reaches a model hub)."""
    if not (Path(model_dir) / "tokenizer.json").is_file():
        raise UserError(f"{model_dir}: tokenizer.json missing (faster-whisper would fetch it from the hub)")
    try:
        return Transcriber(Path(model_dir), device, device_index, compute_type, cpu_threads)
    except ValueError as err:  # e.g. an unsupported compute type on this device
        raise UserError(f"--compute-type {compute_type}: {err}") from err


def transcribe(model: Transcriber, audio: np.ndarray, options: DecodeOptions,
               keep_encoder_output: bool = False) -> Transcript:
    """Decode one song (16 kHz mono); see :func:`transcribe_many`."""
    ((_, result),) = transcribe_many(model, [(0, audio)], options, keep_encoder_output=keep_encoder_output)
    if isinstance(result, Exception):
        raise result
    return result


def transcribe_many(model: Transcriber, songs: Iterable[tuple[object, np.ndarray]], options: DecodeOptions,
                    batch_size: int = 8, keep_encoder_output: bool = False,
                    ) -> Iterator[tuple[object, Transcript | Exception]]:
    """Decode ``(key, audio)`` pairs, up to ``batch_size`` songs in lockstep; yields ``(key, transcript)``
    as each song finishes (not in input order), or ``(key, error)`` for a song whose audio Whisper
    cannot take. ``keep_encoder_output`` keeps each window's encoder output (CPU models only), so
    the feature pass need not run the encoder a second time."""
    pending = iter(songs)
    active: list[_Song] = []
    while True:
        while len(active) < max(1, batch_size):
            item = next(pending, None)
            if item is None:
                break
            key, audio = item
            try:
                song = _Song.start(model, key, audio, options)
            except (RuntimeError, ValueError) as err:
                yield key, err
                continue
            if song.finished:
                yield key, song.transcript
            else:
                active.append(song)
        if not active:
            return
        _decode_round(model, active, options, keep_encoder_output)
        for song in [s for s in active if s.finished]:
            active.remove(song)
            yield song.key, song.transcript


@dataclass
class _Step:
    """A song's current window, before decoding."""

    song: _Song
    mel: np.ndarray
    prompt: list[int]
    segment_size: int
    time_offset: float


@dataclass
class _Song:
    """Seek-loop state of one song (faster-whisper's ``generate_segments``, one window at a time)."""

    key: object
    features: np.ndarray  # log-mel of the whole unpadded audio
    tokenizer: Tokenizer
    fw_options: TranscriptionOptions
    transcript: Transcript
    all_tokens: list[int]
    prompt_reset_since: int = 0
    seek: int = 0

    @classmethod
    def start(cls, model: WhisperModel, key: object, audio: np.ndarray, options: DecodeOptions) -> _Song:
        fx = model.feature_extractor
        features = fx(audio)  # log-mel of the unpadded audio; each window is padded afterwards
        language, probability = _language(model, features, options.language)
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
        prompt = tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
        return cls(key, features, tokenizer, _faster_whisper_options(tokenizer, options),
                   Transcript(language, probability, len(audio) / fx.sampling_rate), list(prompt))

    @property
    def finished(self) -> bool:
        return self.seek >= self.features.shape[-1] - 1

    def next_step(self, model: WhisperModel) -> _Step:
        fx = model.feature_extractor
        segment_size = min(fx.nb_max_frames, self.features.shape[-1] - 1 - self.seek)
        mel = pad_or_trim(self.features[:, self.seek:self.seek + segment_size])
        prompt = model.get_prompt(self.tokenizer, self.all_tokens[self.prompt_reset_since:])
        return _Step(self, mel, prompt, segment_size, self.seek * fx.time_per_frame)

    def advance(self, model: WhisperModel, step: _Step, decoded, avg_logprob: float, temperature: float,
                options: DecodeOptions, audio_features: np.ndarray | None) -> None:
        """Record the decoded window and move the seek position, as faster-whisper does."""
        fx = model.feature_extractor
        generated = list(decoded.sequences_ids[0])
        fed = step.prompt + generated
        if len(generated) >= generation_limits(model, len(step.prompt), options)[1]:  # stopped by the
            fed = fed[:-1]  # length limit (no end-of-text): the last token was generated, never fed
        window = Window(step.time_offset, step.time_offset + step.segment_size * fx.time_per_frame, step.mel, fed,
                        len(step.prompt), "", temperature, no_speech=False, audio_features=audio_features)
        self.transcript.windows.append(window)
        if _no_speech(decoded, avg_logprob, options):
            window.no_speech = True
            self.seek += step.segment_size
            return
        segments, self.seek, _ = model._split_segments_by_timestamps(
            tokenizer=self.tokenizer, tokens=generated, time_offset=step.time_offset,
            segment_size=step.segment_size, segment_duration=step.segment_size * fx.time_per_frame, seek=self.seek)
        for segment in segments:
            text = self.tokenizer.decode(segment["tokens"])
            if segment["start"] == segment["end"] or not text.strip():
                continue
            self.all_tokens.extend(segment["tokens"])
            window.text += text
        if not options.condition_on_previous_text or temperature > options.prompt_reset_on_temperature:
            self.prompt_reset_since = len(self.all_tokens)


def _decode_round(model: Transcriber, songs: list[_Song], options: DecodeOptions, keep: bool) -> None:
    """Decode the current window of every song: one greedy ``generate`` per prompt length."""
    groups: dict[int, list[_Step]] = {}
    for song in songs:
        step = song.next_step(model)
        groups.setdefault(len(step.prompt), []).append(step)
    for steps in groups.values():
        encoded, kept = _encode(model, [s.mel for s in steps])
        fw_options = steps[0].song.fw_options  # suppressed tokens are the same for every language
        limit, _ = generation_limits(model, len(steps[0].prompt), options)  # one prompt length per group
        results = model.model.generate(encoded, [s.prompt for s in steps],
                                       **_generate_arguments(model, fw_options, 0.0, limit))
        for i, (step, result) in enumerate(zip(steps, results)):
            single = functools.partial(_window_encoding, model, step, kept[i] if kept is not None else None)
            result, avg_logprob, temperature = _with_fallback(model, step, result, single, options)
            step.song.advance(model, step, result, avg_logprob, temperature, options,
                              kept[i] if keep and kept else None)


def _window_encoding(model: Transcriber, step: _Step, kept: np.ndarray | None) -> ctranslate2.StorageView:
    """One window's encoder output for the fallback: the kept one, or encoded again."""
    return _storage(kept[None]) if kept is not None else model.encode(step.mel)


def _with_fallback(model: Transcriber, step: _Step, greedy, encoded_window, options: DecodeOptions):
    """faster-whisper's ``generate_with_fallback`` given the greedy (temperature 0) result.

    Sampling runs on a fresh CTranslate2 replica: CTranslate2 seeds a thread's random generator
    once, at its first use, so only a new replica (new worker thread) honours a seed. The seed
    comes from the window's log-mel, so a window samples the same tokens whatever songs share its
    batch, whichever worker decodes it, and on every rerun."""
    fw = step.song.fw_options
    tokenizer = step.song.tokenizer
    tried = [(greedy, *_verdict(greedy, tokenizer, fw), 0.0)]  # (result, avg_logprob, ratio, fallback, T)
    if not tried[0][3]:
        return greedy, tried[0][1], 0.0
    if len(fw.temperatures) > 1:
        ctranslate2.set_random_seed(zlib.crc32(step.mel.tobytes(), options.seed) % 0xFFFFFFFF)
        sampler = model.fresh_replica()
        window = encoded_window()
        for temperature in fw.temperatures[1:]:
            (result,) = sampler.generate(window, [step.prompt], **_generate_arguments(
                model, fw, temperature, generation_limits(model, len(step.prompt), options)[0]))
            tried.append((result, *_verdict(result, tokenizer, fw), temperature))
            if not tried[-1][3]:
                return result, tried[-1][1], temperature
    # every temperature failed: the most likely result not too repetitive, reported at the last temperature
    below = [t for t in tried if fw.compression_ratio_threshold is None or t[2] <= fw.compression_ratio_threshold]
    best = max(below or tried, key=lambda t: t[1])
    return best[0], best[1], fw.temperatures[-1]


def _encode(model: WhisperModel, mels: list[np.ndarray]) -> tuple[ctranslate2.StorageView, list[np.ndarray] | None]:
    """Encoder output of a batch of windows, and on CPU each window's output as an array.

    On CPU windows are encoded one at a time (a batch is no faster there) so that a window's
    encoder output, and so its tokens and rows, never depend on the songs it shares a batch with."""
    if model.model.device != "cpu":
        return model.encode(np.stack(mels)), None
    outputs = [np.array(model.encode(mel))[0] for mel in mels]
    return _storage(np.stack(outputs)), outputs


def _storage(array: np.ndarray) -> ctranslate2.StorageView:
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(array))


def generation_limits(model: WhisperModel, prompt_length: int, options: DecodeOptions) -> tuple[int, int]:
    """(``max_length`` for CTranslate2's ``generate``, the most tokens it then generates).

    CTranslate2's Whisper generates at most min(max_length // 2, max_length − prompt_length + 1)
    tokens (openai's rule: half the 448-token text context, and what the context has left). A
    window that generated that many stopped at the limit, not at an end-of-text. With
    ``max_new_tokens`` below that, max_length is chosen so the rule gives exactly it."""
    most = min(model.max_length // 2, model.max_length - prompt_length + 1)
    wanted = options.max_new_tokens
    if wanted is None or wanted >= most:
        return model.max_length, most
    return max(2 * wanted, wanted + prompt_length - 1), wanted


def _generate_arguments(model: WhisperModel, fw: TranscriptionOptions, temperature: float,
                        limit: int) -> dict:
    """The arguments of faster-whisper's ``generate`` call at ``temperature``, stopping at ``limit``."""
    if temperature > 0:
        search = dict(beam_size=1, num_hypotheses=fw.best_of, sampling_topk=0, sampling_temperature=temperature)
    else:
        search = dict(beam_size=fw.beam_size, patience=fw.patience)
    return dict(
        length_penalty=fw.length_penalty, repetition_penalty=fw.repetition_penalty,
        no_repeat_ngram_size=fw.no_repeat_ngram_size, max_length=limit, return_scores=True,
        return_no_speech_prob=True, suppress_blank=fw.suppress_blank, suppress_tokens=fw.suppress_tokens,
        max_initial_timestamp_index=int(round(fw.max_initial_timestamp / model.time_precision)), **search)


def _verdict(result, tokenizer: Tokenizer, fw: TranscriptionOptions) -> tuple[float, float, bool]:
    """(average log-probability, compression ratio, needs fallback): faster-whisper's rules."""
    tokens = result.sequences_ids[0]
    avg_logprob = result.scores[0] * len(tokens) ** fw.length_penalty / (len(tokens) + 1)
    ratio = get_compression_ratio(tokenizer.decode(tokens).strip())
    too_repetitive = fw.compression_ratio_threshold is not None and ratio > fw.compression_ratio_threshold
    unlikely = fw.log_prob_threshold is not None and avg_logprob < fw.log_prob_threshold
    silence = fw.no_speech_threshold is not None and result.no_speech_prob > fw.no_speech_threshold and unlikely
    return avg_logprob, ratio, (too_repetitive or unlikely) and not silence


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


def _faster_whisper_options(tokenizer: Tokenizer, options: DecodeOptions) -> TranscriptionOptions:
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
