"""The segment/demo commands and the Segmenter end to end, with small random-weight models.

Random weights say nothing about accuracy; these tests check the plumbing: geometry of the output,
the report, model checks, device choice and that failures leave nothing behind.
"""

from __future__ import annotations

import contextlib

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HNTumorSegLib.pipeline import inference
from HNTumorSegLib.cli import main
from HNTumorSegLib.errors import InputError, ModelFileError
from HNTumorSegLib.imaging.geometry import Geometry
from HNTumorSegLib.imaging.label_checks import ct_digest
from HNTumorSegLib.pipeline.inference import Segmenter, resolve_device
from HNTumorSegLib.evaluation.metrics import structure_statistics

from conftest import tiny_ct_pet




def test_segment_writes_label_on_ct_grid_and_report(tiny_files, small_model, tmp_path, capsys, monkeypatch):
    """... and the report names its inputs by absolute paths, given relative ones: it means the same files
    read from any working directory."""
    out = tmp_path / "res" / "seg.nii.gz"
    monkeypatch.chdir(tmp_path)
    code = main(["segment", "--ct", os.path.relpath(tiny_files["ct"]), "--pet", os.path.relpath(tiny_files["pet"]),
                 "--out", str(out), "--model", str(small_model), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    label = sitk.ReadImage(str(out))
    ct = sitk.ReadImage(str(tiny_files["ct"]))
    assert Geometry.of(label) == Geometry.of(ct)
    assert label.GetPixelID() == sitk.sitkUInt8
    report = json.loads((tmp_path / "res" / "seg.json").read_text())
    assert set(report["structures"]) == {"GTVp", "GTVn"}
    for s in report["structures"].values():
        assert {"volume_ml", "suv_max", "suv_mean", "tlg"} <= set(s)
    assert report["model"]["weights_sha256"] == json.loads(small_model.read_text())["weights_sha256"]
    for stage in ("read_inputs", "preprocess", "network", "restore", "statistics", "write", "total"):
        assert stage in report["timings_s"]
    assert report["provenance"]["crop"]["x2"] - report["provenance"]["crop"]["x1"] == 256
    assert report["inputs"] == {"ct": str(Path(tiny_files["ct"]).resolve()), "pet": str(Path(tiny_files["pet"]).resolve())}
    assert report["ct_digest"] == ct_digest(sitk.ReadImage(str(tiny_files["ct"])))  # ties the label map to its CT
    assert sorted(p.name for p in out.parent.iterdir()) == ["seg.json", "seg.nii.gz"]


def _tamper(src_json, tmp_path, how):
    import shutil

    dst = tmp_path / "tampered"
    dst.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(src_json.with_suffix(suffix), dst / f"m{suffix}")
    if how == "bytes":
        w = dst / "m.safetensors"
        data = bytearray(w.read_bytes())
        data[-5] ^= 0xFF
        w.write_bytes(bytes(data))
    elif how == "config":
        meta = json.loads((dst / "m.json").read_text())
        meta["network"]["channels"] = [8, 16, 32, 64, 128]
        (dst / "m.json").write_text(json.dumps(meta))
    return dst / "m.json"


@pytest.mark.parametrize("how,needle", [("bytes", "sha256"), ("config", "do not fit")])
def test_segment_refuses_a_tampered_model(tiny_files, small_model, tmp_path, capsys, how, needle):
    model = _tamper(small_model, tmp_path, how)
    out = tmp_path / "out" / "seg.nii.gz"
    code = main(["segment", "--ct", str(tiny_files["ct"]), "--pet", str(tiny_files["pet"]), "--out", str(out),
                 "--model", str(model)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert needle in err and "m." in err
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_segmenter_refuses_other_preprocessing_version(small_model, tmp_path):
    meta = json.loads(small_model.read_text())
    meta["preprocessing_version"] = "0"
    import shutil

    shutil.copy(small_model.with_suffix(".safetensors"), tmp_path / "old.safetensors")
    (tmp_path / "old.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="preprocessing version"):
        Segmenter(tmp_path / "old.json", device="cpu")


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_a_device_this_machine_lacks_or_that_is_none_is_named(monkeypatch):
    """`--device cuda:3` on a one-GPU machine went on to a CUDA traceback; "cuda:x" to torch's own error."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(InputError, match="'cuda:3': this machine has 1 CUDA device"):
        resolve_device("cuda:3")
    with pytest.raises(InputError, match="'cuda:x': use auto, cpu, cuda or cuda:N"):
        resolve_device("cuda:x")


def test_tta_averages_the_mirrored_prediction(small_model):
    seg = Segmenter(small_model, device="cpu", tta=True)
    x = np.random.default_rng(0).random((2, 32, 64, 64), dtype=np.float32)  # any size divisible by 16
    got = seg.predict_window(x)
    with torch.inference_mode():
        t = torch.from_numpy(x)[None]
        prob = torch.softmax(seg.model(t), 1) + torch.softmax(seg.model(t.flip(4)), 1).flip(4)
    assert np.array_equal(got, prob.argmax(1)[0].numpy().astype(np.uint8))


def test_demo_says_plainly_when_no_model_is_bundled(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inference, "DEFAULT_MODEL_NAME", "no_such_model")
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "no trained model is bundled" in err and "Nothing was written" in err
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [
    (["--model", "{tmp}/missing.json"], "missing.json"),
    (["--model", "{tmp}/damaged.json"], "damaged.json"),
    (["--seed", "-1"], "--seed: give an integer of 0 or more, not '-1'"),
])
def test_a_demo_that_cannot_run_says_so_in_one_line_and_writes_nothing(tmp_path, capsys, args, needle):
    out = tmp_path / "demo"
    (tmp_path / "damaged.json").write_text("{not json")
    with pytest.raises(SystemExit) if args[0] == "--seed" else contextlib.nullcontext() as exited:
        code = main(["demo", "--out", str(out), *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err
    assert (exited.value.code if args[0] == "--seed" else code) == 2, err
    assert needle in err and "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*"))


def test_demo_with_a_given_model(small_model, tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--fov", "head", "--model", str(small_model), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    pngs = list(out.glob("*_overlay.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(next(out.glob("*_seg.json")).read_text())
    assert set(report["reference"]["dice"]) == {"GTVp", "GTVn"}
    assert all(0.0 <= v <= 1.0 for v in report["reference"]["dice"].values())


def test_structure_statistics_on_a_linear_pet():
    """A PET linear in x is interpolated exactly, so SUV figures can be computed by hand."""
    ct, _ = tiny_ct_pet()
    lab = np.zeros((40, 100, 100), np.uint8)
    lab[10:14, 30:40, 40:50] = 1  # 400 voxels of 2 x 2 x 3 mm = 4.8 mL
    label = sitk.GetImageFromArray(lab)
    label.CopyInformation(ct)
    pet_arr = np.zeros((30, 60, 60), np.float32)
    xs = -110.0 + 4.0 * np.arange(60)  # physical x of PET columns
    pet_arr[:] = (2.0 + 0.01 * xs)[None, None, :]
    pet = sitk.GetImageFromArray(pet_arr)
    pet.SetSpacing((4.0, 4.0, 4.0))
    pet.SetOrigin((-110.0, -110.0, -70.0))
    stats = structure_statistics(label, pet)
    x_mm = -100.0 + 2.0 * np.arange(40, 50)  # CT columns 40..49
    suv = 2.0 + 0.01 * x_mm
    p = stats["GTVp"]
    assert p["voxels"] == 400
    assert p["volume_ml"] == pytest.approx(4.8)
    assert p["suv_max"] == pytest.approx(suv.max(), abs=1e-5)
    assert p["suv_mean"] == pytest.approx(suv.mean(), abs=1e-5)
    assert p["tlg"] == pytest.approx(suv.mean() * 4.8, abs=1e-4)
    assert stats["GTVn"] == {"label": 2, "voxels": 0, "volume_ml": 0.0, "suv_max": None, "suv_mean": None,
                             "tlg": None}


@pytest.mark.parametrize("tta,measure", [(False, "normalised entropy"), (True, "disagreement of the passes")])
def test_segment_writes_probabilities_and_uncertainty_on_the_ct_grid(tiny_files, small_model, tmp_path, capsys,
                                                                     tta, measure):
    out, probabilities = tmp_path / "seg.nii.gz", tmp_path / "P.nii.gz"
    code = main(["segment", "--ct", str(tiny_files["ct"]), "--pet", str(tiny_files["pet"]), "--out", str(out),
                 "--model", str(small_model), "--device", "cpu", "--probabilities", str(probabilities)]
                + (["--tta"] if tta else []))
    assert code == 0, capsys.readouterr().err
    ct = sitk.ReadImage(str(tiny_files["ct"]))
    p = sitk.ReadImage(str(probabilities))
    u = sitk.ReadImage(str(tmp_path / "P_uncertainty.nii.gz"))
    assert p.GetNumberOfComponentsPerPixel() == 2 and u.GetNumberOfComponentsPerPixel() == 1
    for image in (p, u):
        assert Geometry.of(image) == Geometry.of(ct)
    pa, ua = sitk.GetArrayFromImage(p), sitk.GetArrayFromImage(u)
    assert pa.min() >= 0 and pa.sum(axis=-1).max() <= 1 + 1e-5 and 0 <= ua.min() and ua.max() <= 1
    assert ua.max() > 0.01  # random weights are unsure somewhere
    report = json.loads((tmp_path / "seg.json").read_text())
    assert report["probabilities"]["components"] == ["GTVp", "GTVn"]
    assert report["probabilities"]["uncertainty"]["measure"] == measure
    assert "P_uncertainty.nii.gz" in capsys.readouterr().out


def test_uncertainty_is_entropy_for_one_pass_and_spread_for_several():
    from HNTumorSegLib.pipeline.inference import Segmentation

    prob = np.zeros((3, 2, 2, 2), np.float32)
    prob[0] = 1.0  # certain background
    prob[:, 1] = 1 / 3  # one slice of complete doubt
    seg = Segmentation(None, {}, probabilities=prob)
    values, measure = seg.uncertainty()
    assert measure == "normalised entropy"
    np.testing.assert_allclose(values[0], 0.0, atol=1e-5)
    np.testing.assert_allclose(values[1], 1.0, atol=1e-5)
    spread = np.full((2, 2, 2), 0.25, np.float32)
    values, measure = Segmentation(None, {}, probabilities=prob, disagreement=spread).uncertainty()
    assert measure == "disagreement of the passes" and np.allclose(values, 0.5)
    assert Segmentation(None, {}).uncertainty() is None


def test_a_bad_probabilities_name_writes_nothing(tiny_files, small_model, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    code = main(["segment", "--ct", str(tiny_files["ct"]), "--pet", str(tiny_files["pet"]), "--out", str(out),
                 "--model", str(small_model), "--device", "cpu", "--probabilities", str(tmp_path / "P.txt")])
    assert code == 2 and "P.txt: output must end in one of" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "seg.json").exists()


def test_outputs_named_in_upper_case_or_with_a_data_file_are_written_whole(tiny_files, small_model, tmp_path,
                                                                           capsys):
    """SEG.NII.GZ, a detached-header probability map and a name no NIfTI reader would open."""
    from HNTumorSegLib.imaging.image_io import read_image

    out, prob = tmp_path / "out" / "SEG.NII.GZ", tmp_path / "out" / "P.nhdr"
    assert main(["segment", "--ct", str(tiny_files["ct"]), "--pet", str(tiny_files["pet"]), "--out", str(out),
                 "--model", str(small_model), "--device", "cpu", "--probabilities", str(prob)]) == 0
    assert sorted(f.name for f in out.parent.iterdir()) == ["P.nhdr", "P.raw.gz", "P_uncertainty.nhdr",
                                                          "P_uncertainty.raw.gz", "SEG.NII.GZ", "SEG.json"]
    assert read_image(out, "label").GetSize() == read_image(tiny_files["ct"], "CT").GetSize()
    assert read_image(out.parent / "P_uncertainty.nhdr", "PET").GetSize() == read_image(out, "label").GetSize()
    capsys.readouterr()
    bad = tmp_path / "bad" / "seg.Nii.Gz"
    assert main(["segment", "--ct", str(tiny_files["ct"]), "--pet", str(tiny_files["pet"]), "--out", str(bad),
                 "--model", str(small_model), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mixed letter case" in err[0] and not bad.parent.exists()


def test_refine_nodes_redraws_the_network_s_nodes_with_the_click_model_and_says_so(small_model, tmp_path, capsys,
                                                                                   monkeypatch):
    """`segment --refine-nodes`: each GTVn lesion of the network's result redrawn by the click model from its centre
    (here the network's result is a phantom's reference with its nodes shrunk to their cores, as the bundled
    network draws weak nodes too tight); the report records each node and the time, GTVp is the network's."""
    from scipy import ndimage

    from HNTumorSegLib.evaluation.metrics import dice
    from HNTumorSegLib.phantom import make_phantom, write_case

    case = make_phantom(910000, "head_upper")
    paths = write_case(case, tmp_path / "in")
    truth = sitk.GetArrayFromImage(case.label)
    tight = np.where(truth == 2, 0, truth).astype(np.uint8)
    tight[ndimage.binary_erosion(truth == 2, iterations=2)] = 2
    network = sitk.GetImageFromArray(tight)
    network.CopyInformation(case.label)
    real_segment = Segmenter.segment

    def segment(self, ct, pet, **kwargs):
        result = real_segment(self, ct, pet, **kwargs)
        result.label = network
        return result

    monkeypatch.setattr(Segmenter, "segment", segment)
    out = tmp_path / "seg.nii.gz"
    code = main(["segment", "--ct", str(paths["ct"]), "--pet", str(paths["pet"]), "--out", str(out),
                 "--model", str(small_model), "--device", "cpu", "--refine-nodes"])
    assert code == 0, capsys.readouterr().err
    assert "refine nodes" in capsys.readouterr().out
    refined = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert dice(refined, truth, 2) > dice(tight, truth, 2) + 0.1
    np.testing.assert_array_equal(refined == 1, tight == 1)
    report = json.loads(out.with_name("seg.json").read_text())
    refinement = report["node_refinement"]
    assert len(refinement["nodes"]) == int(ndimage.label(tight == 2, np.ones((3, 3, 3)))[1]) > 0
    assert all(n["redrawn"] for n in refinement["nodes"]) and "refine_nodes" in report["timings_s"]
    assert refinement["click_model"] == "hntumorseg_phantom_node_clicks.json"
