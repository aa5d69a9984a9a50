"""Benchmark: CPU cost per training patch of nnU-Net-grade augmentation in MONAI, batchgeneratorsv2 and TorchIO.

What is timed, per library and patch size (channels CT + PET float32, a uint8 label; one CPU
thread, as in one DataLoader worker): each transform on its own with probability 1, all of them
in a row ("all, p = 1"), and the mean over many draws of nnU-Net's default probabilities
("nnU-Net probabilities": rotation 0.2, scaling 0.2, noise 0.1, blur 0.2, brightness 0.15, contrast
0.15, low resolution 0.25, gamma 0.3 + inverted gamma 0.1, mirroring 0.5 per axis). The spatial
transforms read a source region larger than the patch (rotations by up to 30 degrees about each
axis and zooms down to 1 / 1.4 of the patch need it) and sample the patch from it, as nnU-Net does,
so that rotated corners hold image, not padding. The patch geometry is the cache's: 3 mm slices,
1 mm pixels. When ``HNTumorSegTraining.augment`` imports, the project's own default preset is timed
too, as a column "project" (it calls MONAI; its patches are read from a float16 volume as from the
cache, and it has the two PET-specific rows that the libraries do not).

Each library is optional: the script times whichever of them is installed and says which are
missing. The libraries' own random transforms are used as a user of each would compose them;
equivalents that a library lacks are listed, not emulated. Run:
    python Testing/benchmarks/augment_cost.py [--sizes 32 80 80 48 96 96] [--repeats N] [--draws N]
        [--libraries monai bgv2 torchio]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread, as in a DataLoader worker (before torch loads)
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

LIBRARIES = {"monai": "monai", "bgv2": "batchgeneratorsv2", "torchio": "torchio"}
SPACING_ZYX = (3.0, 1.0, 1.0)
MAX_ANGLE = math.pi / 6
ZOOM = (0.7, 1.4)
RESULT_PREFIX = "augment:"
#: nnU-Net v2 default probabilities (nnUNetTrainer.get_training_transforms).
NNUNET_P = {"spatial": 1 - (1 - 0.2) * (1 - 0.2), "noise": 0.1, "blur": 0.2, "brightness": 0.15,
            "contrast": 0.15, "lowres": 0.25, "gamma": 0.3, "gamma_inverted": 0.1, "mirror": 1.0}
#: What a library lacks among the transforms timed here (so its row is missing, not emulated).
LACKS = {
    "monai": "its elastic transform (Rand3DElastic) smooths a dense full-size noise field (no coarse control "
             "grid); its random intensity transforms draw one value for all channels of an array (one instance "
             "per channel gives independent CT/PET draws); otherwise every nnU-Net transform, each also as a "
             "deterministic transform taking its parameters",
    "bgv2": "draws from the global numpy/torch generators (a per-draw seed must reseed a worker's global "
            "state); rotates and scales voxel grids (no voxel spacing: 3 mm slices are rotated as 1 mm); "
            "a new dependency (batchgenerators, which brings scikit-image, pandas, scikit-learn)",
    "torchio": "no multiplicative brightness and no contrast-around-the-mean transform; low resolution only "
               "along one axis at a time (RandomAnisotropy); resamples through SimpleITK on the whole input "
               "(then a crop to the patch); a new dependency (nibabel, rich, typer, ...)",
}


def source_shape(patch: tuple[int, ...]) -> tuple[int, ...]:
    """Voxels of the region that rotations up to MAX_ANGLE about each axis and a zoom out to ZOOM[1] can reach."""
    half = np.array(patch, float) * np.array(SPACING_ZYX) / 2
    corners = np.array([[sz * half[0], sy * half[1], sx * half[2]] for sz in (-1, 1) for sy in (-1, 1)
                        for sx in (-1, 1)])
    c, s = math.cos(MAX_ANGLE), math.sin(MAX_ANGLE)
    reach = np.zeros(3)
    for signs in [(a, b, d) for a in (-1, 1) for b in (-1, 1) for d in (-1, 1)]:
        rz = np.array([[1, 0, 0], [0, c, -signs[0] * s], [0, signs[0] * s, c]])
        ry = np.array([[c, 0, signs[1] * s], [0, 1, 0], [-signs[1] * s, 0, c]])
        rx = np.array([[c, -signs[2] * s, 0], [signs[2] * s, c, 0], [0, 0, 1]])
        reach = np.maximum(reach, np.abs(corners @ (rz @ ry @ rx).T).max(0))
    return tuple(int(math.ceil(2 * r * ZOOM[1] / sp)) + 2 for r, sp in zip(reach, SPACING_ZYX))


def sample_inputs(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalised CT in (0.5, 0.73), PET in (0, 1) with a hot lesion, and its label, on ``shape``."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (yy ** 2 + xx ** 2) < 0.8
    lesion = ((zz / 0.3) ** 2 + (yy / 0.15) ** 2 + (xx / 0.15) ** 2) < 1
    image = np.empty((2, *shape), np.float32)
    image[0] = np.where(body, 0.62, 0.5) + rng.normal(0, 0.005, shape)
    image[1] = np.where(lesion, 0.99, np.where(body, 0.45, 0.3)) + rng.normal(0, 0.01, shape)
    label = np.zeros(shape, np.uint8)
    label[lesion] = 1
    return image, label


def centre_crop(a: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    start = [(s - p) // 2 for s, p in zip(a.shape[-3:], patch)]
    return a[(..., *[slice(b, b + p) for b, p in zip(start, patch)])]


# ------------------------------------------------------------------------------------------- MONAI
def monai_transforms(patch: tuple[int, ...]) -> dict[str, Callable[[dict], dict]]:
    import monai
    import monai.transforms as mt

    monai.data.set_track_meta(False)  # plain tensors: MetaTensor bookkeeping is not needed here
    keys = ("image", "label")
    sigma = [(0.5, 1.0)] * 3

    def per_channel(make):
        """MONAI draws one value per array: one instance per channel gives independent CT/PET draws."""
        ts = [make() for _ in range(2)]

        def run(d):
            d["image"] = torch.cat([t(d["image"][c:c + 1]) for c, t in enumerate(ts)])
            return d
        return run

    def wrap(t):
        def run(d):
            d["image"] = t(d["image"])
            return d
        return run

    spatial = mt.RandAffined(keys, prob=1.0, rotate_range=(MAX_ANGLE,) * 3, scale_range=(0.3,) * 3,
                             spatial_size=patch, mode=("bilinear", "nearest"), padding_mode=("border", "zeros"))
    elastic = mt.Rand3DElasticd(keys, sigma_range=(3, 5), magnitude_range=(0, 4), prob=1.0,
                                rotate_range=(MAX_ANGLE,) * 3, scale_range=(0.3,) * 3, spatial_size=patch,
                                mode=("bilinear", "nearest"), padding_mode=("border", "zeros"))
    return {
        "rotation + scaling (from the source region)": spatial,
        "elastic + rotation + scaling": elastic,
        "mirror x": mt.RandFlipd(keys, prob=1.0, spatial_axis=2),
        "gamma": per_channel(lambda: mt.RandAdjustContrast(prob=1.0, gamma=(0.7, 1.5), retain_stats=True)),
        "contrast": per_channel(lambda: mt.RandScaleIntensityFixedMean(prob=1.0, factors=0.25, preserve_range=True)),
        "brightness": per_channel(lambda: mt.RandScaleIntensity(factors=0.25, prob=1.0)),
        "Gaussian noise": wrap(mt.RandGaussianNoise(prob=1.0, std=0.316, sample_std=True)),
        "Gaussian blur": per_channel(lambda: mt.RandGaussianSmooth(*sigma, prob=1.0)),
        "low resolution": per_channel(lambda: mt.RandSimulateLowResolution(prob=1.0, zoom_range=(0.5, 1.0))),
    }


def monai_seed(transforms: dict, seed: int) -> None:
    for t in transforms.values():
        if hasattr(t, "set_random_state"):
            t.set_random_state(seed)


# ------------------------------------------------------------------------------------------- batchgeneratorsv2
def bgv2_transforms(patch: tuple[int, ...]) -> dict[str, Callable[[dict], dict]]:
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    def bg(t):
        def run(d):
            out = t(image=d["image"], segmentation=d["label"])
            d["image"], d["label"] = out["image"], out["segmentation"]
            return d
        return run

    spatial = dict(patch_center_dist_from_border=0, random_crop=False, p_rotation=1.0,
                   rotation=(-MAX_ANGLE, MAX_ANGLE), p_scaling=1.0, scaling=ZOOM, p_synchronize_scaling_across_axes=1,
                   mode_seg="nearest")
    return {
        "rotation + scaling (from the source region)": bg(SpatialTransform(patch, **spatial)),
        "elastic + rotation + scaling": bg(SpatialTransform(patch, p_elastic_deform=1.0, **spatial)),
        "mirror x": bg(MirrorTransform(allowed_axes=(2,))),
        "gamma": bg(GammaTransform(BGContrast((0.7, 1.5)), p_invert_image=0, synchronize_channels=False,
                                   p_per_channel=1, p_retain_stats=1)),
        "contrast": bg(ContrastTransform(BGContrast((0.75, 1.25)), preserve_range=True, synchronize_channels=False)),
        "brightness": bg(MultiplicativeBrightnessTransform(BGContrast((0.75, 1.25)), synchronize_channels=False)),
        "Gaussian noise": bg(GaussianNoiseTransform((0, 0.1), p_per_channel=1, synchronize_channels=True)),
        "Gaussian blur": bg(GaussianBlurTransform((0.5, 1.0), synchronize_channels=False, synchronize_axes=False,
                                                  p_per_channel=1, benchmark=True)),
        "low resolution": bg(SimulateLowResolutionTransform((0.5, 1.0), synchronize_channels=False,
                                                            synchronize_axes=True, ignore_axes=None,
                                                            allowed_channels=None, p_per_channel=1)),
    }


def bgv2_seed(transforms: dict, seed: int) -> None:
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------- TorchIO
def torchio_transforms(patch: tuple[int, ...]) -> dict[str, Callable[[dict], dict]]:
    import SimpleITK as sitk
    import torchio as tio

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    affine = np.diag([*SPACING_ZYX, 1.0])  # arrays kept in (z, y, x) order; the affine says 3 mm along axis 0
    crop = tio.CropOrPad(patch)

    def tio_run(t, crop_after=False):
        def run(d):
            subject = tio.Subject(image=tio.ScalarImage(tensor=d["image"], affine=affine),
                                  label=tio.LabelMap(tensor=d["label"], affine=affine))
            out = t(subject)
            if crop_after:
                out = crop(out)
            d["image"], d["label"] = out["image"].data, out["label"].data
            return d
        return run

    degrees = math.degrees(MAX_ANGLE)
    return {
        "rotation + scaling (from the source region)": tio_run(tio.RandomAffine(
            scales=ZOOM, degrees=degrees, isotropic=True, image_interpolation="linear",
            label_interpolation="nearest", default_pad_value="minimum", p=1.0), crop_after=True),
        "elastic + rotation + scaling": tio_run(tio.Compose([
            tio.RandomElasticDeformation(num_control_points=7, max_displacement=(6, 4, 4), p=1.0),
            tio.RandomAffine(scales=ZOOM, degrees=degrees, isotropic=True, p=1.0)]), crop_after=True),
        "mirror x": tio_run(tio.RandomFlip(axes=(2,), flip_probability=1.0)),
        "gamma": tio_run(tio.RandomGamma(log_gamma=(math.log(0.7), math.log(1.5)), p=1.0)),
        "Gaussian noise": tio_run(tio.RandomNoise(std=(0, 0.316), p=1.0)),
        "Gaussian blur": tio_run(tio.RandomBlur(std=(0.5, 1.0), p=1.0)),
        "low resolution": tio_run(tio.RandomAnisotropy(axes=(0, 1, 2), downsampling=(1, 2), p=1.0)),
    }


def torchio_seed(transforms: dict, seed: int) -> None:
    torch.manual_seed(seed)  # TorchIO draws from torch's global generator


BUILDERS = {"monai": (monai_transforms, monai_seed), "bgv2": (bgv2_transforms, bgv2_seed),
            "torchio": (torchio_transforms, torchio_seed)}
SPATIAL = ("rotation + scaling (from the source region)", "elastic + rotation + scaling")
ALL_ROW = "all, p = 1 (no elastic; project: with the PET rows)"
PROBABILITY_KEY = {"rotation + scaling (from the source region)": "spatial", "mirror x": "mirror",
                   "gamma": "gamma", "contrast": "contrast", "brightness": "brightness", "Gaussian noise": "noise",
                   "Gaussian blur": "blur", "low resolution": "lowres"}


def fresh(image: np.ndarray, label: np.ndarray) -> dict:
    return {"image": torch.from_numpy(image.copy()), "label": torch.from_numpy(label[None].copy())}


def time_one(run: Callable[[dict], dict], make: Callable[[], dict], repeats: int) -> float:
    """Median milliseconds of ``run`` over ``repeats`` calls (after one warm-up), inputs rebuilt untimed.

    Transforms slower than 0.2 s a call get fewer repeats (at least 3, about 3 s in all).
    """
    warm = _timed(run, make())
    if warm > 0.2:
        repeats = max(3, min(repeats, int(3.0 / warm)))
    times = []
    for _ in range(repeats):
        d = make()
        t0 = time.perf_counter()
        run(d)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def bench_library(name: str, patch: tuple[int, ...], repeats: int, draws: int) -> dict[str, float]:
    build, seed = BUILDERS[name]
    transforms = build(patch)
    src_img, src_lab = sample_inputs(source_shape(patch))
    img, lab = centre_crop(src_img, patch).copy(), centre_crop(src_lab, patch).copy()
    seed(transforms, 0)
    out: dict[str, float] = {}
    for key, t in transforms.items():
        make = (lambda: fresh(src_img, src_lab)) if key in SPATIAL else (lambda: fresh(img, lab))
        out[key] = time_one(t, make, repeats)
    chain = [k for k in transforms if k != "elastic + rotation + scaling"]

    def all_p1(d):
        for k in chain:
            d = transforms[k](d)
        return d
    out[ALL_ROW] = time_one(all_p1, lambda: fresh(src_img, src_lab), repeats)

    rng = np.random.default_rng(1)

    def nnunet(d):
        spatial = "rotation + scaling (from the source region)"
        if rng.random() < NNUNET_P["spatial"]:
            d = transforms[spatial](d)
        else:
            d["image"] = torch.from_numpy(centre_crop(d["image"].numpy(), patch).copy())
            d["label"] = torch.from_numpy(centre_crop(d["label"].numpy(), patch).copy())
        for k in chain[1:]:
            if rng.random() < NNUNET_P[PROBABILITY_KEY[k]]:
                d = transforms[k](d)
        return d
    out["nnU-Net probabilities (mean)"] = 1000 * np.mean([_timed(nnunet, fresh(src_img, src_lab))
                                                          for _ in range(draws)])
    return out


def _timed(run, d) -> float:
    t0 = time.perf_counter()
    run(d)
    return time.perf_counter() - t0


#: Rows of the project's own pipeline: parameters of NnUNetAugmentation set on top of "every probability 0".
PROJECT_ROWS = {
    "rotation + scaling (from the source region)": {"rotation_p": 1.0, "scaling_p": 1.0},
    "elastic + rotation + scaling": {"rotation_p": 1.0, "scaling_p": 1.0, "elastic_p": 1.0},
    "mirror x": {"mirror_p": 1.0},
    "gamma": {"gamma_p": 1.0},
    "contrast": {"contrast_p": 1.0},
    "brightness": {"brightness_p": 1.0},
    "Gaussian noise": {"noise_p": 1.0},
    "Gaussian blur": {"blur_p": 1.0, "blur_channel_p": 1.0},
    "low resolution": {"lowres_p": 1.0, "lowres_channel_p": 1.0},
    "PET SUV scale (project only)": {"pet_scale_p": 1.0},
    "PET resolution blur (project only)": {"pet_blur_p": 1.0},
    ALL_ROW: {"rotation_p": 1.0, "scaling_p": 1.0, "mirror_p": 1.0, "gamma_p": 1.0,
                                "contrast_p": 1.0, "brightness_p": 1.0, "noise_p": 1.0, "blur_p": 1.0,
                                "blur_channel_p": 1.0, "lowres_p": 1.0, "lowres_channel_p": 1.0,
                                "pet_scale_p": 1.0, "pet_blur_p": 1.0},
}


def bench_project(patch: tuple[int, ...], repeats: int, draws: int) -> dict[str, float] | None:
    """The project's own pipeline (HNTumorSegTraining.augment, MONAI underneath) per row, or None without it.

    The patch is read from a float16 volume, as from the cache; times include that read.
    """
    try:
        from HNTumorSegTraining.augment import NnUNetAugmentation, augmented_patch
    except Exception:  # noqa: BLE001 - the project is optional here (e.g. a throwaway venv)
        return None
    src_img, src_lab = sample_inputs(source_shape(patch))
    src_img = src_img.astype(np.float16)
    start = tuple((s - p) // 2 for s, p in zip(src_lab.shape, patch))
    none = NnUNetAugmentation.none().to_dict()
    out: dict[str, float] = {}
    counter = iter(range(10 ** 9))

    def runner(aug):
        def run(_):
            augmented_patch(src_img, src_lab, start, patch, np.random.default_rng([7, next(counter)]), aug, 0.5)
        return run
    for row, change in PROJECT_ROWS.items():
        out[row] = time_one(runner(NnUNetAugmentation(**{**none, **change})), lambda: None, repeats)
    default = runner(NnUNetAugmentation())
    default(None)
    out["nnU-Net probabilities (mean)"] = 1000 * np.mean([_timed(default, None) for _ in range(draws)])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 80, 80, 48, 96, 96],
                   help="patch sizes, Z Y X after Z Y X")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per transform (median)")
    p.add_argument("--draws", type=int, default=40, help="draws for the nnU-Net-probability mean")
    p.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=list(LIBRARIES))
    p.add_argument("--no-project", action="store_true", help="do not time HNTumorSegTraining's own pipeline")
    args = p.parse_args(argv)
    if len(args.sizes) % 3:
        p.error("--sizes takes Z Y X triples")
    patches = [tuple(args.sizes[i:i + 3]) for i in range(0, len(args.sizes), 3)]
    torch.set_num_threads(1)
    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
          f"python {platform.python_version()}")
    present, missing = [], []
    for name in args.libraries:
        module = LIBRARIES[name]
        if importlib.util.find_spec(module) is None:
            missing.append(name)
            continue
        version = getattr(__import__(module), "__version__", None)
        if version is None:
            from importlib.metadata import version as dist_version
            version = dist_version({"bgv2": "batchgeneratorsv2"}.get(name, module))
        present.append(name)
        print(f"{name}: {module} {version}")
    for name in missing:
        print(f"{name}: not installed ({LIBRARIES[name]}), not measured")
    results: dict[tuple[str, tuple[int, ...]], dict[str, float]] = {}
    for patch in patches:
        print(f"patch 2 x {' x '.join(map(str, patch))} (source region {' x '.join(map(str, source_shape(patch)))})",
              flush=True)
        for name in present:
            results[name, patch] = bench_library(name, patch, args.repeats, args.draws)
        if not args.no_project:
            project = bench_project(patch, args.repeats, args.draws)
            if project is not None:
                results["project", patch] = project
    names = present + (["project"] if any(k[0] == "project" for k in results) else [])
    if "project" not in names and not args.no_project:
        print("project: HNTumorSegTraining.augment does not import here, not measured")
    rows = list(dict.fromkeys(k for r in results.values() for k in r))
    cols = [(n, pt) for pt in patches for n in names]
    print("\nms per patch (median of repeats; the last row: mean over draws)")
    print("| transform | " + " | ".join(f"{n} {'x'.join(map(str, pt))}" for n, pt in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for row in rows:
        cells = [f"{results[c][row]:.1f}" if row in results[c] else "n/a" for c in cols]
        print(f"| {row} | " + " | ".join(cells) + " |")
    for name in present:
        print(f"{name} lacks: {LACKS[name]}")
    for patch in patches:
        for name in names:
            r = results[name, patch]
            print(f"{RESULT_PREFIX} {name} {'x'.join(map(str, patch))} all-p1 {r[ALL_ROW]:.1f} ms "
                  f"nnunet-p {r['nnU-Net probabilities (mean)']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
