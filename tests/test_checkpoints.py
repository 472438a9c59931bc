"""Importing original WEALY checkpoints: same embeddings as the original architecture, safe loading."""

from __future__ import annotations

import os

import pytest
import torch
import yaml
from helpers.original import SIZES, OriginalModel, write_original

from wealy_cli.core.errors import UserError
from wealy_cli.core.safepickle import UnsafeCheckpointError, load_checkpoint, plain
from wealy_cli.model.network import load_model
from wealy_cli.model.original import import_checkpoint, read_original_config

torch.set_num_threads(1)

def _inputs(rows: int = 9, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, rows, SIZES["input_channels"], generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("avg,positions,pool", [(False, False, "gempool"), (False, True, "gempool"),
                                                (False, False, "meanpool"), (True, False, "gempool")])
@torch.no_grad()
def test_imported_model_matches_the_original_architecture(tmp_path, avg, positions, pool):
    torch.manual_seed(0)
    reference = OriginalModel(avg, positions, pool).eval()
    ckpt, config = write_original(tmp_path / "run", reference, avg, positions, pool)
    out = import_checkpoint(ckpt, tmp_path / "imported", config)
    model, cfg = load_model(out)
    assert (cfg.arch, cfg.positional_encoding, cfg.pool_type) == (
        "avgmlp" if avg else "transformer", positions, "mean" if pool == "meanpool" else "gem")
    x = _inputs()
    expected = reference(x)
    assert torch.allclose(model(x, torch.ones(x.shape[:2], dtype=torch.bool)), expected, atol=1e-5)
    # Padded batch: wealy with a mask equals the original run on each unpadded sequence.
    lengths = [9, 5, 2]
    mask = torch.arange(9)[None] < torch.tensor(lengths)[:, None]
    padded = torch.where(mask[..., None], x, torch.zeros_like(x))
    each = torch.cat([reference(x[i: i + 1, :n]) for i, n in enumerate(lengths)])
    assert torch.allclose(model(padded, mask), each, atol=1e-5)


def test_import_records_data_settings_and_drops_local_paths(tmp_path):
    torch.manual_seed(0)
    ckpt, config = write_original(tmp_path / "run", OriginalModel(False), avg=False)
    out = import_checkpoint(ckpt, tmp_path / "imported", config)
    text = (out / "best.config.json").read_text()
    assert str(tmp_path) not in text
    data = yaml.safe_load(text)  # JSON is YAML
    assert (data["dataset"], data["features"], data["chunk_size"]) == ("shs", "whisper", 1500)
    assert data["source"]["epoch"] == 7


def test_config_stored_in_the_checkpoint_is_used_without_configuration_yaml(tmp_path):
    torch.manual_seed(0)
    reference = OriginalModel(True).eval()
    ckpt, _ = write_original(tmp_path / "run", reference, avg=True)
    out = import_checkpoint(ckpt, tmp_path / "imported", config=None)
    model, cfg = load_model(out)
    assert cfg.arch == "avgmlp"
    x = _inputs()
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)


def test_omegaconf_is_never_rebuilt(tmp_path):
    torch.manual_seed(0)
    ckpt, config = write_original(tmp_path / "run", OriginalModel(False), avg=False)
    loaded = load_checkpoint(ckpt)
    assert "omegaconf" not in type(loaded["conf"]).__module__
    assert plain(loaded["conf"]) == yaml.safe_load(config.read_text())


def test_checkpoint_with_an_arbitrary_object_is_refused(tmp_path, wealy):
    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(tmp_path / "payload-ran"),))

    torch.manual_seed(0)
    ckpt, config = write_original(tmp_path / "run", OriginalModel(False), avg=False, extra={"hook": Payload()})
    with pytest.raises(UnsafeCheckpointError, match="trust-pickle"):
        load_checkpoint(ckpt)
    proc = wealy("models", "import", ckpt, "--config", config, "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert "refused to load" in proc.stderr and "os.makedirs" in proc.stderr and "--trust-pickle" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "payload-ran").exists() and not (tmp_path / "out").exists()
    # The user vouches for the file: it loads (and the payload does run, as the message warned).
    proc = wealy("models", "import", ckpt, "--config", config, "--out", tmp_path / "out", "--trust-pickle")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "payload-ran").is_dir() and (tmp_path / "out" / "best.safetensors").is_file()


def test_configuration_errors_are_user_errors(tmp_path):
    base = {"model": {**SIZES, "conv_blocks": 0, "zdim": "${model.hidden_dim}"}, "data": {"use_avg_pooling": False}}
    path = tmp_path / "configuration.yaml"
    path.write_text(yaml.safe_dump(base))
    assert read_original_config(path).model.zdim == SIZES["hidden_dim"]  # interpolation resolved
    for model_update, message in [({"hidden_dim": "${oc.env:HIDDEN}"}, "interpolation"),
                                  ({"conv_blocks": 2}, "conv_blocks")]:
        path.write_text(yaml.safe_dump({**base, "model": {**base["model"], **model_update}}))
        with pytest.raises(UserError, match=message):
            read_original_config(path)
    path.write_text("data: {}\n")
    with pytest.raises(UserError, match="no 'model:' section"):
        read_original_config(path)


def test_mismatched_weights_and_non_checkpoints_are_user_errors(tmp_path):
    torch.manual_seed(0)
    ckpt, config = write_original(tmp_path / "run", OriginalModel(False), avg=False)
    wrong = yaml.safe_load(config.read_text())
    wrong["model"]["input_channels"] = 20
    config.write_text(yaml.safe_dump(wrong))
    with pytest.raises(UserError, match="do not match"):
        import_checkpoint(ckpt, tmp_path / "imported", config)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="not a"):
        load_checkpoint(junk)
