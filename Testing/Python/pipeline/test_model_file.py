"""Tests of HNTumorSegLib.pipeline.model_file: safetensors + JSON model files, verification, atomic save."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch

from HNTumorSegLib.pipeline import model_file
from HNTumorSegLib.errors import InputError, ModelFileError
from HNTumorSegLib.pipeline.model_file import FORMAT, load_model, model_paths, save_model
from HNTumorSegLib.network import NetworkConfig, build_network

CFG = NetworkConfig(channels=(4, 8, 16, 32, 64), psam_channels=(2, 4, 8))
META = {"trained_on": "HECKTOR 2025 train split (600 cases)", "metrics": {"dice_gtvp": 0.71, "dice_gtvn": 0.50},
        "intended_use": "research only", "epochs": 3}


def _x() -> torch.Tensor:
    return torch.randn((1, 2, 16, 32, 32), generator=torch.Generator().manual_seed(3))


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_network(CFG).eval()
    w, j = save_model(model, CFG, tmp_path / "m", metadata=META)
    return model, w, j


def _error(path) -> str:
    with pytest.raises(ModelFileError) as e:
        load_model(path)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert isinstance(e.value, InputError)
    return msg


def _rewrite_json(j: Path, **changes) -> dict:
    meta = json.loads(j.read_text())
    meta.update(changes)
    j.write_text(json.dumps(meta))
    return meta


# ---------------------------------------------------------------- round trip
def test_paths():
    for p in ("d/m", "d/m.json", "d/m.safetensors"):
        assert model_paths(p) == model_file.ModelPaths(Path("d/m.json"), Path("d/m.safetensors"))
    assert model_paths("d/psam.v1").json == Path("d/psam.v1.json")


def test_save_writes_both_files_with_metadata(saved, tmp_path):
    _, w, j = saved
    assert (w, j) == (tmp_path / "m.safetensors", tmp_path / "m.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]  # no temp files left
    meta = json.loads(j.read_text())
    assert meta["format"] == FORMAT and meta["format_version"] == 1
    assert meta["network"] == CFG.to_dict()
    assert meta["labels"] == {"1": "GTVp", "2": "GTVn"}
    assert meta["preprocessing_version"] == "1"
    assert meta["trained_on"] == META["trained_on"] and meta["metrics"] == META["metrics"]
    assert meta["intended_use"] == "research only" and meta["epochs"] == 3
    assert meta["weights_sha256"] == hashlib.sha256(w.read_bytes()).hexdigest()
    # A safetensors file: 8-byte little-endian header length, then a JSON header (no pickle).
    raw = w.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert json.loads(raw[8:8 + n])["__metadata__"]["format"] == "pt"


@pytest.mark.parametrize("suffix", ["", ".json", ".safetensors"])
def test_round_trip_identical_outputs(saved, tmp_path, suffix, monkeypatch):
    model, _, _ = saved
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must not be used"))
    loaded = load_model(str(tmp_path / "m") + suffix)
    assert loaded.config == CFG and not loaded.model.training
    assert loaded.meta["metrics"] == META["metrics"]
    assert loaded.paths.weights == tmp_path / "m.safetensors"
    with torch.inference_mode():
        assert torch.equal(model(_x()), loaded.model(_x()))


def test_round_trip_unet_baseline_and_preprocessing_version(tmp_path):
    cfg = NetworkConfig(channels=(4, 8, 16), psam=False, norm="instance")
    model = build_network(cfg).eval()
    save_model(model, cfg, tmp_path / "base.json", metadata={"preprocessing_version": 2})
    loaded = load_model(tmp_path / "base")
    assert loaded.meta["preprocessing_version"] == "2" and loaded.config == cfg
    x = _x()[:, :, :4, :8, :8]
    with torch.inference_mode():
        assert torch.equal(model(x), loaded.model(x))


def test_save_rejects_bad_arguments(tmp_path):
    model = build_network(CFG)
    with pytest.raises(ValueError, match="weights_sha256"):
        save_model(model, CFG, tmp_path / "m", metadata={"weights_sha256": "0" * 64})
    other = NetworkConfig(channels=(4, 8, 16, 32, 128), psam_channels=(2, 4, 8))
    with pytest.raises(ValueError, match="does not fit"):
        save_model(model, other, tmp_path / "m", metadata={})
    with pytest.raises(ValueError):  # NaN is not JSON
        save_model(model, CFG, tmp_path / "m", metadata={"metrics": {"dice": float("nan")}})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- tampering and corruption
def test_flipped_byte_is_caught(saved):
    _, w, _ = saved
    raw = bytearray(w.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    w.write_bytes(bytes(raw))
    msg = _error(w)
    assert msg == "m.safetensors: weights do not match the sha256 in m.json — file altered or corrupt"


def test_edited_channels_are_caught_naming_keys(saved):
    _, _, j = saved
    meta = json.loads(j.read_text())
    _rewrite_json(j, network={**meta["network"], "channels": [4, 8, 16, 32, 128]})
    msg = _error(j)
    assert msg.startswith("m.safetensors: weights do not fit the network in m.json")
    assert "shape mismatch" in msg and "encoders.4." in msg


def test_edited_norm_is_caught_as_missing_and_unexpected_keys(saved):
    _, _, j = saved
    meta = json.loads(j.read_text())
    _rewrite_json(j, network={**meta["network"], "norm": "instance"})
    msg = _error(j)
    assert "missing" in msg and "unexpected" in msg and "norm.beta." in msg and "m.json" in msg


def test_edited_psam_flag_is_caught(saved):
    _, _, j = saved
    meta = json.loads(j.read_text())
    _rewrite_json(j, network={**meta["network"], "psam": False})
    assert "unexpected" in _error(j) and "psam." in _error(j)


def test_invalid_network_config_in_json(saved):
    _, _, j = saved
    meta = json.loads(j.read_text())
    _rewrite_json(j, network={**meta["network"], "norm": "batch"})
    msg = _error(j)
    assert msg.startswith("m.json: invalid network config") and "norm" in msg


def test_missing_json(saved):
    _, _, j = saved
    j.unlink()
    assert _error(j.with_suffix(".safetensors")).startswith("m.json: model config file not found")


def test_missing_weights(saved):
    _, w, j = saved
    w.unlink()
    assert _error(j).startswith("m.safetensors: weights file not found")


@pytest.mark.parametrize("text, needle", [
    ("{not json", "not valid JSON"),
    ("\xff\xfe", "not valid JSON"),
    ("[1, 2]", "not an HNTumorSeg model file"),
    ('{"format": "something-else"}', "not an HNTumorSeg model file"),
])
def test_invalid_json(saved, text, needle):
    _, _, j = saved
    j.write_bytes(text.encode("latin-1"))
    msg = _error(j)
    assert msg.startswith("m.json: ") and needle in msg


def test_wrong_version_and_missing_sha(saved):
    _, _, j = saved
    meta = _rewrite_json(j, format_version=3)  # 2 is the ensemble layout (test_ensemble.py)
    assert "unsupported format_version 3" in _error(j)
    meta["format_version"] = 1
    del meta["weights_sha256"]
    j.write_text(json.dumps(meta))
    assert "weights_sha256" in _error(j)


def test_unreadable_safetensors_with_matching_sha(saved):
    _, w, j = saved
    w.write_bytes(b"\x00" * 5 + b"not a safetensors file")
    _rewrite_json(j, weights_sha256=hashlib.sha256(w.read_bytes()).hexdigest())
    assert _error(j).startswith("m.safetensors: unreadable safetensors file")


# ---------------------------------------------------------------- atomic save
def _fail_on_call(monkeypatch, target, name, n):
    real = getattr(target, name)
    calls = {"n": 0}

    def wrapper(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(target, name, wrapper)


@pytest.mark.parametrize("target, name, n", [
    (os, "fsync", 1),     # while writing the weights
    (os, "fsync", 2),     # while writing the JSON
    (os, "replace", 2),   # weights in place, JSON rename fails
])
def test_failed_save_leaves_nothing(tmp_path, monkeypatch, target, name, n):
    model = build_network(CFG)
    _fail_on_call(monkeypatch, target, name, n)
    with pytest.raises(OSError):
        save_model(model, CFG, tmp_path / "m", metadata=META)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n", [1, 2])
def test_failed_overwrite_keeps_the_old_model(saved, tmp_path, monkeypatch, n):
    old, _, _ = saved
    torch.manual_seed(5)
    new = build_network(CFG)
    _fail_on_call(monkeypatch, os, "fsync", n)
    with pytest.raises(OSError):
        save_model(new, CFG, tmp_path / "m", metadata=META)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    with torch.inference_mode():
        assert torch.equal(load_model(tmp_path / "m").model(_x()), old(_x()))


@pytest.mark.parametrize("changes, needle", [
    (dict(format_version=True), "unsupported format_version True"),
    (dict(labels={"1": "GTVn", "2": "GTVp"}), "'labels' is {'1': 'GTVn', '2': 'GTVp'}"),
    (dict(labels=None), "'labels' is None"),
])
def test_a_json_that_would_be_misread_is_refused(saved, changes, needle):
    _, _, j = saved
    _rewrite_json(j, **changes)
    assert needle in _error(j)


@pytest.mark.parametrize("entry, needle", [
    ({}, 'expected {"rules"'),
    ({"rules": {"GTVn": {"largest_only": "false"}}}, "GTVn.largest_only must be true or false"),
    ({"rules": {"GTVp": {"min_peak_probability": 1.5}}}, "GTVp.min_peak_probability must be a number from 0 to 1"),
    ({"rules": {"GTVp": {"min_volume_ml": -1}}}, "GTVp.min_volume_ml must be a number from 0 up"),
    ({"rules": {"GTVp": {"min_volme_ml": 1}}}, "unknown key(s) 'min_volme_ml'"),
])
def test_a_postprocess_entry_that_would_be_misread_is_refused_at_load(saved, entry, needle):
    from HNTumorSegLib.pipeline.inference import Segmenter

    _, _, j = saved
    _rewrite_json(j, postprocess=entry)
    for postprocess in (True, False):  # checked even when the clean-up is switched off
        with pytest.raises(ModelFileError, match=None) as raised:
            Segmenter(j, device="cpu", postprocess=postprocess)
        assert needle in str(raised.value) and "\n" not in str(raised.value)
