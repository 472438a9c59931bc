"""Published models through a real Hugging Face cache layout, offline; the upload folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from helpers.hub import COMMIT_A, COMMIT_B, add_snapshot, original_repo_files
from helpers.original import SIZES

from wealy_cli.core.errors import UserError
from wealy_cli.model import hub
from wealy_cli.model.card import REMOVED, build_upload_folder
from wealy_cli.model.network import ModelConfig, build_model, load_model, save_weights

torch.set_num_threads(1)

def test_registry_has_the_eight_published_models():
    assert list(hub.REGISTRY) == ["wealy-whisper-shs", "wealy-sbert-shs", "wealy-whisper-en-shs",
                                  "wealy-avgembmlp-shs", "wealy-cls-shs", "wealy-whisper-lyc",
                                  "wealy-sbert-lyc", "wealy-whisper-dvi"]
    assert hub.repo_id_for("wealy-sbert-lyc") == "audio-based-lyrics-matching/wealy-sbert-lyc"
    assert {m.dataset for m in hub.REGISTRY.values()} == {"shs", "lyric-covers", "discogs-vi"}
    assert hub.repo_id_for("someone/my-wealy") == "someone/my-wealy"
    with pytest.raises(UserError, match="unknown model 'wealy-whisper'"):
        hub.repo_id_for("wealy-whisper")


def test_offline_cache_resolves_through_the_cli(tmp_path, offline, wealy):
    files, reference = original_repo_files(tmp_path / "src")
    add_snapshot(tmp_path / "hub", "audio-based-lyrics-matching/wealy-whisper-dvi", COMMIT_A, files)
    # The layout is huggingface_hub's own: its cache scanner reads it without warnings.
    scan = huggingface_hub.scan_cache_dir(tmp_path / "hub")
    assert not scan.warnings
    assert [r.repo_id for r in scan.repos] == ["audio-based-lyrics-matching/wealy-whisper-dvi"]
    assert [rev.commit_hash for rev in next(iter(scan.repos)).revisions] == [COMMIT_A]

    proc = wealy("models", "download", "wealy-whisper-dvi", env=offline)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "models" / "wealy-whisper-dvi" / COMMIT_A
    model, cfg = load_model(out)
    x = torch.randn(2, 6, SIZES["input_channels"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)

    proc = wealy("models", "list", env={**offline, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("│")}
    assert rows["wealy-whisper-dvi"][:2] == ["discogs-vi", "whisper"]
    assert rows["wealy-whisper-dvi"][3:] == ["yes", "yes"]
    assert rows["wealy-sbert-lyc"][3:] == ["no", "no"]

    info = hub.model_info("wealy-whisper-dvi")
    assert info.imported == out
    assert info.data_settings() == {"dataset": "discogs-vi", "features": "whisper", "chunk": 1500, "topk": 3}
    assert info.size_bytes == sum(len(v) for v in files.values())


def test_missing_model_offline_gives_one_clear_message(tmp_path, offline, wealy):
    proc = wealy("models", "download", "wealy-sbert-lyc", env=offline)
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert message.startswith("error: model 'wealy-sbert-lyc'") and len(message.splitlines()) == 1
    for part in ("audio-based-lyrics-matching/wealy-sbert-lyc", str(tmp_path / "hub"), "HF_HUB_OFFLINE",
                 "wealy models download wealy-sbert-lyc", "HF_HUB_CACHE"):
        assert part in message


def test_revision_selects_a_snapshot_and_force_reimports(tmp_path, offline):
    repo_id = "audio-based-lyrics-matching/wealy-whisper-lyc"
    files_a, ref_a = original_repo_files(tmp_path / "a", seed=0)
    files_b, ref_b = original_repo_files(tmp_path / "b", avg=True, seed=1)
    add_snapshot(tmp_path / "hub", repo_id, COMMIT_A, files_a)
    add_snapshot(tmp_path / "hub", repo_id, COMMIT_B, files_b, ref="v2")
    x = torch.randn(2, 5, SIZES["input_channels"], generator=torch.Generator().manual_seed(4))
    for revision, commit, reference in [(None, COMMIT_A, ref_a), ("v2", COMMIT_B, ref_b), (COMMIT_B, COMMIT_B, ref_b)]:
        out = hub.resolve_model("wealy-whisper-lyc", revision)
        assert out == tmp_path / "models" / "wealy-whisper-lyc" / commit
        model, _ = load_model(out)
        with torch.no_grad():
            assert torch.allclose(model(x), reference(x), atol=1e-5)
    weights = out / "best.safetensors"
    weights.write_bytes(b"damaged")
    with pytest.raises(UserError):
        load_model(out)
    assert hub.resolve_model("wealy-whisper-lyc", COMMIT_B) == out  # not re-imported by itself
    with pytest.raises(UserError):
        load_model(out)
    hub.resolve_model("wealy-whisper-lyc", COMMIT_B, force=True)  # offline: re-imported from the cache
    model, _ = load_model(out)
    with torch.no_grad():
        assert torch.allclose(model(x), ref_b(x), atol=1e-5)
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        hub.resolve_model("wealy-whisper-lyc", "c3" * 20)


def _training_run(run: Path) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    cfg = ModelConfig(**SIZES)
    model = build_model(cfg).eval()
    save_weights(run / "best", model, cfg, {"epoch": 4, "val_map": 0.25, "best_map": 0.25})
    settings = {"command": "train", "dataset": "shs", "split": "train", "metadata": str(run / "meta"),
                "store": str(run.parent / "features"), "output": None, "loss": "ntxent", "audio_dir": "~/music"}
    (run / "settings.yaml").write_text(yaml.safe_dump(settings))
    rows = [{"epoch": 0, "loss": "", "val_map": 0.05}, {"epoch": 3, "loss": 2.1, "val_map": 0.31},
            {"epoch": 4, "loss": 1.9, "val_map": 0.25}]
    with open(run / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", "loss", "val_map"])
        writer.writeheader()
        writer.writerows(rows)
    return model, settings


def test_upload_folder_has_weights_portable_config_and_card(tmp_path, offline, wealy):
    run = tmp_path / "runs" / "train" / "mine"
    run.mkdir(parents=True)
    model, _ = _training_run(run)
    proc = wealy("models", "upload", run, "me/wealy-test", "--dry-run", tmp_path / "upload", env=offline)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "upload"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.yaml", "metrics.csv",
                                                       "weights.config.json", "weights.safetensors"]
    for name in ("README.md", "config.yaml", "weights.config.json"):
        text = (folder / name).read_text()
        assert str(tmp_path) not in text and "~/music" not in text
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["training"]["metadata"] == REMOVED and config["training"]["dataset"] == "shs"
    assert config["model"]["input_channels"] == SIZES["input_channels"]
    card = (folder / "README.md").read_text()
    assert "| val_map | 0.3100 |" in card and "| epoch | 3.0000 |" in card  # the best row of metrics.csv
    assert "wealy models download me/wealy-test" in card

    # Published like this, the repo resolves again through the (offline) cache.
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    add_snapshot(tmp_path / "hub", "me/wealy-test", COMMIT_A, files)
    out = hub.resolve_model("me/wealy-test")
    loaded, _ = load_model(out)
    x = torch.randn(2, 6, SIZES["input_channels"], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert json.loads((out / "best.config.json").read_text())["val_map"] == 0.25


def test_upload_needs_a_run_and_a_repo_id(tmp_path):
    with pytest.raises(UserError, match="run directory not found"):
        build_upload_folder(tmp_path / "nope", tmp_path / "out", "me/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="best.safetensors"):
        build_upload_folder(tmp_path / "empty", tmp_path / "out", "me/x")
    with pytest.raises(UserError, match="unknown model"):
        hub.resolve_model("not-a-published-name")
