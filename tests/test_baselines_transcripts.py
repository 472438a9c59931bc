"""Transcription validity rules (DESIGN §7, without the ASCII-letters rule)."""

from __future__ import annotations

import pytest

from wealy_cli.whisper.lyrics import invalid_reason, is_valid, words


@pytest.mark.parametrize("text", [
    "I walked along the river where the willows bend and called your name into the evening wind",
    "Я иду по улице одна и вспоминаю тебя снова и снова каждый вечер",  # Cyrillic
    "我们一起走过的日子永远不会忘记你的笑容",  # Chinese: no spaces, one word per character
    "Σε θυμάμαι κάθε βράδυ όταν πέφτει η βροχή στην άδεια πόλη μας ξανά",  # Greek
    "[Music] the night is young and we are free to run beneath the silver moon tonight [Music]",
])
def test_valid(text):
    assert is_valid(text), invalid_reason(text)


@pytest.mark.parametrize("text, reason", [
    ("", "0 content words"),
    ("[Music] [Music] ♪", "0 content words"),
    ("la la la la na na na ooh ooh mmm la-la-la sha-la-la", "0 content words"),
    ("short line of lyrics", "4 content words"),
    ("la la la la la la la la la la la la la la la la la la la la la la love you baby tonight "
     "my sweet darling come back home to me", "annotations or syllables"),
    ("thank you thank you thank you thank you thank you thank you", "repeated 2-gram 'thank you'"),
    ("I'm going to the I'm going to the I'm going to the I'm going to the store",
     "repeated"),
])
def test_invalid(text, reason):
    assert reason in (invalid_reason(text) or "")


def test_words_keep_apostrophes_and_split_cjk():
    assert words("Don't STOP believin'") == ["don't", "stop", "believin"]
    assert words("你好 world") == ["你", "好", "world"]
