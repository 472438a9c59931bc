"""Dataset adapters on small fixtures in each format, and on the real split files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wealy_cli.core.datasets import DatasetError, load_split, make_key, split_key

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"ID3")
    return path


def test_shs_fixture(tmp_path):
    meta, audio = tmp_path / "meta", tmp_path / "audio"
    meta.mkdir()
    (meta / "SHS100K-TRAIN").write_text("1\t10\n1\t11\n2\t20\n2\t21\n")
    # clique 1 leaks from train; clique 3 has one version; clique 4 is fine
    (meta / "SHS100K-TEST").write_text("1\t12\n1\t13\n3\t30\n4\t40\n4\t41\n4\t42\n")
    for name in ("4-40", "4-41"):
        touch(audio / f"{name}.mp3")
    test = load_split("shs", "test", meta, audio)
    assert test.keys == ["4/40", "4/41", "4/42"]
    assert test.versions[0].path == audio / "4-40.mp3"
    assert test.dropped_leaked_versions == 2 and test.dropped_small_cliques == 1
    assert [v.key for v in test.missing_audio] == ["4/42"]
    assert test.summary()["missing audio examples"] == [str(audio / "4-42.mp3")]
    train = load_split("shs", "train", meta, audio)
    assert train.keys == ["1/10", "1/11", "2/20", "2/21"] and len(train.missing_audio) == 4


def test_lyric_covers_fixture(tmp_path):
    header = "original_id,id,is_cover,song_text_type,label\n"
    (tmp_path / "train_no_dup.csv").write_text(header + "5,100,False,lyrics,7\n5,101,True,transcription,7\n")
    (tmp_path / "val_no_dup.csv").write_text(header + "6,200,False,lyrics,8\n6,201,True,lyrics,8\n"
                                             "9,300,True,lyrics,7\n9,301,True,lyrics,7\n")
    touch(tmp_path / "audio" / "200" / "200_audio.mp3")
    val = load_split("lyric-covers", "val", tmp_path, tmp_path / "audio")
    assert val.keys == ["8/200", "8/201"]  # clique 7 is in train
    assert val.versions[0].path == tmp_path / "audio" / "200" / "200_audio.mp3"
    assert len(val.missing_audio) == 1


def test_discogs_vi_fixture(tmp_path):
    split = {"C1": [{"version_id": "V1", "youtube_id": "abcdef"}, {"version_id": "V2", "youtube_id": "xyz123"}],
             "C2": [{"version_id": "V3", "youtube_id": "qqqqqq"}]}
    (tmp_path / "Discogs-VI-YT-20240701-light.json.test").write_text(json.dumps(split))
    (tmp_path / "Discogs-VI-YT-20240701-light.json.train").write_text("{}")
    test = load_split("discogs-vi", "test", tmp_path, tmp_path / "audio", check_audio=False)
    assert test.keys == ["C1/V1", "C1/V2"]
    assert test.versions[0].path == tmp_path / "audio" / "ab" / "abcdef.mp3"
    (tmp_path / "Discogs-VI-YT-20240701-light.json.val").write_text("{broken")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_split("discogs-vi", "val", tmp_path)


def test_user_csv(tmp_path):
    touch(tmp_path / "a.mp3")
    (tmp_path / "songs.csv").write_text("clique,version,path,split\nsongA,v1,a.mp3,test\nsongA,v2,/abs/b.mp3,test\n"
                                        "songB,v1,c.mp3,train\nsongB,v2,d.mp3,train\n")
    test = load_split("csv", "test", tmp_path / "songs.csv")
    assert test.keys == ["songA/v1", "songA/v2"]
    assert test.versions[0].path == tmp_path / "a.mp3" and test.versions[1].path == Path("/abs/b.mp3")
    (tmp_path / "bad.csv").write_text("name,file\nx,y\n")
    with pytest.raises(DatasetError, match=r"bad.csv: missing column\(s\) path; found \['name', 'file'\]"):
        load_split("csv", "test", tmp_path / "bad.csv")


def test_csv_without_split_column_is_test(tmp_path):
    (tmp_path / "s.csv").write_text("clique,version,path\nA,1,x.mp3\nA,2,y.mp3\n")
    assert len(load_split("csv", "test", tmp_path / "s.csv", check_audio=False)) == 2


def test_keys_are_stable_strings():
    assert make_key(12, 3) == "12/3" == make_key("12", "3")


@pytest.mark.parametrize("dataset, split, rows, cliques, leaked", [
    ("shs", "train", 87091, 5324, 0), ("shs", "val", 10884, 1842, 6), ("shs", "test", 10547, 1692, 0),
    ("lyric-covers", "train", 47864, 14736, 0), ("lyric-covers", "val", 15414, 4912, 0),
    ("lyric-covers", "test", 15584, 4913, 0),
])
def test_real_split_files(dataset, split, rows, cliques, leaked):
    """Counts of DESIGN.md §9, read from ../shared/datasets (and the bundled copies)."""
    for meta in (SHARED / dataset, None):
        if meta is not None and not meta.is_dir():
            continue
        s = load_split(dataset, split, meta, check_audio=False)
        assert len(s) + s.dropped_leaked_versions + s.dropped_small_cliques == rows
        assert s.dropped_leaked_versions == leaked
        assert s.n_cliques() == cliques - (1 if leaked else 0)
        assert len(set(s.keys)) == len(s)


def test_real_shs_hand_check():
    """Spot-check by hand: the first rows of SHS100K-TEST and one leaked validation clique."""
    first = (SHARED / "shs" / "SHS100K-TEST").read_text().splitlines()[0].split("\t")
    test = load_split("shs", "test", SHARED / "shs", check_audio=False)
    assert test.keys[0] == f"{first[0]}/{first[1]}"
    train_cliques = {line.split("\t")[0] for line in (SHARED / "shs" / "SHS100K-TRAIN").read_text().splitlines()}
    val_raw = [line.split("\t")[0] for line in (SHARED / "shs" / "SHS100K-VAL").read_text().splitlines()]
    leaked = [c for c in val_raw if c in train_cliques]
    val_cliques = {v.clique for v in load_split("shs", "val", check_audio=False).versions}
    assert len(leaked) == 6 and not set(leaked) & val_cliques


def test_errors(tmp_path):
    with pytest.raises(DatasetError, match="split file not found"):
        load_split("shs", "test", tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_split("nope", "test", tmp_path)
    with pytest.raises(DatasetError, match="needs --metadata"):
        load_split("discogs-vi", "test")
    (tmp_path / "SHS100K-TEST").write_text("only-one-column\n")
    with pytest.raises(DatasetError, match="SHS100K-TEST:1: expected"):
        load_split("shs", "test", tmp_path)


# ---------------------------------------------------------------- catalogue CSVs (only `path` required)


def test_unlabelled_csv_keys_from_paths_and_metadata(tmp_path):
    (tmp_path / "cat.csv").write_text("path,title,artist\nalbums/live/song.mp3,Song,Ann\n./b.mp3,B,\n"
                                      "C:\\music\\c.wav,,Cy\n")
    cat = load_split("csv", "test", tmp_path / "cat.csv", check_audio=False, labelled_only=False)
    # Each row is its own clique named after its path as written: the same every time it is read.
    assert cat.keys == ["albums:live:song.mp3/0", "b.mp3/0", "C::music:c.wav/0"]
    assert [v.labelled for v in cat.versions] == [False] * 3
    assert cat.versions[0].path == tmp_path / "albums" / "live" / "song.mp3"
    assert [dict(v.meta) for v in cat.versions] == [{"title": "Song", "artist": "Ann"}, {"title": "B"},
                                                    {"artist": "Cy"}]
    assert all(split_key(k)[0] == v.clique for k, v in zip(cat.keys, cat.versions))
    # Evaluation and training need cliques: say so, naming the file.
    with pytest.raises(DatasetError, match=r"cat.csv: the test rows have no clique column.*need labelled versions"):
        load_split("csv", "test", tmp_path / "cat.csv", check_audio=False)


def test_mixed_csv(tmp_path):
    (tmp_path / "m.csv").write_text("clique,version,path,title\nA,1,a1.mp3,x\nA,,a2.mp3,y\nB,1,b1.mp3,z\n"
                                    ",,u.mp3,w\n")
    labelled = load_split("csv", "test", tmp_path / "m.csv", check_audio=False)
    assert labelled.keys == ["A/1", "A/a2.mp3"]  # B has one version; u.mp3 has no label
    assert labelled.dropped_small_cliques == 1 and labelled.dropped_unlabelled == 1
    catalogue = load_split("csv", "test", tmp_path / "m.csv", check_audio=False, labelled_only=False)
    assert catalogue.keys == ["A/1", "A/a2.mp3", "u.mp3/0"]  # unlabelled rows are exempt from the rules
    assert catalogue.restrict(["A/1", "u.mp3/0"]).keys == ["u.mp3/0"]


@pytest.mark.parametrize("text, message", [
    ("clique,version,path,split\nA,1,a.mp3,test\nA,2,b.mp3,tset\n", r"bad.csv:3: split 'tset' is not one of"),
    ("clique;version;path\nA;1;a.mp3\n", r"bad.csv:1: the header is semicolon-separated"),
    ("path\ta\nx.mp3\t1\n", r"bad.csv:1: the header is tab-separated"),
    ("path,title\na.mp3,x\nb.mp3,Hello, World\n", r"bad.csv:3: 3 fields, the header has 2 \(quote values"),
    ("path,title,artist\na.mp3,x\n", r"bad.csv:2: 2 fields, the header has 3"),
    ("path,title\n,x\n", r"bad.csv:2: the path is empty"),
    ("path\na/b.mp3\na:b.mp3\n", r"bad.csv:3: path 'a:b.mp3' gives the same key 'a:b.mp3/0' as 'a/b.mp3' on line 2"),
    ("clique,version,path\nx/y,1,a.mp3\n", r"bad.csv:2: clique 'x/y' holds a '/'"),
    ("title\nx\n", r"bad.csv: missing column\(s\) path"),
])
def test_csv_errors_name_file_row_and_problem(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_split("csv", "test", tmp_path / "bad.csv", check_audio=False, labelled_only=False)
