"""Inference: CT + PET in, GTVp/GTVn label map on the CT grid out.

One code path for the CLI, the Slicer module and evaluation: :func:`preprocess.preprocess`,
the network, :func:`restore.restore`. CUDA when available (bf16 autocast there), otherwise the
CPU in fp32 with all cores; autocast on a CPU is far slower than fp32, so it is never used there.

A model file may hold several networks (an ensemble, see :mod:`.model_file`). :class:`Segmenter`
then runs them one after the other on the window (each with its own sliding window and the
test-time flips), adds their softmax probabilities into one float32 array of the window's size
per class and divides by their number: memory holds one member's activations at a time, and
time grows with the number of members. The connected-component clean-up applies once, to the
argmax of the average. A single network takes exactly the path it took before ensembles existed.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from HNTumorSegLib import LABELS
from HNTumorSegLib.errors import InputError, ModelFileError
from HNTumorSegLib.imaging.geometry import LATTICE_SPACING, Geometry
from HNTumorSegLib.pipeline.crop import WINDOW_ZYX
from HNTumorSegLib.pipeline.model_file import LoadedModel, load_model
from HNTumorSegLib.pipeline.model_info import describe_network
from HNTumorSegLib.pipeline.postprocess import ComponentFilter
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION, Preprocessed, preprocess
from HNTumorSegLib.pipeline.restore import restore
from HNTumorSegLib.pipeline.sliding_window import InferenceWindow, sliding_window_logits

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
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


def resolve_device(device: str = "auto", local_rank: int | None = None) -> torch.device:
    """"auto" picks CUDA when torch sees a GPU, else the CPU; "cuda" without a GPU is an error; "cuda" is
    ``cuda:local_rank`` where that is given (a torchrun process's own GPU, in training).

    Anything else is one line (an InputError, a ValueError): a name torch does not know, a GPU number past the
    machine's GPUs (a CUDA traceback at the first tensor before), a numbered CPU (torch takes "cpu:1" and runs
    on its one CPU device, all cores).
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r}: use auto, cpu, cuda or cuda:N")
    if chosen.type == "cpu":
        if chosen.index is not None:
            raise InputError(f"device {device!r}: the CPU takes no number; use cpu (all its cores are used)")
        return chosen
    if not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested, but this torch {torch.__version__} sees no CUDA GPU; "
                         "use --device cpu or auto")
    if chosen.index is None and local_rank is not None:
        chosen = torch.device("cuda", local_rank)
    if chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         "numbered from 0")
    return chosen


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_threads(spare: int = 0) -> int:
    """Threads for the network on the CPU: the user's ``OMP_NUM_THREADS`` when set (a shared server's
    admin sets it; torch reads it too, and it must not be overridden), else every CPU this process may
    use (its affinity, not torch's count of physical cores) less ``spare``, at least one."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, available_cpus() - spare)


MIB = 2 ** 20


def peak_rss_bytes() -> int | None:
    """The process's peak resident memory so far (bytes), or None where it cannot be read.

    ``resource.getrusage(...).ru_maxrss`` on Linux (KiB) and macOS (bytes); the peak working
    set on Windows (where Slicer's worker may run). It is the peak of the whole process up to
    now, so in a long-lived process (``batch``) it is the largest case so far.
    """
    try:
        import resource
    except ImportError:  # Windows
        return _windows_peak_working_set()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _windows_peak_working_set() -> int | None:
    try:
        import ctypes
        from ctypes import wintypes

        class Counters(ctypes.Structure):
            _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD),
                        ("PeakWorkingSetSize", ctypes.c_size_t), ("WorkingSetSize", ctypes.c_size_t),
                        ("QuotaPeakPagedPoolUsage", ctypes.c_size_t), ("QuotaPagedPoolUsage", ctypes.c_size_t),
                        ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t), ("QuotaNonPagedPoolUsage", ctypes.c_size_t),
                        ("PagefileUsage", ctypes.c_size_t), ("PeakPagefileUsage", ctypes.c_size_t)]

        counters = Counters()
        counters.cb = ctypes.sizeof(Counters)
        process = ctypes.windll.kernel32.GetCurrentProcess()
        if not ctypes.windll.psapi.GetProcessMemoryInfo(process, ctypes.byref(counters), counters.cb):
            return None
        return int(counters.PeakWorkingSetSize)
    except (AttributeError, OSError, ValueError):
        return None


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory for a report: the process's peak RSS, and on CUDA torch's allocator peaks since the reset."""
    rss = peak_rss_bytes()
    out: dict[str, Any] = {"peak_rss_mib": None if rss is None else round(rss / MIB, 1),
                           "peak_rss_source": "getrusage ru_maxrss: peak resident memory of the process so far"}
    if device.type == "cuda":
        out["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / MIB, 1)
        out["cuda_peak_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / MIB, 1)
        out["cuda_source"] = "torch.cuda.max_memory_allocated/reserved during the network stage"
    return out


@dataclass
class Network:
    """One network a :class:`Segmenter` runs: the module, its sliding window, and what identifies it."""

    name: str
    model: nn.Module
    window: InferenceWindow | None = None
    tensors_sha256: str | None = None
    description: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "network": self.description, "tensors_sha256": self.tensors_sha256,
                "inference": self.window.to_dict() if self.window else None}


@dataclass
class Segmentation:
    """The label map on the CT grid, the network-input provenance and stage timings (s).

    ``members``: per network of the model, its :meth:`Network.summary` and ``network_seconds``;
    ``memory``: :func:`peak_memory` after the network stage.
    """

    label: sitk.Image
    provenance: dict
    timings: dict = field(default_factory=dict)
    preprocessed: Preprocessed | None = None
    window_mask: np.ndarray | None = None
    members: list = field(default_factory=list)
    memory: dict = field(default_factory=dict)
    #: (3, 112, 256, 256) float32 class probabilities on the window (background, GTVp, GTVn); None
    #: where a caller built the result without the network.
    probabilities: np.ndarray | None = None
    #: (112, 256, 256) spread between the passes (see :meth:`Segmenter.probabilities`); None for one pass.
    disagreement: np.ndarray | None = None

    def uncertainty(self) -> tuple[np.ndarray, str] | None:
        """Per-voxel uncertainty on the window in [0, 1] and what it measures; None without probabilities.

        Several passes (ensemble members, TTA flips): their disagreement (the spread, doubled, as a
        standard deviation of probabilities is at most 0.5). One pass: the entropy of the class
        probabilities divided by its maximum, log 3.
        """
        if self.disagreement is not None:
            return np.clip(2.0 * self.disagreement, 0.0, 1.0).astype(np.float32), "disagreement of the passes"
        if self.probabilities is None:
            return None
        # torch's threads: five times numpy's time on a 2-core CPU (0.09 s against 0.46 s for a window)
        p = torch.from_numpy(np.ascontiguousarray(self.probabilities, dtype=np.float32)).clamp(1e-7, 1.0)
        entropy = torch.special.entr(p).sum(dim=0).div_(float(np.log(p.shape[0]))).clamp_(0.0, 1.0)
        return entropy.numpy(), "normalised entropy"

    def window_image(self, array: np.ndarray) -> sitk.Image:
        """A (112, 256, 256) array as an image on the analysis window's grid."""
        return Geometry.from_dict(self.provenance["window"]).apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))

    def probability_images(self) -> dict[str, sitk.Image]:
        """Each structure's probability as an image on the analysis window's grid (empty without probabilities).

        Resampled (linearly) onto any other grid, 0 outside the window: the network never saw there.
        """
        if self.probabilities is None or "window" not in self.provenance:
            return {}
        return {name: self.window_image(self.probabilities[value]) for value, name in LABELS.items()}


class Segmenter:
    """Runs a model (one network or an ensemble) on CT + PET images. Load once, call :meth:`segment` per case."""

    #: The model file's connected-component clean-up (see postprocess); None: the raw argmax.
    postprocess: ComponentFilter | None = None
    #: Seconds each network took in the last :meth:`probabilities` call (TTA passes included).
    member_seconds: list[float]

    def __init__(self, model: str | os.PathLike | LoadedModel | None = None, device: str = "auto",
                 tta: bool = False, postprocess: bool = True, threads: int | None = None):
        """``threads``: CPU threads for the network (None: :func:`cpu_threads`)."""
        self.device = resolve_device(device)
        self.loaded = model if isinstance(model, LoadedModel) else load_model(
            default_model_path() if model is None else model, device="cpu")
        version = str(self.loaded.meta.get("preprocessing_version", ""))
        if version != PREPROCESSING_VERSION:
            raise ModelFileError(f"{self.loaded.paths.json}: model was trained on preprocessing version "
                                 f"{version!r}, this software makes version {PREPROCESSING_VERSION!r}")
        source = self.loaded.paths.json.name
        try:
            #: The networks, run in turn and averaged. Each has its own window: patch-wise inference
            #: for networks trained on patches (see sliding_window); None: one pass over the window.
            self.networks = [
                Network(m.name, m.model.to(self.device).eval(),
                        InferenceWindow.from_entry(m.inference, source if not self.loaded.is_ensemble
                                                   else f"{source} member {i}"),
                        m.tensors_sha256, describe_network(m.config.to_dict()))
                for i, m in enumerate(self.loaded.members)]
            prescribed = ComponentFilter.from_meta(self.loaded.meta, source)  # checked even when not applied
            self.postprocess = prescribed if postprocess else None
        except ValueError as exc:
            raise ModelFileError(str(exc)) from None
        for i, (network, member) in enumerate(zip(self.networks, self.loaded.members)):
            multiple = member.config.size_multiple
            if network.window is None and any(n % multiple for n in WINDOW_ZYX):
                who = f"{source} member {i}" if self.loaded.is_ensemble else source
                raise ModelFileError(f"{who}: a {member.config.levels}-level network needs input sizes divisible by "
                                     f"{multiple}, and the {' x '.join(map(str, WINDOW_ZYX))} window is not; give "
                                     "it an inference patch_size that is")
        self.tta = tta
        self.member_seconds = []
        self.disagreement: np.ndarray | None = None
        if self.device.type == "cpu":
            torch.set_num_threads(threads or cpu_threads())

    # ---- one network: what code written before ensembles reads and sets
    def _only(self) -> Network:
        if len(self.networks) != 1:
            raise AttributeError(f"this model is an ensemble of {len(self.networks)} networks: use .networks")
        return self.networks[0]

    @property
    def model(self) -> nn.Module:
        """The network of a single-network model (AttributeError for an ensemble: see ``networks``)."""
        return self._only().model

    @property
    def window(self) -> InferenceWindow | None:
        """The sliding window of a single-network model (None: one pass, or an ensemble)."""
        networks = self.networks
        return networks[0].window if len(networks) == 1 else None

    @window.setter
    def window(self, value: InferenceWindow | None) -> None:
        self._only().window = value

    def logits(self, x: torch.Tensor, network: Network | None = None) -> torch.Tensor:
        """A network's logits for a (B, 2, Z, Y, X) input: one pass, or patch-wise (its ``window``)."""
        network = network or self._only()
        if network.window is None:
            return network.model(x)
        return sliding_window_logits(network.model, x, network.window)

    def _network_probabilities(self, network: Network, x: torch.Tensor,
                               squares: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax probabilities (B, 3, Z, Y, X) float32 of one network, averaged over the TTA flips.

        ``squares``: when given, each pass's squared probabilities are added to it (for the spread
        between passes: :attr:`Segmenter.disagreement`).
        """
        prob = torch.softmax(self.logits(x, network).float(), dim=1)
        if squares is not None:
            squares += prob * prob
        if self.tta:
            for dims in TTA_FLIP_DIMS:
                flipped = torch.softmax(self.logits(x.flip(dims), network).float(), dim=1).flip(dims)
                if squares is not None:
                    squares += flipped * flipped
                prob += flipped
                del flipped
            prob /= 1 + len(TTA_FLIP_DIMS)
        return prob

    @property
    def passes(self) -> int:
        """Network evaluations per case: members times (1 + TTA flips)."""
        return len(self.networks) * (1 + (len(TTA_FLIP_DIMS) if self.tta else 0))

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """(2, 112, 256, 256) normalised input to (3, 112, 256, 256) float32 class probabilities.

        An ensemble's members run one after the other; their probabilities are summed into one
        array and divided by their number (a single network's are returned as they are). With
        several passes (members, TTA flips), :attr:`disagreement` is set to their spread: per
        voxel, the mean over the classes of the standard deviation of the passes' probabilities.
        """
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(self.device)
        cuda = self.device.type == "cuda"
        self.member_seconds = []
        total: torch.Tensor | None = None
        squares = torch.zeros((1, 3, *x.shape[2:]), dtype=torch.float32, device=self.device) if self.passes > 1 else None
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            for network in self.networks:
                t0 = time.perf_counter()
                prob = self._network_probabilities(network, x, squares)
                if total is None:
                    total = prob
                else:
                    total += prob
                del prob  # this member's activations and probabilities go before the next member runs
                if cuda:
                    torch.cuda.synchronize(self.device)
                self.member_seconds.append(time.perf_counter() - t0)
            assert total is not None, "a Segmenter without networks"
            if len(self.networks) > 1:
                total /= len(self.networks)
            self.disagreement = None
            if squares is not None:  # mean over the classes of the standard deviation between the passes
                variance = (squares / self.passes - total * total).clamp_(min=0.0)
                self.disagreement = variance.sqrt_().mean(dim=1)[0].cpu().numpy()
                del squares, variance
            return total[0].cpu().numpy()

    def predict_window(self, image: np.ndarray) -> np.ndarray:
        """(2, 112, 256, 256) normalised input to the (112, 256, 256) uint8 label mask."""
        return self.label_from_probabilities(self.probabilities(image))

    def label_from_probabilities(self, prob: np.ndarray) -> np.ndarray:
        """The argmax of (3, Z, Y, X) probabilities, cleaned up by the model's component filter if it has one."""
        label = prob.argmax(axis=0).astype(np.uint8)
        if self.postprocess is not None:
            label = self.postprocess.apply(label, prob, LATTICE_SPACING)
        return label

    def member_summaries(self) -> list[dict[str, Any]]:
        """Each network's :meth:`Network.summary` with the seconds it took in the last prediction."""
        seconds = list(self.member_seconds) + [None] * (len(self.networks) - len(self.member_seconds))
        return [{**n.summary(), "network_seconds": None if t is None else round(t, 3)}
                for n, t in zip(self.networks, seconds)]

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
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        prob = self.probabilities(pre.image)
        mask = self.label_from_probabilities(prob)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        timings["network"] = time.perf_counter() - t0
        memory = peak_memory(self.device)
        report("restore")
        t0 = time.perf_counter()
        label = restore(mask, pre.provenance)
        timings["restore"] = time.perf_counter() - t0
        return Segmentation(label, pre.provenance, timings, pre, mask, self.member_summaries(), memory, prob,
                            self.disagreement)
