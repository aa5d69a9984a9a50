"""Inference: CT + PET in, GTVp/GTVn label map on the CT grid out.

One code path for the CLI, the Slicer module and evaluation: :func:`preprocess.preprocess`,
the network, :func:`restore.restore`. CUDA when available (bf16 autocast there), otherwise the
CPU in fp32 with all cores; autocast on a CPU is far slower than fp32, so it is never used there.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from .errors import InputError, ModelFileError
from .geometry import LATTICE_SPACING
from .model_file import LoadedModel, load_model
from .postprocess import ComponentFilter
from .preprocess import PREPROCESSING_VERSION, Preprocessed, preprocess
from .restore import restore
from .sliding_window import InferenceWindow, sliding_window_logits

MODELS_DIR = Path(__file__).resolve().parent / "models"
#: The bundled model; trained on synthetic phantoms (see its JSON), for trying the software.
DEFAULT_MODEL_NAME = "hntumorseg_phantom_psam"
#: Test-time augmentation: axes of the (B, C, Z, Y, X) input to mirror; x is left-right.
TTA_FLIP_DIMS = ((4,),)


def default_model_path() -> Path:
    """The bundled model's JSON; a clear error while none is bundled."""
    path = MODELS_DIR / f"{DEFAULT_MODEL_NAME}.json"
    if not path.exists():
        raise ModelFileError(f"{path}: no trained model is bundled with this version of HNTumorSeg yet; "
                             "pass --model NAME.safetensors (train one with hntumorseg-train)")
    return path


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" picks CUDA when torch sees a GPU, else the CPU; "cuda" without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested, but this torch {torch.__version__} sees no CUDA GPU; "
                         "use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"device {device!r} is not one of auto, cpu, cuda")
    return torch.device(device)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class Segmentation:
    """The label map on the CT grid, the network-input provenance and stage timings (s)."""

    label: sitk.Image
    provenance: dict
    timings: dict = field(default_factory=dict)
    preprocessed: Preprocessed | None = None
    window_mask: np.ndarray | None = None


class Segmenter:
    """Runs a model on CT + PET images. Load once, call :meth:`segment` per case."""

    #: The model file's connected-component clean-up (see postprocess); None: the raw argmax.
    postprocess: ComponentFilter | None = None

    def __init__(self, model: str | os.PathLike | LoadedModel | None = None, device: str = "auto",
                 tta: bool = False, postprocess: bool = True):
        self.device = resolve_device(device)
        self.loaded = model if isinstance(model, LoadedModel) else load_model(
            default_model_path() if model is None else model, device="cpu")
        version = str(self.loaded.meta.get("preprocessing_version", ""))
        if version != PREPROCESSING_VERSION:
            raise ModelFileError(f"{self.loaded.paths.json}: model was trained on preprocessing version "
                                 f"{version!r}, this software makes version {PREPROCESSING_VERSION!r}")
        self.model = self.loaded.model.to(self.device).eval()
        try:
            #: Patch-wise inference for models trained on patches (see sliding_window); None: one pass.
            self.window = InferenceWindow.from_meta(self.loaded.meta, self.loaded.paths.json.name)
            self.postprocess = ComponentFilter.from_meta(self.loaded.meta, self.loaded.paths.json.name) \
                if postprocess else None
        except ValueError as exc:
            raise ModelFileError(str(exc)) from None
        self.tta = tta
        if self.device.type == "cpu":
            torch.set_num_threads(available_cpus())

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits for a (B, 2, Z, Y, X) input: one pass, or patch-wise (``window``)."""
        if self.window is None:
            return self.model(x)
        return sliding_window_logits(self.model, x, self.window)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """(2, 112, 256, 256) normalised input to (3, 112, 256, 256) float32 class probabilities."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(self.device)
        cuda = self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            prob = torch.softmax(self.logits(x).float(), dim=1)
            if self.tta:
                for dims in TTA_FLIP_DIMS:
                    prob += torch.softmax(self.logits(x.flip(dims)).float(), dim=1).flip(dims)
                prob /= 1 + len(TTA_FLIP_DIMS)
            return prob[0].cpu().numpy()

    def predict_window(self, image: np.ndarray) -> np.ndarray:
        """(2, 112, 256, 256) normalised input to the (112, 256, 256) uint8 label mask."""
        prob = self.probabilities(image)
        label = prob.argmax(axis=0).astype(np.uint8)
        if self.postprocess is not None:
            label = self.postprocess.apply(label, prob, LATTICE_SPACING)
        return label

    def segment(self, ct: sitk.Image, pet: sitk.Image, *, reference: sitk.Image | None = None,
                ct_name: str = "CT", pet_name: str = "PET",
                progress: Callable[[str], None] | None = None) -> Segmentation:
        """Segment one case; a ``reference`` label (on the CT grid) is carried into the window too.

        ``progress`` is called with the name of each stage as it starts ("preprocess", "network",
        "restore"), for progress bars in front-ends.
        """
        report = progress or (lambda stage: None)
        report("preprocess")
        t0 = time.perf_counter()
        pre = preprocess(ct, pet, reference, ct_name=ct_name, pet_name=pet_name)
        timings = {"preprocess": time.perf_counter() - t0, **{f"preprocess.{k}": v for k, v in pre.timings.items()}}
        report("network")
        t0 = time.perf_counter()
        mask = self.predict_window(pre.image)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        timings["network"] = time.perf_counter() - t0
        report("restore")
        t0 = time.perf_counter()
        label = restore(mask, pre.provenance)
        timings["restore"] = time.perf_counter() - t0
        return Segmentation(label, pre.provenance, timings, pre, mask)
