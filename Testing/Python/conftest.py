"""Shared fixtures: small constructed CT/PET pairs written to disk, for fast I/O and CLI tests, a
small random-weight model file, and single-threaded torch for the training tests.

Realistic anatomy comes from :mod:`HNTumorSegLib.phantom`; these tiny volumes only need a
"brain" of high uptake so that the crop has something to find.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

#: In CI (CI=true) a skip is a failure (no_skips_in_ci.py).
pytest_plugins = ["no_skips_in_ci"]

#: A narrow PSAM U-Net: fast enough for end-to-end command tests on the CPU.
SMALL_NETWORK_CHANNELS = (4, 8, 16, 32, 64)


def tiny_ct_pet(pet_scale: float = 1.0) -> tuple[sitk.Image, sitk.Image]:
    """CT 100 x 100 x 40 at 2 x 2 x 3 mm, PET 50 x 50 x 30 at 4 mm with a hot 'brain' near the top."""
    ct = np.full((40, 100, 100), -1000, np.int16)
    ct[:, 20:80, 25:75] = 40
    ct_img = sitk.GetImageFromArray(ct)
    ct_img.SetSpacing((2.0, 2.0, 3.0))
    ct_img.SetOrigin((-100.0, -100.0, -60.0))
    pet = np.zeros((30, 50, 50), np.float32)
    pet[:, 10:40, 12:38] = 1.0
    pet[20:28, 18:32, 18:32] = 8.0
    pet_img = sitk.GetImageFromArray(pet * pet_scale)
    pet_img.SetSpacing((4.0, 4.0, 4.0))
    pet_img.SetOrigin((-102.0, -98.0, -62.0))
    return ct_img, pet_img


def tilted_case(case, degrees: float):
    """A phantom case turned about the patient's long axis (through the patient origin): CT, PET and label keep
    their voxels, their grids are rotated in space, so all three are oblique alike."""
    import dataclasses
    import math

    a = math.radians(degrees)
    turn = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])

    def rotated(image: sitk.Image) -> sitk.Image:
        out = sitk.Image(image)
        out.SetOrigin(tuple(float(v) for v in turn @ np.array(image.GetOrigin())))
        out.SetDirection(tuple(float(v) for v in (turn @ np.array(image.GetDirection()).reshape(3, 3)).ravel()))
        return out

    return dataclasses.replace(case, ct=rotated(case.ct), pet=rotated(case.pet), label=rotated(case.label))


@pytest.fixture
def tiny_files(tmp_path: Path) -> dict[str, Path]:
    ct, pet = tiny_ct_pet()
    paths = {"ct": tmp_path / "T-001__CT.nii.gz", "pet": tmp_path / "T-001__PT.nii.gz"}
    sitk.WriteImage(ct, str(paths["ct"]))
    sitk.WriteImage(pet, str(paths["pet"]))
    return paths


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    """JSON path of a model file with random weights (seed 0) of the small network."""
    import torch

    from HNTumorSegLib.pipeline.model_file import save_model
    from HNTumorSegLib.network import NetworkConfig, build_network

    config = NetworkConfig(channels=SMALL_NETWORK_CHANNELS, psam_channels=(2, 4, 8))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "small"
    save_model(build_network(config), config, path, metadata={"trained_on": "nothing (random weights, tests)"})
    return path.with_suffix(".json")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch single-threaded for a module: on a loaded 2-core machine two threads are slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_batches_independent_of_workers(dataset, seed: int, samples_per_epoch: int, epoch: int) -> int:
    """Load one epoch with 0 and with 2 DataLoader workers; the batches must be identical. Returns their count."""
    from torch.utils.data import DataLoader

    from HNTumorSegTraining.data import seed_worker
    from HNTumorSegTraining.sampler import EpochSampler

    batches = []
    for workers in (0, 2):
        sampler = EpochSampler(len(dataset), seed=seed, samples_per_epoch=samples_per_epoch)
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers, worker_init_fn=seed_worker)
        batches.append([(b["image"], b["label"], b["case_id"]) for b in loader])
    for (i0, l0, c0), (i1, l1, c1) in zip(*batches):
        assert torch.equal(i0, i1) and torch.equal(l0, l1) and c0 == c1
    return len(batches[0])


def full_disk_at(name: str, write):
    """``write(array, path)`` that fails with ENOSPC (as a full disk does) for files called ``name``: to put in
    place of a module's ``write_npy`` and fail a run between its writes."""
    import errno

    def writing(array, path):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write(array, path)

    return writing


def stopped_group(process, started, stop, timeout: float = 120.0) -> tuple[str, str]:
    """Wait until ``started()`` (a process group's job is under way), send ``stop`` to the group (``process`` was
    started with ``start_new_session``) and wait for it to end: its remaining stdout and its stderr. Whatever
    happens, nothing of the group outlives the test (SIGKILL)."""
    import os
    import signal

    try:
        started()
        os.killpg(process.pid, stop)
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
