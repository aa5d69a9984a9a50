"""Training augmentation (HNTumorSegTraining.augment): alignment, reproducibility, domains, presets, options.

Small synthetic caches in the cache's file format; a marker cube is bright on CT and PET and
labelled 1 at the same place, so every spatial transform must move it identically in the three.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from HNTumorSegLib.imaging.image_io import write_json, write_npy
from HNTumorSegLib.pipeline.intensity import normalize_ct, normalize_pet
from HNTumorSegLib.optional_packages import MissingPackageError
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION
from HNTumorSegTraining import augment as A
from HNTumorSegTraining import cache as cache_module
from HNTumorSegTraining.data import Augmentation, TrainDataset
from HNTumorSegTraining.fit import _settings_mismatch, add_fit_arguments, fit_kwargs_from_args
from conftest import assert_batches_independent_of_workers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOLUME = (48, 96, 96)
PATCH = (16, 48, 48)
MARKER = (slice(20, 26), slice(30, 40), slice(62, 70))   # ~19 mm off the patch centre: rotations move it
CT_BG, CT_HI = 0.55, 0.72
PET_BG, PET_HI = 0.30, 0.95
MU, SIGMA = 1.2, 2.0
NONE = A.NnUNetAugmentation.none().to_dict()


def only(**change) -> A.NnUNetAugmentation:
    """Every probability 0 but the ones given."""
    return A.NnUNetAugmentation(**{**NONE, **change})


def marker_volume(rng=None) -> tuple[np.ndarray, np.ndarray]:
    image = np.empty((2, *VOLUME), np.float32)
    image[0], image[1] = CT_BG, PET_BG
    if rng is not None:  # some texture, so that intensity transforms have something to act on
        image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    label = np.zeros(VOLUME, np.uint8)
    image[0][MARKER], image[1][MARKER], label[MARKER] = CT_HI, PET_HI, 1
    label[8:12, 20:30, 20:30] = 2
    return image, label


@pytest.fixture(scope="module")
def marker_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("marker_cache")
    for k, cid in enumerate(("CHUM-001", "MDA-001")):
        image, label = marker_volume(np.random.default_rng(k))
        folder = cache_module.case_dir(root, cid)
        folder.mkdir(parents=True)
        write_npy(image.astype(np.float16), folder / "image.npy")
        write_npy(label, folder / "label.npy")
        write_json({"version": PREPROCESSING_VERSION, "case_id": cid,
                    "pet_normalisation": {"mean": MU, "std": SIGMA}}, folder / "provenance.json")
    return root


def centroid(mask: np.ndarray) -> np.ndarray:
    assert mask.any()
    return np.array(np.nonzero(mask), float).mean(axis=1)


# ------------------------------------------------------------------------------------------- spatial
SPATIAL_CASES = {
    "rotation": only(rotation_p=1.0),
    "scaling": only(scaling_p=1.0),
    "elastic": only(elastic_p=1.0, elastic_magnitude_mm=(8.0, 10.0)),
    "mirror (z, y, x)": only(mirror_p=1.0, mirror_axes=("z", "y", "x")),
    "all at once": only(rotation_p=1.0, scaling_p=1.0, elastic_p=1.0, mirror_p=1.0, mirror_axes=("z", "y", "x")),
}


@pytest.mark.parametrize("name", list(SPATIAL_CASES))
def test_each_spatial_transform_keeps_ct_pet_and_label_aligned(name):
    image, label = marker_volume()
    start = (14, 24, 28)
    crop = tuple(slice(s, s + p) for s, p in zip(start, PATCH))
    unmoved = centroid(label[crop] == 1)
    moved = 0.0
    for k in range(6):
        out, lab, draw, ops = A.augmented_patch(image, label, start, PATCH, np.random.default_rng([3, k]),
                                                SPATIAL_CASES[name])
        assert out.shape == (2, *PATCH) and out.dtype == np.float32 and lab.shape == PATCH and lab.dtype == np.uint8
        assert not ops and set(np.unique(lab)) <= {0, 1, 2}
        where = centroid(lab == 1)
        for channel, (lo, hi) in enumerate([(CT_BG, CT_HI), (PET_BG, PET_HI)]):
            bright = centroid(out[channel] > (lo + hi) / 2)
            assert np.abs(bright - where).max() <= 1.0, (name, k, channel, bright, where, draw)
        moved = max(moved, float(np.abs(where - unmoved).max()))
    assert moved > 1.5, f"{name}: the marker never moved, so the test shows nothing"


def test_mirroring_alone_is_exact_and_only_along_the_allowed_axes():
    image, label = marker_volume()
    start = (14, 24, 28)
    crop = (slice(None), *[slice(s, s + p) for s, p in zip(start, PATCH)])
    seen = set()
    for k in range(12):
        out, lab, draw, _ = A.augmented_patch(image, label, start, PATCH, np.random.default_rng(k), only(mirror_p=0.5))
        assert draw.mirror[:2] == (False, False)  # default mirror_axes: x only
        ref = image[crop][..., ::-1] if draw.mirror[2] else image[crop]
        assert np.array_equal(out, ref)          # cut and flipped, not interpolated
        seen.add(draw.mirror[2])
    assert seen == {True, False}


def test_rotations_act_in_millimetres_not_voxels():
    """A 90-degree turn about x swaps z and y extents in mm: 3 mm slices are not treated as 1 mm."""
    image, label = marker_volume()
    draw = A.SpatialDraw(angles=(0.0, 0.0, math.pi / 2))  # about x: acts on (z, y)
    window = A.source_window(VOLUME, PATCH, (14, 24, 28), draw)
    region = tuple(slice(a, b) for a, b in zip(window.lo, window.hi))
    _, lab = A.apply_spatial(image[(slice(None), *region)], label[region], window)
    zs, ys, _ = np.nonzero(lab == 1)
    # The marker is 6 slices (18 mm) by 10 rows (10 mm): after the turn 10 mm of z (3-4 slices) by 18 rows.
    assert zs.max() - zs.min() + 1 in (3, 4, 5) and ys.max() - ys.min() + 1 in (17, 18, 19)


def test_a_rotated_patch_is_sampled_from_a_larger_region_so_corners_hold_image():
    image, label = marker_volume(np.random.default_rng(1))
    image[0] += np.linspace(0, 0.1, VOLUME[2], dtype=np.float32)  # an x gradient: edge replication would show
    draw = A.SpatialDraw(angles=(math.radians(30), 0.0, 0.0))
    window = A.source_window(VOLUME, PATCH, (16, 24, 24), draw)
    assert all(h - l > p for l, h, p in list(zip(window.lo, window.hi, PATCH))[1:])  # more than the patch in y and x
    region = tuple(slice(a, b) for a, b in zip(window.lo, window.hi))
    out, _ = A.apply_spatial(image[(slice(None), *region)], label[region], window)
    corner = out[0, :, :4, :4]
    assert abs(float(corner.std())) > 0.005  # image (noise and gradient), not a constant fill


# ------------------------------------------------------------------------------------------- reproducibility
def test_a_key_reproduces_a_sample_exactly_and_other_keys_differ(marker_cache):
    busy = A.NnUNetAugmentation(**{**A.NnUNetAugmentation().to_dict(), "rotation_p": 0.5, "elastic_p": 0.3,
                                   "noise_p": 0.5, "gamma_p": 0.5, "pet_scale_p": 0.5})
    ds = TrainDataset(marker_cache, ["CHUM-001", "MDA-001"], patch_size=PATCH, augmentation=busy, seed=4)
    again = TrainDataset(marker_cache, ["CHUM-001", "MDA-001"], patch_size=PATCH, augmentation=busy, seed=4)
    images = []
    for key in [(0, 1, 0), (0, 1, 1), (1, 1, 0), (0, 2, 0)]:
        a, b = ds[key], again[key]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        images.append(a["image"])
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not torch.equal(images[i], images[j])
    other_seed = TrainDataset(marker_cache, ["CHUM-001", "MDA-001"], patch_size=PATCH, augmentation=busy, seed=5)
    assert not torch.equal(other_seed[(0, 1, 0)]["image"], images[0])


def test_batches_do_not_depend_on_the_number_of_workers(marker_cache):
    busy = only(rotation_p=0.7, scaling_p=0.5, elastic_p=0.3, mirror_p=0.5, noise_p=0.5, blur_p=0.5,
                gamma_p=0.5, lowres_p=0.5, pet_scale_p=0.5, pet_blur_p=0.5)
    ds = TrainDataset(marker_cache, ["CHUM-001", "MDA-001"], patch_size=PATCH, augmentation=busy, seed=2)
    assert assert_batches_independent_of_workers(ds, seed=2, samples_per_epoch=6, epoch=3) == 3


# ------------------------------------------------------------------------------------------- identity, label, domains
@pytest.mark.parametrize("patch", [PATCH, None])
@pytest.mark.parametrize("aug", ["none", "off"])
def test_probabilities_zero_give_the_cached_patch(marker_cache, patch, aug):
    spec = A.NnUNetAugmentation.none() if aug == "none" else "off"
    ds = TrainDataset(marker_cache, ["CHUM-001"], patch_size=patch, augmentation=spec, seed=0)
    case = cache_module.open_case(marker_cache, "CHUM-001")
    for draw in range(4):
        item = ds[(0, 1, draw)]
        z, y, x = item["start"].tolist()
        size = patch or VOLUME
        win = (slice(z, z + size[0]), slice(y, y + size[1]), slice(x, x + size[2]))
        assert np.array_equal(item["image"].numpy(), np.asarray(case.image[(slice(None), *win)], np.float32))
        assert np.array_equal(item["label"].numpy(), case.label[win]) and not item["flipped"]


INTENSITY = only(noise_p=1.0, blur_p=1.0, blur_channel_p=1.0, brightness_p=1.0, contrast_p=1.0, lowres_p=1.0,
                 lowres_channel_p=1.0, gamma_inverted_p=1.0, gamma_p=1.0, pet_scale_p=1.0, pet_blur_p=1.0)


def test_intensity_transforms_never_change_the_label(marker_cache):
    ds = TrainDataset(marker_cache, ["CHUM-001"], patch_size=PATCH, augmentation=INTENSITY, seed=1)
    case = cache_module.open_case(marker_cache, "CHUM-001")
    for draw in range(5):
        item = ds[(0, 1, draw)]
        z, y, x = item["start"].tolist()
        win = (slice(z, z + PATCH[0]), slice(y, y + PATCH[1]), slice(x, x + PATCH[2]))
        assert np.array_equal(item["label"].numpy(), case.label[win])
        cached = np.asarray(case.image[(slice(None), *win)], np.float32)
        for c in range(2):
            assert np.abs(item["image"][c].numpy() - cached[c]).max() > 1e-3  # the image did change
        assert np.isfinite(item["image"].numpy()).all()


def test_each_intensity_op_is_drawn_and_leaves_other_channels_alone():
    rng = np.random.default_rng(0)
    names = {op.name for op in A.draw_intensity(rng, INTENSITY)}
    assert names == {"pet_scale", "pet_blur", "noise", "blur", "brightness", "contrast", "lowres", "gamma_inverted",
                     "gamma"}
    image = marker_volume(np.random.default_rng(2))[0][:, :16, :48, :48].copy()
    before = image.copy()
    out = A.apply_intensity(image, [A.IntensityOp("pet_scale", 1, 1.2)], np.random.default_rng(0), MU / SIGMA)
    assert np.array_equal(out[0], before[0]) and not np.array_equal(out[1], before[1])


def test_domains_round_trip_and_ct_brightness_acts_in_hounsfield_units():
    hu = np.array([-1000.0, -500.0, -100.0, 0.0, 40.0, 300.0, 1000.0], np.float32)
    p = torch.from_numpy(normalize_ct(hu))
    back = A.from_linear(A.to_linear(p, 0), 0)
    torch.testing.assert_close(back, p, rtol=0, atol=2e-6)
    t = A.to_linear(p, 0)
    torch.testing.assert_close(t * A.CT_REFERENCE_HU[1] + A.CT_REFERENCE_HU[0], torch.from_numpy(hu), rtol=0, atol=0.05)
    out = A.apply_intensity(p.reshape(1, 1, 1, -1).repeat(1, 2, 2, 1).numpy().copy()[None][0],
                            [A.IntensityOp("brightness", 0, 1.2)], np.random.default_rng(0))
    expected = normalize_ct(np.clip(40 + 1.2 * (hu - 40), -1000, 1000))
    np.testing.assert_allclose(out[0, 0, 0], expected, atol=2e-6)


def test_a_global_suv_scale_cancels_in_the_normalisation():
    """Why pet_scale is not a calibration factor: k * SUV, normalised with its own statistics, is the same input."""
    suv = np.random.default_rng(0).gamma(1.5, 1.0, (8, 16, 16)).astype(np.float32)
    for k in (0.7, 1.3):
        mu, sigma = float(suv.mean()), float(suv.std())
        np.testing.assert_allclose(normalize_pet(k * suv, k * mu, k * sigma), normalize_pet(suv, mu, sigma),
                                   rtol=0, atol=1e-6)


def test_pet_scale_multiplies_every_suv_with_the_window_statistics_fixed():
    suv = np.concatenate([np.zeros(5), np.linspace(0.1, 12.0, 60)]).astype(np.float32).reshape(1, 5, 13)
    image = np.stack([np.full_like(suv, 0.6), normalize_pet(suv, MU, SIGMA)])
    k = 1.25
    out = A.apply_intensity(image.copy(), [A.IntensityOp("pet_scale", 1, k)], np.random.default_rng(0), MU / SIGMA)
    z = np.log(out[1]) - np.log1p(-out[1])
    recovered = MU + SIGMA * z
    unsaturated = k * suv < MU + 7 * SIGMA
    np.testing.assert_allclose(recovered[unsaturated], k * suv[unsaturated], rtol=1e-3, atol=1e-3)
    assert np.allclose(recovered[suv == 0], 0.0, atol=1e-4)  # air (and the padding outside the scan) stays 0


def test_pet_resolution_blur_equals_blurring_the_suv_image():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    suv = np.full((12, 40, 40), 1.0, np.float32)
    suv[5:8, 15:22, 18:24] = 4.0
    suv += rng.normal(0, 0.05, suv.shape).astype(np.float32)
    image = np.stack([np.full_like(suv, 0.6), normalize_pet(suv, MU, SIGMA)])
    fwhm = 6.0
    out = A.apply_intensity(image.copy(), [A.IntensityOp("pet_blur", 1, fwhm)], np.random.default_rng(0))
    recovered = MU + SIGMA * (np.log(out[1]) - np.log1p(-out[1]))
    sigma_vox = [fwhm / A.FWHM_PER_SIGMA / s for s in A.SPACING_ZYX]
    expected = gaussian_filter(suv.astype(np.float64), sigma_vox, mode="nearest", truncate=3.0)
    # MONAI's kernel integrates the Gaussian over each voxel (erf), scipy samples it: close, not equal.
    np.testing.assert_allclose(recovered, expected, atol=0.06)
    assert np.abs(recovered - expected).mean() < 0.005
    assert np.abs(recovered - suv).max() > 0.5  # and it did blur


# ------------------------------------------------------------------------------------------- presets and options
def test_presets_records_and_old_records():
    assert isinstance(A.make_augmentation(None), A.NnUNetAugmentation)
    assert A.make_augmentation("light") == A.LightAugmentation() == Augmentation()
    assert A.make_augmentation("off").record() == {"preset": "off"}
    default = A.NnUNetAugmentation()
    assert A.make_augmentation(json.loads(json.dumps(default.record()))) == default
    old = Augmentation.off().to_dict()                           # a record written before presets
    assert "preset" not in old and A.make_augmentation(old) == A.LightAugmentation.off()
    with pytest.raises(ValueError, match="no parameter elastc_p"):
        A.make_augmentation({"preset": "default", "elastc_p": 0.2})
    with pytest.raises(ValueError, match="probability"):
        A.make_augmentation({"preset": "default", "rotation_p": 2})
    with pytest.raises(ValueError, match="mirror_axes"):
        A.make_augmentation({"preset": "default", "mirror_axes": ["left"]})
    saved = {"augmentation": Augmentation().to_dict()}
    assert not [p for p in _settings_mismatch(saved, {"augmentation": A.LightAugmentation().record()})
                if p.startswith("augmentation")]                  # an old light run resumes
    assert [p for p in _settings_mismatch(saved, {"augmentation": default.record()}) if p.startswith("augmentation")]


def _args(*argv: str) -> argparse.Namespace:
    return add_fit_arguments(argparse.ArgumentParser()).parse_args(["--out", "/nonexistent/run", "--cache", "c",
                                                                     "--model", "psam", "--epochs", "1", *argv])


def test_augmentation_options():
    assert "augmentation" not in fit_kwargs_from_args(_args())   # fit's default: the default preset
    assert fit_kwargs_from_args(_args("--augment", "off"))["augmentation"] == {"preset": "off"}
    light = fit_kwargs_from_args(_args("--flip-p", "0.3", "--noise-std", "0.02"))["augmentation"]
    assert light == {**A.LightAugmentation(flip_p=0.3, noise_std=0.02).record()}   # old flags: the light preset
    changed = fit_kwargs_from_args(_args("--augment", "default", "--aug-set", "elastic_p=0.2",
                                         "--aug-set", 'mirror_axes=["x", "y"]'))["augmentation"]
    assert changed == A.NnUNetAugmentation(elastic_p=0.2, mirror_axes=("x", "y")).record()
    with pytest.raises(ValueError, match="light augmentation preset"):
        fit_kwargs_from_args(_args("--augment", "default", "--flip-p", "0.3"))
    with pytest.raises(ValueError, match="no parameter"):
        fit_kwargs_from_args(_args("--aug-set", "flip_p=0.3"))


def test_resume_keeps_the_runs_augmentation(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    record = A.NnUNetAugmentation(elastic_p=0.2).record()
    (run / "run.json").write_text(json.dumps({"fit_arguments": {"cache": "c", "model_name": "psam", "epochs": 2,
                                                                "augmentation": record}}))
    args = add_fit_arguments(argparse.ArgumentParser()).parse_args(["--out", str(run), "--resume"])
    assert fit_kwargs_from_args(args)["augmentation"] == record
    args = add_fit_arguments(argparse.ArgumentParser()).parse_args(["--out", str(run), "--resume", "--augment",
                                                                    "default"])
    assert fit_kwargs_from_args(args)["augmentation"] == record   # naming its own preset keeps its parameters
    old = {"cache": "c", "model_name": "psam", "epochs": 2, "augmentation": Augmentation().to_dict()}
    (run / "run.json").write_text(json.dumps({"fit_arguments": old}))
    args = add_fit_arguments(argparse.ArgumentParser()).parse_args(["--out", str(run), "--resume", "--flip-p", "0"])
    assert fit_kwargs_from_args(args)["augmentation"] == A.LightAugmentation(flip_p=0.0).record()


def test_without_monai_the_default_preset_is_one_line_and_light_still_works(marker_cache, monkeypatch):
    for name in [n for n in sys.modules if n == "monai" or n.startswith("monai.")] + ["monai"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingPackageError) as info:
        TrainDataset(marker_cache, ["CHUM-001"], patch_size=PATCH)
    assert "\n" not in str(info.value) and "pip install 'monai" in str(info.value)
    assert "--augment default" in str(info.value)
    item = TrainDataset(marker_cache, ["CHUM-001"], patch_size=PATCH, augmentation="light")[(0, 1, 0)]
    assert item["image"].shape == (2, *PATCH)


def test_the_cost_benchmark_runs_with_what_is_installed(capsys):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "augment_cost.py"
    spec = importlib.util.spec_from_file_location("augment_cost", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--sizes", "16", "16", "16", "--repeats", "1", "--draws", "2", "--libraries", "monai", "bgv2"])
    out = capsys.readouterr().out
    for name in ("monai", "bgv2"):
        installed = importlib.util.find_spec(bench.LIBRARIES[name]) is not None
        assert (f"{name}: not installed" in out) != installed
    assert "| rotation + scaling (from the source region) |" in out and "project 16x16x16" in out
    assert any(line.startswith(f"{bench.RESULT_PREFIX} project 16x16x16") for line in out.splitlines())
