"""Ensemble model files: several networks in one safetensors + JSON, their probabilities averaged.

Small random-weight networks on small inputs: what is checked is the arithmetic (two copies of a
network are that network, exactly; two networks give the mean of their probabilities, compared
with running each network's own file), the integrity checks (a tampered member or member entry is
a one-line error naming the member), the one code path (CLI ``segment``, the Slicer worker,
``hntumorseg-train evaluate``) and ``hntumorseg-train export --run A --run B``.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HNTumorSegLib.cli import main as seg_main
from HNTumorSegLib.errors import InputError, ModelFileError
from HNTumorSegLib.imaging.geometry import LATTICE_SPACING
from HNTumorSegLib.pipeline.inference import Segmenter
from HNTumorSegLib.pipeline.model_file import (ENSEMBLE_FORMAT_VERSION, EnsembleMember, load_model, model_paths,
                                               save_ensemble, save_model, tensors_sha256)
from HNTumorSegLib.network import NetworkConfig, build_network
from HNTumorSegLib.pipeline.postprocess import ComponentFilter
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION

from conftest import tiny_ct_pet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PSAM = NetworkConfig(channels=(4, 8, 16, 32, 64), psam_channels=(2, 4, 8))
UNET = NetworkConfig(channels=(4, 8, 16, 32, 64), psam=False, norm="instance")
WINDOW = {"patch_size": [16, 32, 32], "overlap": 0.25}
LARGEST_ONLY = {"rules": {"GTVp": {"largest_only": True}, "GTVn": {"largest_only": True}}}


def _net(config: NetworkConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(config).eval()


@pytest.fixture(scope="module")
def nets():
    return {"a": (_net(PSAM, 0), PSAM), "b": (_net(UNET, 1), UNET), "c": (_net(PSAM, 2), PSAM)}


@pytest.fixture(scope="module")
def files(nets, tmp_path_factory) -> dict[str, Path]:
    """Single-network files a (patch-wise), b (one pass), and ensembles built from the same networks."""
    d = tmp_path_factory.mktemp("ensembles")
    (a, ca), (b, cb), (c, cc) = nets["a"], nets["b"], nets["c"]
    save_model(a, ca, d / "a", metadata={"inference": WINDOW})
    save_model(b, cb, d / "b")
    save_model(c, cc, d / "c")
    save_ensemble([EnsembleMember(a, ca, "a1", WINDOW), EnsembleMember(a, ca, "a2", WINDOW)], d / "aa")
    save_ensemble([EnsembleMember(a, ca, "a", WINDOW), EnsembleMember(b, cb, "b")], d / "ab")
    save_ensemble([EnsembleMember(a, ca, "a", WINDOW), EnsembleMember(b, cb, "b")], d / "ab_pp",
                  metadata={"postprocess": LARGEST_ONLY})
    # whole-window members only: fast enough for the full 112 x 256 x 256 window of segment and evaluate
    save_ensemble([EnsembleMember(b, cb, "b"), EnsembleMember(c, cc, "c")], d / "bc",
                  metadata={"name": "bc", "trained_on": "nothing (random weights, tests)"})
    return {k: d / f"{k}.json" for k in ("a", "b", "c", "aa", "ab", "ab_pp", "bc")}


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 32, 48, 48)).astype(np.float32)


def _prob(path, x, tta=False) -> np.ndarray:
    return Segmenter(path, device="cpu", tta=tta).probabilities(x)


# ------------------------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize("tta", [False, True])
def test_two_copies_of_one_network_give_exactly_its_probabilities(files, x, tta):
    single = _prob(files["a"], x, tta)
    ensemble = Segmenter(files["aa"], device="cpu", tta=tta)
    assert len(ensemble.networks) == 2 and ensemble.loaded.is_ensemble
    got = ensemble.probabilities(x)
    assert got.dtype == np.float32 and got.shape == (3, 32, 48, 48)
    np.testing.assert_array_equal(got, single)
    assert len(ensemble.member_seconds) == 2


def test_two_different_networks_give_the_mean_of_their_probabilities(files, x):
    pa, pb = _prob(files["a"], x), _prob(files["b"], x)
    assert np.abs(pa - pb).max() > 0.01  # different networks, different windows: the test can fail
    got = _prob(files["ab"], x)
    np.testing.assert_allclose(got, (pa + pb) / np.float32(2), rtol=0, atol=1e-7)
    # with TTA, each member's flips are averaged first, then the members
    ta, tb = _prob(files["a"], x, tta=True), _prob(files["b"], x, tta=True)
    np.testing.assert_allclose(_prob(files["ab"], x, tta=True), (ta + tb) / np.float32(2), rtol=0, atol=1e-7)


def test_the_clean_up_applies_once_to_the_average(files, x):
    mean = _prob(files["ab"], x)
    seg = Segmenter(files["ab_pp"], device="cpu")
    got = seg.predict_window(x)
    raw = mean.argmax(axis=0).astype(np.uint8)
    np.testing.assert_array_equal(got, ComponentFilter.from_meta({"postprocess": LARGEST_ONLY}).apply(
        raw, mean, LATTICE_SPACING))
    assert (got != raw).any()  # the rule removed something here, so the comparison means something
    np.testing.assert_array_equal(Segmenter(files["ab_pp"], device="cpu", postprocess=False).predict_window(x), raw)


def test_members_run_one_after_the_other(files, x):
    """A member's passes all end before the next member's begin: one member's activations at a time."""
    seg = Segmenter(files["ab"], device="cpu")
    events = []
    for net in seg.networks:
        net.model.register_forward_pre_hook(lambda m, a, name=net.name: events.append(name))
    seg.probabilities(x)
    first_b = events.index("b")
    assert set(events[:first_b]) == {"a"} and set(events[first_b:]) == {"b"}
    assert events.count("a") > 1  # member a ran patch-wise, b in one pass
    assert events.count("b") == 1


# ------------------------------------------------------------------------------------------- the file
def test_the_file_holds_each_member_under_its_prefix_and_describes_it(files, nets):
    meta = json.loads(files["ab"].read_text())
    assert meta["format"] == "hntumorseg-model" and meta["format_version"] == ENSEMBLE_FORMAT_VERSION
    assert "network" not in meta and "inference" not in meta
    a, b = meta["members"]
    assert (a["name"], a["tensor_prefix"], a["inference"]) == ("a", "members.0.", WINDOW)
    assert (b["name"], b["tensor_prefix"], b["inference"]) == ("b", "members.1.", None)
    assert a["network"] == PSAM.to_dict() and b["network"] == UNET.to_dict()
    assert a["tensors_sha256"] == tensors_sha256(nets["a"][0].state_dict())
    assert b["tensors_sha256"] == tensors_sha256(nets["b"][0].state_dict())
    raw = model_paths(files["ab"]).weights.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    keys = [k for k in json.loads(raw[8:8 + n]) if k != "__metadata__"]
    assert keys and all(k.startswith(("members.0.", "members.1.")) for k in keys)
    # the same network has the same digest as a single-network file and as a member
    assert load_model(files["a"]).members[0].tensors_sha256 == a["tensors_sha256"]


def test_single_network_files_load_as_before_and_an_ensemble_is_not_one_network(files, small_model):
    single = load_model(small_model)
    assert not single.is_ensemble and len(single.members) == 1
    assert single.model is single.members[0].model and single.config.channels == (4, 8, 16, 32, 64)
    ensemble = load_model(files["ab"])
    assert [m.name for m in ensemble.members] == ["a", "b"]
    with pytest.raises(ModelFileError, match="ensemble of 2 networks"):
        ensemble.model
    with pytest.raises(AttributeError, match="ensemble"):
        Segmenter(files["ab"], device="cpu").model


def test_save_ensemble_refuses_what_cannot_be_averaged(nets, tmp_path):
    (a, ca), (b, cb) = nets["a"], nets["b"]
    three = NetworkConfig(channels=(4, 8, 16, 32, 64), psam_channels=(2, 4, 8), out_channels=4)
    with pytest.raises(ValueError, match="input/output channels"):
        save_ensemble([EnsembleMember(a, ca, "a"), EnsembleMember(build_network(three), three, "x")], tmp_path / "e")
    with pytest.raises(ValueError, match="distinct"):
        save_ensemble([EnsembleMember(a, ca, "a"), EnsembleMember(b, cb, "a")], tmp_path / "e")
    with pytest.raises(ValueError, match="does not fit"):
        save_ensemble([EnsembleMember(a, cb, "a")], tmp_path / "e")
    with pytest.raises(ValueError, match="members"):
        save_ensemble([EnsembleMember(a, ca, "a")], tmp_path / "e", metadata={"members": []})
    with pytest.raises(ValueError, match="inference"):
        save_ensemble([EnsembleMember(a, ca, "a", {"patch_size": [16, 32]})], tmp_path / "e")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- tampering
def _copy(src: Path, dst_dir: Path) -> Path:
    dst_dir.mkdir(exist_ok=True)
    for suffix in (".json", ".safetensors"):
        shutil.copy(src.with_suffix(suffix), dst_dir / f"m{suffix}")
    return dst_dir / "m.json"


def _flip_member_byte(json_path: Path, member: int) -> None:
    w = json_path.with_suffix(".safetensors")
    raw = bytearray(w.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    key = next(k for k in sorted(header) if k.startswith(f"members.{member}.") and k.endswith("weight"))
    begin, end = header[key]["data_offsets"]
    raw[8 + n + (begin + end) // 2] ^= 0x40
    w.write_bytes(bytes(raw))


def _error(path) -> str:
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, InputError)
    return message


def _edit(json_path: Path, change) -> None:
    meta = json.loads(json_path.read_text())
    change(meta)
    json_path.write_text(json.dumps(meta))


def test_a_flipped_byte_in_one_member_is_named(files, tmp_path):
    m = _copy(files["ab"], tmp_path / "t")
    _flip_member_byte(m, 1)
    msg = _error(m)
    assert msg == "m.safetensors: weights do not match the sha256 in m.json (member 1 (b) altered) — file altered " \
                  "or corrupt"


def test_a_member_altered_with_the_file_hash_updated_is_caught_by_its_own_hash(files, tmp_path):
    import hashlib

    m = _copy(files["ab"], tmp_path / "t")
    _flip_member_byte(m, 0)
    digest = hashlib.sha256(m.with_suffix(".safetensors").read_bytes()).hexdigest()
    _edit(m, lambda meta: meta.update(weights_sha256=digest))
    msg = _error(m)
    assert msg.startswith("m.safetensors: member 0 (a): tensors do not match its tensors_sha256 in m.json")


@pytest.mark.parametrize("change, needle", [
    (lambda meta: meta["members"][1]["network"].update(channels=[4, 8, 16, 32, 128]),
     "m.safetensors: member 1 (b): weights do not fit the network in m.json: 7 shape mismatch(es)"),
    (lambda meta: meta["members"][0]["network"].update(psam=False, norm="instance"),
     "m.safetensors: member 0 (a): weights do not fit the network in m.json"),
    (lambda meta: meta["members"][1].update(tensors_sha256="0" * 64),
     "m.safetensors: member 1 (b): tensors do not match its tensors_sha256"),
    (lambda meta: meta["members"].pop(),
     "m.safetensors: "),  # member 1's tensors now belong to no member
    (lambda meta: meta["members"][0].update(tensor_prefix="members.1."),
     "m.json: member 0: tensor_prefix 'members.1.', expected 'members.0.'"),
    (lambda meta: meta["members"][0].update(inference={"patch_size": [16, 32]}),
     "m.json member 0: invalid 'inference' entry"),
    (lambda meta: meta["members"][0].pop("tensors_sha256"),
     "m.json: member 0: missing key 'tensors_sha256'"),
    (lambda meta: meta.update(network=PSAM.to_dict()),
     "m.json: an ensemble file (format_version 2) has no top-level 'network'"),
    (lambda meta: meta.update(members=[]),
     "m.json: 'members' must be a non-empty list"),
])
def test_a_tampered_member_entry_is_a_one_line_error(files, tmp_path, change, needle):
    m = _copy(files["ab"], tmp_path / "t")
    _edit(m, change)
    msg = _error(m)
    assert msg.startswith(needle), msg


def test_tensors_that_belong_to_no_member_are_refused(files, tmp_path):
    m = _copy(files["ab"], tmp_path / "t")
    _edit(m, lambda meta: meta["members"].pop())
    msg = _error(m)
    assert "tensor(s) belong to no member of m.json: members.1." in msg


def test_segment_refuses_a_tampered_ensemble_in_one_line(files, tiny_files, tmp_path, capsys):
    m = _copy(files["bc"], tmp_path / "t")
    _flip_member_byte(m, 1)
    out = tmp_path / "out" / "seg.nii.gz"
    code = seg_main(["segment", "--ct", str(tiny_files["ct"]), "--pet", str(tiny_files["pet"]), "--out", str(out),
                     "--model", str(m), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "member 1 (c) altered" in err
    assert not out.parent.exists()


# ------------------------------------------------------------------------------------------- one code path
def test_segment_with_an_ensemble_reports_members_time_and_memory(files, tiny_files, tmp_path, capsys):
    out = tmp_path / "res" / "seg.nii.gz"
    code = seg_main(["segment", "--ct", str(tiny_files["ct"]), "--pet", str(tiny_files["pet"]), "--out", str(out),
                     "--model", str(files["bc"]), "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "model: ensemble of 2 networks, network time " in printed.out and "peak memory: " in printed.out
    report = json.loads((tmp_path / "res" / "seg.json").read_text())
    assert [m["name"] for m in report["members"]] == ["b", "c"]
    assert [m["network"] for m in report["members"]] == ["U-Net 4-8-16-32-64", "PSAM U-Net 4-8-16-32-64"]
    meta = json.loads(files["bc"].read_text())
    assert [m["tensors_sha256"] for m in report["members"]] == [m["tensors_sha256"] for m in meta["members"]]
    seconds = [m["network_seconds"] for m in report["members"]]
    assert all(s > 0 for s in seconds) and sum(seconds) <= report["timings_s"]["network"] + 0.01
    assert report["memory"]["peak_rss_mib"] > 100  # torch alone takes more
    assert report["model"]["ensemble_members"] == 2 and report["model"]["weights_sha256"] == meta["weights_sha256"]
    assert report["model"]["network"] == "ensemble of 2 networks (U-Net 4-8-16-32-64, PSAM U-Net 4-8-16-32-64)"
    label = sitk.ReadImage(str(out))
    assert label.GetSize() == sitk.ReadImage(str(tiny_files["ct"])).GetSize()


def test_the_slicer_worker_runs_an_ensemble_and_reports_its_members(files, tmp_path):
    from HNTumorSegLib.slicer_support import worker_protocol as protocol
    from HNTumorSegLib.slicer_support.worker import run_request

    ct, pet = tiny_ct_pet()
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(pet, str(tmp_path / "pet.nrrd"))
    events = []
    report = run_request(protocol.Request(str(tmp_path / "ct.nrrd"), str(tmp_path / "pet.nrrd"), str(tmp_path / "out"),
                                          str(files["bc"]), "cpu"), events.append)
    assert events[-1]["event"] == "done"
    assert [m["name"] for m in report["members"]] == ["b", "c"] and report["memory"]["peak_rss_mib"] > 0
    assert report["model"]["ensemble_members"] == 2


def test_model_description_of_an_ensemble_is_read_without_torch(files):
    from HNTumorSegLib.pipeline.model_info import read_model_description

    text = read_model_description(files["bc"])
    assert text.startswith("ensemble of 2 networks (U-Net 4-8-16-32-64, PSAM U-Net 4-8-16-32-64); trained on nothing")
    assert read_model_description(files["aa"]).startswith("ensemble of 2 networks (PSAM U-Net 4-8-16-32-64 x2)")


# ------------------------------------------------------------------------------------------- export and evaluate
def _write_case(root: Path, case_id: str) -> None:
    ct, pet = tiny_ct_pet()
    label = np.zeros((40, 100, 100), np.uint8)
    label[18:24, 40:50, 40:50] = 1
    label[18:22, 40:46, 60:66] = 2
    img = sitk.GetImageFromArray(label)
    img.CopyInformation(ct)
    folder = root / case_id
    folder.mkdir(parents=True)
    sitk.WriteImage(ct, str(folder / f"{case_id}__CT.nii.gz"))
    sitk.WriteImage(pet, str(folder / f"{case_id}__PT.nii.gz"))
    sitk.WriteImage(img, str(folder / f"{case_id}.nii.gz"))


def _make_run(base: Path, name: str, spec: dict, seed: int, data_root: Path, postprocess=None,
              preprocessing_version: str = PREPROCESSING_VERSION) -> Path:
    from HNTumorSegTraining.models import build_from_spec
    from HNTumorSegTraining.weights import save_weights

    cache, run = base / f"cache_{name}", base / f"run_{name}"
    cache.mkdir()
    (cache / "split.json").write_text(json.dumps({
        "train": ["TR-001"], "val": ["TV-001"], "data_root": str(data_root),
        "preprocessing_version": preprocessing_version, "centres": {"TR": {"total": 1, "train": 1, "val": 0}}}))
    torch.manual_seed(seed)
    model = build_from_spec(spec)
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"cache": str(cache), "model_spec": spec, "device": "cpu"}))
    meta = {"preprocessing_version": preprocessing_version, "metrics": {"val_dice_mean": 0.5},
            "training": {"epoch": 1}, "selected": "last epoch",
            **({"postprocess": postprocess} if postprocess else {})}
    save_weights(model, spec, run / "best", meta)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from HNTumorSegTraining.models import make_spec

    base = tmp_path_factory.mktemp("runs")
    data = base / "data"
    for case_id in ("TR-001", "TV-001"):
        _write_case(data, case_id)
    other = base / "other_style"
    _write_case(other, "OS-001")
    psam = make_spec("psam", channels=(4, 8, 16, 32, 64), psam_channels=[2, 4, 8])
    unet = make_spec("unet", channels=(4, 8, 16, 32, 64))
    return {"base": base, "other": other,
            "A": _make_run(base, "A", psam, 0, data), "B": _make_run(base, "B", unet, 1, data)}


def test_export_of_several_runs_is_an_ensemble_that_averages_them(runs, x, tmp_path, capsys):
    from HNTumorSegTraining.cli import main as train_main

    out = tmp_path / "models" / "ens"
    assert train_main(["export", "--run", str(runs["A"]), "--run", str(runs["B"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "evaluated as a whole" in err
    assert not out.with_suffix(".json").exists()

    assert train_main(["export", "--run", str(runs["A"]), "--run", str(runs["B"]), "--out", str(out),
                       "--unevaluated"]) == 0
    assert "an ensemble of 2 networks" in capsys.readouterr().out
    loaded = load_model(out)
    meta = loaded.meta
    assert loaded.is_ensemble and [m["name"] for m in meta["members"]] == ["run_A-best", "run_B-best"]
    for member, run in zip(loaded.members, (runs["A"], runs["B"])):
        single = load_model(run / "best")
        assert member.tensors_sha256 == single.members[0].tensors_sha256
    assert meta["members"][0]["source"]["run"] == "run_A" and meta["members"][1]["network"]["psam"] is False
    assert meta["trained_on"]["synthetic"] is False and "ensemble of 2 networks" in meta["trained_on"]["description"]
    assert meta["training"]["ensemble_of"] == ["run_A", "run_B"] and "not evaluated" in meta["metrics"]["note"]
    from HNTumorSegTraining.export import absolute_paths_in

    assert absolute_paths_in(meta) == []
    pa, pb = _prob(runs["A"] / "best.json", x), _prob(runs["B"] / "best.json", x)
    np.testing.assert_allclose(_prob(out, x), (pa + pb) / np.float32(2), rtol=0, atol=1e-7)

    # evaluated as a whole (the evaluate path runs the ensemble), then exported with the evaluation
    ev = tmp_path / "eval_other_style"
    assert train_main(["evaluate", "--model", str(out.with_suffix(".json")), "--data", str(runs["other"]),
                       "--out", str(ev), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "ensemble of 2 networks (run_A-best, run_B-best)" in printed and "confusion (pooled" in printed
    summary = json.loads((ev / "summary.json").read_text())
    assert [m["tensors_sha256"] for m in summary["members"]] == [m["tensors_sha256"] for m in meta["members"]]
    assert train_main(["export", "--run", str(runs["A"]), "--run", str(runs["B"]), "--out", str(out),
                       "--evaluation", f"unseen_style={ev}"]) == 0
    meta = load_model(out).meta
    entry = meta["metrics"]["evaluations"]["unseen_style"]
    assert entry["cases"] == 1 and entry["cases_from"] == "folder" and entry["data_root"] == "other_style"
    assert set(entry["overall"]["confusion"]) == {"GTVp_as_GTVn", "GTVn_as_GTVp"}
    assert entry["overall"] == summary["overall"] and "confusion_rule" in meta["metrics"]

    # an evaluation of one member alone is not an evaluation of the ensemble
    ev_a = tmp_path / "eval_A"
    assert train_main(["evaluate", "--run", str(runs["A"]), "--data", str(runs["other"]), "--out", str(ev_a),
                       "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    assert train_main(["export", "--run", str(runs["A"]), "--run", str(runs["B"]), "--out", str(tmp_path / "x"),
                       "--evaluation", f"unseen_style={ev}", "--evaluation", f"a_only={ev_a}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "evaluation a_only" in err and "scored other weights" in err
    assert not (tmp_path / "x.json").exists()
    # ... but it is one of that run alone
    assert train_main(["export", "--run", str(runs["A"]), "--out", str(tmp_path / "single"),
                       "--evaluation", f"unseen_style={ev_a}"]) == 0
    assert load_model(tmp_path / "single").meta["metrics"]["evaluations"]["unseen_style"]["cases"] == 1


def test_export_refuses_mixes_hntumorseglib_cannot_build_or_average(runs, tmp_path):
    from HNTumorSegTraining.export import export
    from HNTumorSegTraining.models import make_spec

    base = tmp_path
    data = runs["base"] / "data"
    umamba = _make_run(base, "U", make_spec("umamba", channels=(4, 8, 16, 32, 64), d_state=4, scan_chunk=4), 0, data)
    with pytest.raises(InputError, match="umamba network cannot be exported"):
        export([runs["A"], umamba], base / "e", require_evaluation=False)
    old = _make_run(base, "old", make_spec("psam", channels=(4, 8, 16, 32, 64), psam_channels=[2, 4, 8]), 3, data,
                    preprocessing_version="0")
    with pytest.raises(InputError, match="differ in preprocessing version"):
        export([runs["A"], old], base / "e", require_evaluation=False)
    with pytest.raises(InputError, match="given twice"):
        export([runs["A"], runs["A"]], base / "e", require_evaluation=False)
    pp = _make_run(base, "pp", make_spec("psam", channels=(4, 8, 16, 32, 64), psam_channels=[2, 4, 8]), 4, data,
                   postprocess=LARGEST_ONLY)
    with pytest.raises(InputError, match="different clean-ups"):
        export([runs["A"], pp], base / "e", require_evaluation=False)
    assert not any(base.glob("e.*"))
    _, config = export([runs["A"], pp], base / "e", require_evaluation=False, postprocess=False)
    assert "postprocess" not in json.loads(config.read_text())
    with pytest.raises(ModelFileError, match="an ensemble of 2 networks"):
        from HNTumorSegTraining.weights import load_weights

        load_weights(config)


def test_an_ensemble_is_scored_on_the_split_its_runs_held_out_and_export_takes_that(runs, tmp_path, capsys):
    """``evaluate --model --cache CACHE --split val``: the cases every member held out, read from the
    cache's data root; an evaluation on their training cases is not a held-out score and export refuses it."""
    from HNTumorSegTraining.cli import main as train_main

    out = tmp_path / "ens"
    assert train_main(["export", "--run", str(runs["A"]), "--run", str(runs["B"]), "--out", str(out),
                       "--unevaluated"]) == 0
    cache = json.loads((runs["A"] / "run.json").read_text())["cache"]
    held_out, trained = tmp_path / "eval_val", tmp_path / "eval_train"
    assert train_main(["evaluate", "--model", str(out.with_suffix(".json")), "--cache", cache, "--out",
                       str(held_out), "--device", "cpu", "--quiet"]) == 0
    summary = json.loads((held_out / "summary.json").read_text())
    scored = [row.split(",")[0] for row in (held_out / "cases.csv").read_text().splitlines()[1:]]
    assert scored == ["TV-001"] and summary["split"] == "val" and summary["cases_from"] == "split val of cache cache_A"
    assert train_main(["evaluate", "--model", str(out.with_suffix(".json")), "--cache", cache, "--split", "train",
                       "--out", str(trained), "--device", "cpu", "--quiet"]) == 0
    scored = [row.split(",")[0] for row in (trained / "cases.csv").read_text().splitlines()[1:]]
    assert scored == ["TR-001"]
    capsys.readouterr()

    assert train_main(["export", "--run", str(runs["A"]), "--run", str(runs["B"]), "--out", str(out),
                       "--evaluation", f"heldout={held_out}"]) == 0
    entry = load_model(out).meta["metrics"]["evaluations"]["heldout"]
    assert entry["cases_from"] == "split val of cache cache_A"
    capsys.readouterr()
    assert train_main(["export", "--run", str(runs["A"]), "--run", str(runs["B"]), "--out", str(tmp_path / "x"),
                       "--evaluation", f"heldout={trained}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TR-001" in err[0] and not (tmp_path / "x.json").exists()

    # --cache needs a report folder; --split without --cache or --run's own split is refused
    assert train_main(["evaluate", "--model", str(out.with_suffix(".json")), "--cache", cache]) == 2
    assert train_main(["evaluate", "--model", str(out.with_suffix(".json")), "--data", str(runs["other"]),
                       "--split", "val", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--out DIR" in err[0] and "--split" in err[1]
