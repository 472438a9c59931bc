"""Transcriptions: cleaning, tokenising, and whether one is usable lyrics.

Whisper on music often returns nothing, "[Music]" annotations, la-la syllables, or a phrase
repeated in a loop (a hallucination). The ``modified-*`` baselines need to know which
transcriptions are real lyrics. A transcription is *valid* when all of these hold:

1. it has at least ``min_words`` (10) content words — words that are neither annotations nor
   syllables;
2. annotations ("[Music]", "(instrumental)", "♪", the bare words music/instrumental/applause)
   and vocal syllables ("la", "na-na", "ooh", "mmm", ...) make up at most ``max_filler_share``
   (50 %) of all words;
3. the occurrences of the most frequent bigram or trigram of content words cover at most
   ``max_ngram_share`` (50 %) of the content words (more is a repeated-phrase loop, e.g.
   "thank you thank you ..."; a chorus repeated in real lyrics covers far less).

The original research code also required five ASCII letters, which rejects every lyric in a
non-Latin script; that rule is deliberately absent. Words are Unicode word runs; in scripts
written without spaces (Chinese, Japanese kana, Thai) every character counts as one word, so
such lyrics are not rejected for having "too few words".
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from wealy_cli.core.errors import UserError

# A bracketed annotation or a music-note run, removed before counting words.
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|[♪♫♬♩]+")
# One word: a character of a script without spaces, or a run of letters/digits (with apostrophes).
_WORD = re.compile(r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
                   r"|[^\W_]+(?:['’][^\W_]+)*")
_ANNOTATION_WORDS = frozenset({"music", "instrumental", "applause", "silence", "inaudible", "laughter"})
# Vocal syllables, alone or chained: la, lalala, na-na (split by the tokenizer), ooh, mmm, doo ...
_SYLLABLES = re.compile(r"(?:la|na|da|du|doo|ba|pa|sha|dum|oo+|o+h+|a+h+|u+h+|m+|h+m+|wo+|whoa|woah|yeah)+")


@dataclass(frozen=True)
class ValidityRules:
    min_words: int = 10
    max_filler_share: float = 0.5
    max_ngram_share: float = 0.5


def clean(text: str) -> str:
    """Transcription without bracketed annotations and music notes, whitespace collapsed."""
    return " ".join(_ANNOTATION.sub(" ", text or "").split())


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (see module docstring for scripts without spaces)."""
    return [w.lower() for w in _WORD.findall(text or "")]


def _is_filler(word: str) -> bool:
    return word in _ANNOTATION_WORDS or _SYLLABLES.fullmatch(word) is not None


def invalid_reason(text: str, rules: ValidityRules = ValidityRules()) -> str | None:
    """Why ``text`` is not usable lyrics, or None when it is valid."""
    annotations = len(_ANNOTATION.findall(text or ""))
    tokens = words(clean(text))
    content = [w for w in tokens if not _is_filler(w)]
    fillers = annotations + len(tokens) - len(content)
    if len(content) < rules.min_words:
        return f"{len(content)} content words (< {rules.min_words})"
    if fillers / (fillers + len(content)) > rules.max_filler_share:
        return f"{fillers} of {fillers + len(content)} words are annotations or syllables"
    for n in (2, 3):
        grams = list(zip(*(content[i:] for i in range(n))))
        gram, count = Counter(grams).most_common(1)[0]
        if count * n / len(content) > rules.max_ngram_share:
            return f"repeated {n}-gram {' '.join(gram)!r} ({count}×) covers {count * n} of {len(content)} words"
    return None


def is_valid(text: str, rules: ValidityRules = ValidityRules()) -> bool:
    """True when ``text`` passes every rule of the module docstring."""
    return invalid_reason(text, rules) is None


# Whisper's vocabularies put every text token below 50257: the English-only end-of-text is 50256
# (never fed to the decoder, so never in a stored window), the multilingual one 50257; special,
# language, task and timestamp tokens all come after.
FIRST_SPECIAL_TOKEN = 50257


def sung_rows(attrs: dict) -> np.ndarray:
    """Which rows of a stored Whisper item belong to sung text tokens: a window's rows are its
    ``prompt_tokens`` prompt rows (previous text, start-of-transcript, language, task) then one
    row per generated token; rows of special and timestamp tokens are not sung text either."""
    masks = []
    for window in attrs.get("windows") or []:
        tokens = np.asarray(window["tokens"], dtype=np.int64)
        generated = np.arange(len(tokens)) >= int(window["prompt_tokens"])
        masks.append(generated & (tokens < FIRST_SPECIAL_TOKEN))
    return np.concatenate(masks) if masks else np.zeros(0, dtype=bool)


def sung_features(store: Any, key: str) -> np.ndarray:
    """The feature rows of an item's sung tokens (``sung_rows``), from a Whisper feature store;
    a UserError when the store does not record one token per row (SBERT, encoder features)."""
    rows = np.asarray(store[key])
    mask = sung_rows(store.attrs(key))
    if len(mask) != len(rows):
        raise UserError(f"--store {store.directory}: item {key} does not record one Whisper token per feature row, "
                        "so its sung rows are unknown (they need 'wealy extract whisper' decoder features); "
                        "use --rows all")
    return rows[mask]
