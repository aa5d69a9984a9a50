"""``fit``: train one of the compared networks on the cache, resumably, on one device or with DDP.

One optimiser step = one batch (default 1 case or patch) through the network, soft Dice loss
(:mod:`.losses`, paper eq. 13), AdamW, and a per-step learning rate of linear warm-up then cosine
decay (:mod:`.schedule`). On CUDA the forward pass runs under bf16 autocast (fp16 with a
GradScaler where bf16 is unsupported or ``amp="fp16"``); on the CPU never (CPU autocast is ~100x
slower there). Every ``val_every`` epochs (and after the last) rank 0 computes per-case GTVp and
GTVn Dice on the validation windows (:mod:`.validate`) and keeps the best mean.

Files in ``out_dir`` (only rank 0 writes; each file is replaced atomically):

* ``checkpoint_last.pt`` after EVERY epoch: model, optimiser, scheduler and scaler state, epoch,
  global step, history, best metric, RNG states and the settings (:mod:`.checkpoint`);
* ``best`` / ``last`` weights: HNTumorSegLib model files for psam/unet, safetensors + JSON with
  the model spec for unetr/umamba (:mod:`.weights`);
* ``run.json`` (settings, model spec, cache, preprocessing version), ``history.csv``,
  ``curves.png`` and, when ``tensorboard`` is installed, ``tensorboard/`` (:mod:`.runlog`).

Resume (``resume=True``) restores everything from ``checkpoint_last.pt`` and continues with the
next epoch. A checkpoint is only written at the end of an epoch, so an epoch interrupted midway
is redone from its start; because the data order and every draw's patch and augmentations are
functions of (seed, epoch, draw) (:mod:`.sampler`, :mod:`.data`) and the global generators are
reseeded from (seed, epoch, rank) at each epoch start, the redone epoch sees exactly the data it
saw before. The settings that shape the optimisation (model, data, augmentation, folds,
optimiser, schedule, seed, world size) must match the checkpoint's; ``epochs`` may grow (the
cosine then stretches to the new end), and ``val_every``, ``workers`` and the device may change.

Augmentation (:mod:`.augment`): a preset, ``default`` (nnU-Net's transforms plus PET-specific
ones; needs MONAI), ``light`` (the flip and small intensity changes of earlier runs, drawn the same
way, so those runs can be reproduced) or ``off``, with every parameter recorded in ``run.json``,
the checkpoint and the weights. Runs recorded before presets existed resume as ``light``.

Cross-validation (``fold``, ``folds``, ``fold_seed``): the training cases of the cache's
``split.json`` are split into ``folds`` centre-stratified folds (:func:`.split.fold_cases`); the run
validates on fold ``fold`` (0-based) and trains on the others. The split's own validation cases
are neither trained nor validated on (kept for ``evaluate``). The fold, the seed and the case
lists are recorded (``settings["cv"]``, also in the weights).

DDP: under ``torchrun`` each process trains on its shard of every epoch's draws (the sampler is
rank-aware and padded, so all ranks take the same number of steps), gradients are averaged by
DistributedDataParallel, rank 0 validates while the others wait at a barrier, and the group is
left with a final barrier (:mod:`.distributed`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from HNTumorSegLib.cli.guard import raise_pending_stop
from HNTumorSegLib.imaging.image_io import read_json
from HNTumorSegLib.pipeline.model_file import model_paths
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION
from HNTumorSegLib.pipeline.sliding_window import InferenceWindow

from .cache import case_dir, read_provenance
from .checkpoint import atomic_write_bytes, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .augment import PRESETS, make_augmentation, normalise_record
from .data import PATCH_MULTIPLE, TrainDataset, ValDataset, seed_worker
from .distributed import DistContext, setup
from .losses import soft_dice_loss
from .models import MODEL_NAMES, build_from_spec, fixed_input_size, make_spec, size_multiple
from .runlog import TensorBoardLog, write_curves, write_history_csv
from .sampler import EpochSampler
from .schedule import warmup_cosine
from .split import fold_split
from .validate import autocast_context, inference_window, validate
from .weights import load_weights, save_weights

CHECKPOINT_NAME = "checkpoint_last.pt"
RUN_FORMAT = "hntumorseg-train-run"
AMP_CHOICES = ("auto", "bf16", "fp16", "none")
#: Settings that may differ between a checkpoint and the run resuming it.
RESUMABLE_CHANGES = ("epochs", "val_every")
#: The training settings recorded in every weights file (and in exported model files).
WEIGHTS_SETTINGS = ("model", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "patch_size",
                    "samples_per_epoch", "p_fg", "batch_dice", "init_weights", "seed", "world_size",
                    "augmentation", "cv")
#: Tag of the per-epoch reseeding of the global generators.
EPOCH_STREAM = 3


@dataclass
class FitState:
    """What hooks see: the (unwrapped) model and where training stands."""

    model: nn.Module
    epoch: int
    global_step: int
    step_in_epoch: int
    loss: float | None
    rank: int
    world_size: int
    out_dir: Path
    history: list[dict[str, Any]]


@dataclass
class FitHooks:
    """Optional callbacks (on every rank): progress reporting, tests, external schedulers."""

    on_start: Callable[[FitState], None] | None = None
    on_step_end: Callable[[FitState], None] | None = None
    on_epoch_end: Callable[[FitState], None] | None = None


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict[str, Any]]
    best_metric: float | None
    best_epoch: int | None
    global_step: int
    out_dir: Path
    run: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ helpers
def read_split(cache: Path) -> dict[str, Any]:
    path = cache / "split.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no split; run prepare first or pass train_ids / val_ids")
    return read_json(path)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: None on the CPU (always) and for "none"; "auto" is bf16 where supported, else fp16."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if device.type != "cuda" or amp == "none":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _json_text(data: Any) -> bytes:
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode("utf-8")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


#: Settings added after runs were made, with the value that older checkpoints implicitly used.
ADDED_SETTINGS = {"batch_dice": False, "init_weights": None, "cv": None}


def _settings_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    saved = {**ADDED_SETTINGS, **saved}
    if "augmentation" in saved:
        saved["augmentation"] = normalise_record(saved["augmentation"])
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
            for k in keys if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)]


# ------------------------------------------------------------------------------------ fit
def fit(cache: str | Path, model_name: str, out_dir: str | Path, *, epochs: int, batch_size: int = 1,
        lr: float = 3e-4, weight_decay: float = 1e-5, warmup_epochs: float = 0, min_lr_factor: float = 0.0,
        patch_size: Sequence[int] | None = None, samples_per_epoch: int | None = None, p_fg: float = 0.5,
        augmentation: Any = None, val_every: int = 1, seed: int = 0,
        workers: int = 0, device: str | torch.device = "auto", amp: str = "auto", grad_clip: float | None = None,
        batch_dice: bool = False, channels: Sequence[int] | None = None, model_options: Mapping[str, Any] | None = None,
        init_weights: str | Path | None = None, resume: bool = False, max_steps_per_epoch: int | None = None,
        train_ids: Sequence[str] | None = None, val_ids: Sequence[str] | None = None,
        fold: int | None = None, folds: int | None = None, fold_seed: int = 0,
        progress: bool = False, hooks: FitHooks | None = None,
        log: Callable[[str], None] | None = None) -> FitResult:
    """Train ``model_name`` (one of :data:`.models.MODEL_NAMES`) on ``cache``; see the module docstring.

    ``patch_size`` (Z, Y, X; multiples of 16 and of the model's down-sampling): random patches
    with foreground oversampling ``p_fg`` instead of whole windows; ``batch_dice`` pools the
    soft Dice over the batch (see :mod:`.losses`). ``samples_per_epoch``: draws
    per epoch (default: one per training case). ``max_steps_per_epoch`` caps the steps of an
    epoch (quick runs, tests). ``val_every=0`` never validates (then no ``best`` is written).
    ``train_ids`` / ``val_ids`` default to ``cache/split.json``; ``fold`` (0-based) of ``folds``
    instead validates on one centre-stratified fold of that split's training cases (seeded by
    ``fold_seed``) and trains on the rest. ``augmentation``: a preset name (``default``,
    ``light``, ``off``), a record or a parameter object of :mod:`.augment`; None is ``default``.
    ``channels`` and
    ``model_options`` go to :func:`.models.make_spec`. ``init_weights``: start from these
    weights (``best``/``last`` of another run, or a model file; the network must match) instead
    of a random initialisation: fine-tuning. Returns the trained model (last state),
    the history and the best validation mean Dice.
    """
    ctx = setup(device)
    ok = False
    try:
        result = _fit(ctx, Path(cache), model_name, Path(out_dir), epochs=epochs, batch_size=batch_size, lr=lr,
                    weight_decay=weight_decay, warmup_epochs=warmup_epochs, min_lr_factor=min_lr_factor,
                    patch_size=patch_size, samples_per_epoch=samples_per_epoch, p_fg=p_fg,
                    augmentation=augmentation, val_every=val_every, seed=seed, workers=workers, amp=amp,
                    grad_clip=grad_clip, batch_dice=batch_dice, channels=channels, model_options=model_options,
                    init_weights=init_weights, resume=resume, max_steps_per_epoch=max_steps_per_epoch,
                    train_ids=train_ids, val_ids=val_ids, fold=fold, folds=folds, fold_seed=fold_seed,
                    progress=progress, hooks=hooks or FitHooks(), log=log)
        ok = True
        return result
    finally:
        ctx.cleanup(barrier=ok)


def _fit(ctx: DistContext, cache: Path, model_name: str, out_dir: Path, *, epochs: int, batch_size: int, lr: float,
         weight_decay: float, warmup_epochs: float, min_lr_factor: float, patch_size: Sequence[int] | None,
         samples_per_epoch: int | None, p_fg: float, augmentation: Any,
         val_every: int, seed: int, workers: int, amp: str, grad_clip: float | None, batch_dice: bool,
         channels: Sequence[int] | None, model_options: Mapping[str, Any] | None,
         init_weights: str | Path | None, resume: bool, max_steps_per_epoch: int | None,
         train_ids: Sequence[str] | None, val_ids: Sequence[str] | None, fold: int | None, folds: int | None,
         fold_seed: int, progress: bool, hooks: FitHooks, log: Callable[[str], None] | None) -> FitResult:
    say = (log or (lambda m: print(m, flush=True))) if ctx.is_main else (lambda m: None)
    device = ctx.device
    if epochs < 1 or batch_size < 1 or val_every < 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, val_every >= 0; got {epochs}, {batch_size}, {val_every}")
    if max_steps_per_epoch is not None and max_steps_per_epoch < 1:
        raise ValueError(f"max_steps_per_epoch must be >= 1, got {max_steps_per_epoch}")
    if grad_clip is not None and not (grad_clip > 0 and math.isfinite(grad_clip)):  # a negative norm flips the step
        raise ValueError(f"grad_clip must be a positive number, got {grad_clip}")
    cv = None
    if fold is not None or folds is not None:
        if fold is None or folds is None:
            raise ValueError("give both fold and folds (--fold K --folds N), or neither")
        if train_ids is not None or val_ids is not None:
            raise ValueError("give fold/folds or train_ids/val_ids, not both")
        split = read_split(cache)
        train_ids, val_ids = fold_split(list(split["train"]), fold, folds, fold_seed)
        cv = {"fold": int(fold), "folds": int(folds), "seed": int(fold_seed), "train_ids": train_ids,
              "val_ids": val_ids, "held_out_val_ids": list(split.get("val", [])),
              "rule": "centre-stratified folds of the training cases of the cache's split.json "
                      "(HNTumorSegTraining.split.fold_cases); the split's val cases are held out"}
    elif train_ids is None or val_ids is None:
        split = read_split(cache)
        train_ids = list(split["train"]) if train_ids is None else list(train_ids)
        val_ids = list(split["val"]) if val_ids is None else list(val_ids)
    train_ids, val_ids = list(train_ids), list(val_ids)
    _check_cases(cache, train_ids, val_ids)
    aug = make_augmentation(augmentation)
    amp_dtype = resolve_amp(amp, device)
    if device.type != "cuda" and amp in ("bf16", "fp16"):
        say(f"amp={amp} ignored on {device}: autocast is only used on CUDA")

    # ---------------------------------------------------------------- model and data
    spec = make_spec(model_name, channels=channels, patch_size=patch_size, **dict(model_options or {}))
    train_set = TrainDataset(cache, train_ids, patch_size=patch_size, p_fg=p_fg, augmentation=aug, seed=seed,
                             patch_multiple=max(PATCH_MULTIPLE, size_multiple(spec)))
    fixed = fixed_input_size(spec)
    if fixed is not None and tuple(train_set.patch_size or train_set.volume) != fixed:
        raise ValueError(f"{model_name} is built for inputs {list(fixed)}, training would feed "
                         f"{list(train_set.patch_size or train_set.volume)}")
    window = inference_window(spec, train_set.patch_size)  # how validation and inference run the model
    sampler = EpochSampler(len(train_set), seed=seed, samples_per_epoch=samples_per_epoch, rank=ctx.rank,
                           world_size=ctx.world_size)
    steps_per_epoch = math.ceil(len(sampler) / batch_size)
    if max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total_steps)

    settings = {
        "model": model_name, "model_spec": spec, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "warmup_epochs": warmup_epochs, "min_lr_factor": min_lr_factor,
        "patch_size": list(train_set.patch_size) if train_set.patch_size else None,
        "samples_per_epoch": samples_per_epoch, "max_steps_per_epoch": max_steps_per_epoch, "p_fg": p_fg,
        "augmentation": aug.record(), "val_every": val_every, "seed": seed, "grad_clip": grad_clip,
        "batch_dice": bool(batch_dice), "init_weights": None, "cv": cv,
        "train_ids": train_ids, "val_ids": val_ids, "world_size": ctx.world_size,
    }
    _seed_everything(seed)  # the same initial weights on every rank and in every run with this seed
    model = build_from_spec(spec).to(device)
    model.model_spec = spec
    if init_weights is not None:
        settings["init_weights"] = _load_initial_weights(model, spec, init_weights)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    scheduler = warmup_cosine(optimizer, warmup_steps=warmup_steps, total_steps=total_steps,
                              min_factor=min_lr_factor)
    # Only fp16 needs loss scaling; the (disabled) scaler's empty state is checkpointed all the same.
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    # ---------------------------------------------------------------- resume
    ckpt_path = out_dir / CHECKPOINT_NAME
    start_epoch, global_step = 0, 0
    history: list[dict[str, Any]] = []
    best_metric: float | None = None
    best_epoch: int | None = None
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{ckpt_path} exists: pass resume=True (--resume) to continue that run, "
                              "or choose another output folder")
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        problems = _settings_mismatch(state["settings"], settings)
        if problems:
            raise ValueError(f"{ckpt_path}: cannot resume with different settings: " + "; ".join(problems))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        history = list(state["history"])
        best_metric, best_epoch = state["best"]["metric"], state["best"]["epoch"]
        if start_epoch * steps_per_epoch != global_step:
            raise ValueError(f"{ckpt_path}: global step {global_step} does not fit {start_epoch} epochs of "
                             f"{steps_per_epoch} steps")
        if start_epoch > epochs:
            raise ValueError(f"{ckpt_path}: the run already has {start_epoch} epochs, more than epochs={epochs}")
        # The learning rate of the next step under this run's schedule (differs from the stored one
        # only when ``epochs`` changed, which stretches the cosine).
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)
        say(f"resuming {out_dir} after epoch {start_epoch} (step {global_step})")
    elif resume:
        say(f"no {CHECKPOINT_NAME} in {out_dir}: starting a new run")
    resumed = start_epoch > 0

    net: nn.Module = model
    if ctx.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # ---------------------------------------------------------------- files of the run
    run_info = _run_info(out_dir, cache, settings, spec, ctx, device, amp_dtype, steps_per_epoch, total_steps,
                         resumed, fit_arguments={
                             "cache": str(cache.resolve()), "model_name": model_name, "epochs": epochs,
                             "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                             "warmup_epochs": warmup_epochs, "min_lr_factor": min_lr_factor,
                             "patch_size": settings["patch_size"], "samples_per_epoch": samples_per_epoch,
                             "p_fg": p_fg, "augmentation": aug.record(), "val_every": val_every, "seed": seed,
                             "amp": amp, "grad_clip": grad_clip, "batch_dice": bool(batch_dice),
                             "channels": list(channels) if channels is not None else None,
                             "model_options": dict(model_options or {}),
                             "init_weights": str(Path(init_weights).resolve()) if init_weights else None,
                             "max_steps_per_epoch": max_steps_per_epoch,
                             **({"fold": cv["fold"], "folds": cv["folds"], "fold_seed": cv["seed"]} if cv else {})})
    tb = None
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(out_dir)
        atomic_write_bytes(out_dir / "run.json", _json_text(run_info))
        write_history_csv(out_dir / "history.csv", history)  # after a resume: the checkpoint's rows only
        tb = TensorBoardLog(out_dir, purge_step=global_step + 1 if resumed else None, log=say)
        fold_text = f" (fold {cv['fold']} of {cv['folds']})" if cv else ""
        say(f"{model_name}: {sum(p.numel() for p in model.parameters()):,} parameters on {device} "
            f"(world size {ctx.world_size}, amp {amp_dtype or 'off'}); {len(train_ids)} training / "
            f"{len(val_ids)} validation cases{fold_text}; {steps_per_epoch} steps per epoch; "
            f"augmentation {aug.preset}")

    val_set = ValDataset(cache, val_ids) if (val_ids and val_every > 0 and ctx.is_main) else None
    loader_gen = torch.Generator()
    loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        worker_init_fn=seed_worker, generator=loader_gen, pin_memory=device.type == "cuda",
                        drop_last=False)
    fit_state = FitState(model, start_epoch, global_step, 0, None, ctx.rank, ctx.world_size, out_dir, history)
    if hooks.on_start:
        hooks.on_start(fit_state)

    # ---------------------------------------------------------------- epochs
    for epoch in range(start_epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        epoch_seed = _derived_seed(seed, epoch, ctx.rank, EPOCH_STREAM)
        _seed_everything(epoch_seed)
        loader_gen.manual_seed(_derived_seed(seed, epoch, EPOCH_STREAM))
        net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync per step
        steps, last_lr = 0, optimizer.param_groups[0]["lr"]
        batches = iter(loader)
        bar = None
        if progress and ctx.is_main:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", leave=False)
        for step_in_epoch in range(1, steps_per_epoch + 1):
            raise_pending_stop()  # a stop lost in the last epoch's loader clean-up (see guard)
            batch = next(batches)
            x = batch["image"].to(device, non_blocking=True)
            y = batch["label"].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(device, amp_dtype):
                logits = net(x)
            loss = soft_dice_loss(logits, y, batch=batch_dice)
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            last_lr = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            global_step += 1
            steps += 1
            loss_sum += loss.detach()
            value = float(loss.detach()) if (bar is not None or hooks.on_step_end) else None
            del logits, loss, x, y, batch
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            if hooks.on_step_end:
                fit_state.epoch, fit_state.global_step, fit_state.step_in_epoch = epoch, global_step, step_in_epoch
                fit_state.loss = value
                hooks.on_step_end(fit_state)
        del batches  # shuts down this epoch's workers
        if bar is not None:
            bar.close()
        train_loss = ctx.mean(float(loss_sum) / max(steps, 1))

        row: dict[str, Any] = {"epoch": epoch, "step": global_step, "train_loss": train_loss,
                               "val_dice_gtvp": None, "val_dice_gtvn": None, "val_dice_mean": None,
                               "lr": float(last_lr), "seconds": None}
        improved = False
        if val_set is not None and (epoch % val_every == 0 or epoch == epochs):
            scores = validate(model, val_set, window, device, amp_dtype)
            row.update(val_dice_gtvp=_finite_or_none(scores["GTVp"]), val_dice_gtvn=_finite_or_none(scores["GTVn"]),
                       val_dice_mean=_finite_or_none(scores["mean"]))
            if row["val_dice_mean"] is not None and (best_metric is None or row["val_dice_mean"] > best_metric):
                best_metric, best_epoch, improved = row["val_dice_mean"], epoch, True
        ctx.barrier()  # the other ranks wait here while rank 0 validates
        row["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(row)

        if ctx.is_main:
            meta = _weights_metadata(cache, settings, run_info, row, epoch, global_step, window)
            if improved:
                save_weights(model, spec, out_dir / "best", {**meta, "selected": "best validation mean Dice"})
            save_weights(model, spec, out_dir / "last", {**meta, "selected": "last epoch"})
            save_checkpoint(ckpt_path, {
                "settings": settings, "model_spec": spec, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch, "global_step": global_step,
                "steps_per_epoch": steps_per_epoch, "history": history,
                "best": {"metric": best_metric, "epoch": best_epoch}, "rng": capture_rng()})
            write_history_csv(out_dir / "history.csv", history)
            write_curves(out_dir / "curves.png", history)
            tb.epoch(row)
            val_text = (f"val GTVp {row['val_dice_gtvp']:.4f} GTVn {row['val_dice_gtvn']:.4f} "
                        f"mean {row['val_dice_mean']:.4f} (best {best_metric:.4f} @ {best_epoch}) "
                        if row["val_dice_mean"] is not None else "")
            say(f"epoch {epoch}/{epochs} step {global_step} loss {train_loss:.4f} {val_text}"
                f"lr {last_lr:.3g} {row['seconds']:.1f} s")
        if hooks.on_epoch_end:
            fit_state.epoch, fit_state.global_step, fit_state.step_in_epoch = epoch, global_step, steps
            fit_state.loss = train_loss
            hooks.on_epoch_end(fit_state)

    if tb is not None:
        tb.close()
    return FitResult(model, history, best_metric, best_epoch, global_step, out_dir, run_info)


def _load_initial_weights(model: nn.Module, spec: Mapping[str, Any], path: str | Path) -> dict[str, str]:
    """Copy the weights at ``path`` into ``model``; refuses a different network (one-line error).

    Returns where fine-tuning started: the weights' path and sha256 (verified on loading; a resume
    must start from the same weights).
    """
    paths = model_paths(path)
    if not paths.weights.is_file() or not paths.json.is_file():
        raise FileNotFoundError(f"{paths.weights}: initial weights not found (need NAME.safetensors and NAME.json)")
    source, meta = load_weights(path)
    theirs = meta.get("model_spec", getattr(source, "model_spec", None))
    if theirs is not None and dict(theirs).get("network") != dict(spec).get("network"):
        raise ValueError(f"{paths.json}: initial weights are a different network "
                         f"({dict(theirs).get('network')} vs {dict(spec).get('network')})")
    try:
        model.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"{paths.weights}: initial weights do not fit the network: {first}") from None
    return {"path": str(paths.weights.resolve()), "sha256": meta["weights_sha256"]}


def _check_cases(cache: Path, train_ids: list[str], val_ids: list[str]) -> None:
    """Fail early, naming the cases, when the ids overlap or a case is missing or from another preprocessing.

    A model file records the preprocessing version it expects; training it on cases made by
    another version would make that record false.
    """
    if not train_ids:
        raise ValueError("no training cases")
    both = sorted(set(train_ids) & set(val_ids))
    if both:
        raise ValueError(f"cases in both training and validation: {', '.join(both[:5])}")
    missing, stale = [], []
    for cid in [*train_ids, *val_ids]:
        folder = case_dir(cache, cid)
        prov = read_provenance(folder)
        if prov is None or not (folder / "image.npy").is_file() or not (folder / "label.npy").is_file():
            missing.append(cid)
        elif prov.get("version") != PREPROCESSING_VERSION:
            stale.append(f"{cid} (version {prov.get('version')!r})")
    if missing:
        raise FileNotFoundError(f"{cache}: {len(missing)} case(s) missing from the cache: {', '.join(missing[:5])}"
                                f"{' ...' if len(missing) > 5 else ''}; run prepare")
    if stale:
        raise ValueError(f"{cache}: {len(stale)} case(s) preprocessed by another version than "
                         f"{PREPROCESSING_VERSION!r}: {', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}; "
                         "rerun prepare")


def _remove_stale_temps(out_dir: Path) -> None:
    """Delete ``.NAME.*.tmp`` files that a killed run's atomic writers left behind."""
    for path in out_dir.glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)


def _run_info(out_dir: Path, cache: Path, settings: dict, spec: dict, ctx: DistContext, device: torch.device,
              amp_dtype: torch.dtype | None, steps_per_epoch: int, total_steps: int, resumed: bool,
              fit_arguments: dict) -> dict[str, Any]:
    """``run.json``: everything needed to understand, rebuild or resume the run; keeps earlier start times."""
    previous: dict[str, Any] = {}
    path = out_dir / "run.json"
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = {}
    now = _now()
    return {
        "format": RUN_FORMAT,
        "model_spec": spec,
        "cache": str(cache.resolve()),
        "preprocessing_version": PREPROCESSING_VERSION,
        "settings": settings,
        "fit_arguments": fit_arguments,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "world_size": ctx.world_size,
        "device": str(device),
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        "torch_version": torch.__version__,
        "started": previous.get("started", now) if resumed else now,
        "resumed": [*previous.get("resumed", []), now] if resumed else [],
    }


def _weights_metadata(cache: Path, settings: dict, run_info: dict, row: dict, epoch: int,
                      global_step: int, window: InferenceWindow | None) -> dict[str, Any]:
    metrics = {k: row[k] for k in ("val_dice_gtvp", "val_dice_gtvn", "val_dice_mean") if row[k] is not None}
    return {
        "preprocessing_version": PREPROCESSING_VERSION,
        "trained_on": {"cache": run_info["cache"], "train_cases": len(settings["train_ids"]),
                       "val_cases": len(settings["val_ids"])},
        "metrics": {**metrics, "epoch": epoch, "train_loss": row["train_loss"]},
        **({"inference": window.to_dict()} if window is not None else {}),
        "training": {"epoch": epoch, "global_step": global_step, "started": run_info["started"],
                     **{k: settings[k] for k in WEIGHTS_SETTINGS}},
    }


# ------------------------------------------------------------------------------------ command line
def _model_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


#: The ``light`` preset's parameters as command-line flags (flag name -> parameter).
_AUG_ARGS = {"flip_p": "flip_p", "intensity_p": "intensity_p", "intensity_scale": "scale",
             "intensity_shift": "shift", "noise_p": "noise_p", "noise_std": "noise_std"}


def add_fit_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of :func:`fit`. Unset options are None: fit's default, or with --resume the run's own value."""
    a = parser.add_argument
    a("--cache", help="cache folder made by prepare (cases/, split.json)")
    a("--model", choices=MODEL_NAMES, help="network to train")
    a("--out", required=True, help="run folder (checkpoint, weights, logs)")
    a("--epochs", type=int)
    a("--batch-size", type=int)
    a("--lr", type=float, help="peak learning rate (AdamW), default 3e-4")
    a("--weight-decay", type=float, help="AdamW weight decay, default 1e-5")
    a("--warmup-epochs", type=float, help="linear warm-up length in epochs, default 0")
    a("--min-lr-factor", type=float, help="cosine floor as a fraction of --lr, default 0")
    a("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"),
      help="train on random patches of this size (multiples of 16) instead of whole windows")
    a("--samples-per-epoch", type=int, help="draws per epoch (default: one per training case)")
    a("--max-steps-per-epoch", type=int)
    a("--p-fg", type=float, help="probability that a patch is centred on foreground, default 0.5")
    a("--augment", choices=PRESETS,
      help="augmentation preset: default (nnU-Net's transforms + PET-specific; needs MONAI), light (the flip "
           "and small intensity changes of earlier runs), off; default: default (with --resume: the run's own)")
    a("--aug-set", type=_model_option, action="append", metavar="KEY=VALUE",
      help="change one parameter of the preset, e.g. elastic_p=0.2 or mirror_axes='[\"x\",\"y\",\"z\"]' "
           "(names: HNTumorSegTraining.augment); repeatable")
    for name in _AUG_ARGS:
        a(f"--{name.replace('_', '-')}", type=float,
          help="light preset parameter (implies --augment light), see HNTumorSegTraining.augment")
    a("--val-every", type=int, help="validate every N epochs (0: never), default 1")
    a("--seed", type=int)
    a("--workers", type=int, help="DataLoader worker processes, default 0")
    a("--device", help="auto (default), cpu, cuda, cuda:N")
    a("--amp", choices=AMP_CHOICES, help="autocast on CUDA: auto (bf16 where supported), bf16, fp16, none")
    a("--grad-clip", type=float, help="clip the gradient norm to this value")
    a("--batch-dice", action=argparse.BooleanOptionalAction, default=None,
      help="one soft Dice ratio over the whole batch instead of one per sample (recommended with --patch-size)")
    a("--channels", type=int, nargs="+", help="per-level widths (psam, unet, umamba)")
    a("--model-option", type=_model_option, action="append", metavar="KEY=VALUE",
      help="model-specific option, e.g. feature_size=16 (unetr), d_state=16 (umamba); repeatable")
    a("--init-weights", metavar="WEIGHTS",
      help="fine-tune: start from these weights (RUN/last, RUN/best or a model file; same network)")
    a("--fold", type=int, help="cross-validation: validate on this fold (0-based) of the cache's training cases")
    a("--folds", type=int, help="cross-validation: number of centre-stratified folds (with --fold)")
    a("--fold-seed", type=int, help="seed of the fold assignment, default 0")
    a("--resume", action="store_true", help="continue the run in --out from checkpoint_last.pt")
    a("--progress", action=argparse.BooleanOptionalAction, default=None, help="per-step progress bar")
    return parser


def fit_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`fit` keyword arguments given on the command line; with --resume, the rest from run.json."""
    given: dict[str, Any] = {}
    direct = ("cache", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "min_lr_factor",
              "patch_size", "samples_per_epoch", "max_steps_per_epoch", "p_fg", "val_every", "seed",
              "amp", "grad_clip", "batch_dice", "channels", "init_weights", "fold", "folds", "fold_seed")
    for key in direct:
        if getattr(args, key) is not None:
            given[key] = getattr(args, key)
    if args.model is not None:
        given["model_name"] = args.model
    if args.model_option:
        given["model_options"] = dict(args.model_option)
    stored: dict[str, Any] = {}
    run_json = Path(args.out) / "run.json"
    if args.resume and run_json.is_file():
        stored = dict(read_json(run_json).get("fit_arguments", {}))
    kwargs = {**stored, **given}
    augmentation = _augmentation_from_args(args, stored.get("augmentation"))
    if augmentation is not None:
        kwargs["augmentation"] = augmentation
    missing = [k for k in ("cache", "model_name", "epochs") if kwargs.get(k) is None]
    if missing:
        flags = {"cache": "--cache", "model_name": "--model", "epochs": "--epochs"}
        raise SystemExit(f"error: {', '.join(flags[k] for k in missing)} required (or --resume a run that has them)")
    return kwargs


def _augmentation_from_args(args: argparse.Namespace, stored: Any) -> dict[str, Any] | None:
    """The augmentation record the options ask for: --augment (default: the resumed run's record, else
    fit's default), changed by --aug-set and the light preset's own flags; None when nothing says."""
    legacy = {field_: getattr(args, arg) for arg, field_ in _AUG_ARGS.items() if getattr(args, arg) is not None}
    changes = dict(getattr(args, "aug_set", None) or [])
    stored = normalise_record(stored) if isinstance(stored, Mapping) else None
    preset = args.augment
    if preset is None and legacy and not (stored and stored.get("preset") == "light"):
        preset = "light"  # the light preset's flags alone keep meaning what they meant before presets
    if preset is None:
        record = dict(stored) if stored else None
    elif stored and stored.get("preset") == preset:
        record = dict(stored)  # naming the run's own preset on --resume keeps its parameters
    else:
        record = {"preset": preset}
    if legacy:
        if (record or {}).get("preset", "default") != "light":
            flags = ", ".join(f"--{k.replace('_', '-')}" for k, f in _AUG_ARGS.items() if f in legacy)
            raise ValueError(f"{flags} set parameters of the light augmentation preset, not of "
                             f"{(record or {}).get('preset', 'default')!r}; use --aug-set KEY=VALUE for that preset")
        record = {**record, **legacy}
    if changes:
        record = {**(record or {"preset": "default"}), **changes}
    if record is not None:
        record = make_augmentation(record).record()  # checks names and values now, in one line
    return record


def run_fit(args: argparse.Namespace) -> FitResult:
    """Run :func:`fit` from parsed :func:`add_fit_arguments` options."""
    kwargs = fit_kwargs_from_args(args)
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    return fit(out_dir=args.out, resume=args.resume, workers=args.workers or 0, device=args.device or "auto",
               progress=progress, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m HNTumorSegTraining.fit`` (what torchrun starts): a user's mistake is one line, as for
    ``hntumorseg-train fit``."""
    from HNTumorSegLib.cli.guard import run_guarded
    from HNTumorSegLib.errors import InputError

    parser = add_fit_arguments(argparse.ArgumentParser(
        prog="python -m HNTumorSegTraining.fit", description="Train a network on a prepared cache."))
    args = parser.parse_args(argv)

    def run(args) -> int:
        result = run_fit(args)
        if result.best_metric is not None:
            print(f"best validation mean Dice {result.best_metric:.4f} at epoch {result.best_epoch}", flush=True)
        return 0

    return run_guarded("python -m HNTumorSegTraining.fit", run, args, user_errors=(InputError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())
