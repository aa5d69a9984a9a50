"""Validation: per-case Dice of GTVp and GTVn on the preprocessed window, averaged over cases.

This is the model-selection signal during training, measured where the network works (the
112 x 256 x 256 window, argmax of the logits), so it needs no resampling and costs one forward
pass per case. It is not the paper's final evaluation on the native CT grid (that restores the
prediction first); the two differ only by the resampling of the label. Dice follows
:func:`HNTumorSegLib.evaluation.metrics.dice`: a structure absent from both reference and prediction scores
1, absent from only one of them 0. Per case, then the mean over cases, as the paper reports.

Models are run the way inference runs them (:mod:`HNTumorSegLib.pipeline.sliding_window`): models
trained on whole windows in one pass; models trained on patches as a sliding window of their
patch size (their instance-normalisation statistics only fit such patches); UNETR, which accepts
only the size it was built for, as a sliding window of that size.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from HNTumorSegLib.evaluation.metrics import dice
from HNTumorSegLib.pipeline.sliding_window import RECORDED_BATCH, InferenceWindow, sliding_window_logits

from .data import ValDataset
from .models import fixed_input_size


def inference_window(spec: Mapping[str, Any], patch_size: Sequence[int] | None) -> InferenceWindow | None:
    """How a model trained with ``patch_size`` (None: whole windows) is run at inference: patches of
    that size, :data:`RECORDED_BATCH` per forward call."""
    size = fixed_input_size(spec) or (tuple(patch_size) if patch_size else None)
    return InferenceWindow(tuple(int(s) for s in size), batch=RECORDED_BATCH) if size else None


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    """bf16/fp16 autocast on CUDA; nothing on the CPU (CPU autocast is far slower than fp32 there)."""
    if amp_dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=amp_dtype)


def predict_logits(model: nn.Module, image: Tensor, window: InferenceWindow | None,
                   amp_dtype: torch.dtype | None = None) -> Tensor:
    """Logits (B, 3, Z, Y, X) in float32 for ``image`` (B, 2, Z, Y, X) on the model's device, without autograd."""
    with torch.no_grad(), autocast_context(image.device, amp_dtype):
        if window is None or tuple(image.shape[2:]) == tuple(window.patch_size):
            out = model(image)
        else:
            out = sliding_window_logits(model, image, window)
    return out.float()


def case_dice(prediction: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """GTVp and GTVn Dice of one case."""
    return {"GTVp": dice(prediction, reference, 1), "GTVn": dice(prediction, reference, 2)}


def validate(model: nn.Module, dataset: ValDataset, window: InferenceWindow | None, device: torch.device,
             amp_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """``{"per_case": {id: {GTVp, GTVn}}, "GTVp": mean, "GTVn": mean, "mean": (GTVp + GTVn) / 2}``.

    The model is put in eval mode and back into its previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    per_case: dict[str, dict[str, float]] = {}
    try:
        for i in range(len(dataset)):
            item = dataset[i]
            logits = predict_logits(model, item["image"][None].to(device), window, amp_dtype)
            prediction = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
            del logits
            per_case[item["case_id"]] = case_dice(prediction, item["label"].numpy())
    finally:
        model.train(was_training)
    gtvp = float(np.mean([c["GTVp"] for c in per_case.values()])) if per_case else float("nan")
    gtvn = float(np.mean([c["GTVn"] for c in per_case.values()])) if per_case else float("nan")
    return {"per_case": per_case, "GTVp": gtvp, "GTVn": gtvn, "mean": (gtvp + gtvn) / 2}
