"""What a run leaves for people to read: ``history.csv``, ``curves.png`` and TensorBoard events.

The history (one dict per finished epoch) lives in the checkpoint; the files here are views of
it, rewritten whole and atomically after every epoch. So after a kill they never hold half a
row, and after ``--resume`` they are rewritten from the checkpoint's history: an epoch that was
logged but not checkpointed disappears and is logged again when redone.

TensorBoard is optional: used when the ``tensorboard`` package imports, otherwise one log line
says it is off.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from .checkpoint import atomic_write_bytes

HISTORY_COLUMNS = ("epoch", "step", "train_loss", "val_dice_gtvp", "val_dice_gtvn", "val_dice_mean", "lr",
                   "seconds")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest string that reads back as the same float
    return str(value)


def write_history_csv(path: str | Path, history: Sequence[dict[str, Any]]) -> Path:
    """All rows, atomically; empty cells for epochs without validation."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for row in history:
        writer.writerow([_cell(row.get(k)) for k in HISTORY_COLUMNS])
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def read_history_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_curves(path: str | Path, history: Sequence[dict[str, Any]]) -> Path:
    """Training loss and validation Dice per epoch as a PNG (matplotlib's Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_dice = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker=".", label="train soft Dice loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3)
    val = [r for r in history if r.get("val_dice_mean") is not None]
    for key, label in (("val_dice_gtvp", "GTVp"), ("val_dice_gtvn", "GTVn"), ("val_dice_mean", "mean")):
        ax_dice.plot([r["epoch"] for r in val], [r[key] for r in val], marker=".", label=label)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("Dice")
    ax_dice.set_ylim(0, 1)
    ax_dice.set_title("validation Dice (per case, mean)")
    ax_dice.grid(alpha=0.3)
    if val:
        ax_dice.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


class TensorBoardLog:
    """Scalars to ``out_dir/tensorboard`` when ``tensorboard`` is installed; a no-op otherwise."""

    def __init__(self, out_dir: str | Path, purge_step: int | None, log: Callable[[str], None]) -> None:
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log("TensorBoard logging is off (the tensorboard package is not installed); "
                "history.csv and curves.png are written as usual")
            return
        # purge_step drops events a killed run logged after its last checkpoint.
        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=purge_step)

    def epoch(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = row["step"]
        self.writer.add_scalar("train/loss", row["train_loss"], step)
        self.writer.add_scalar("train/lr", row["lr"], step)
        for key in ("val_dice_gtvp", "val_dice_gtvn", "val_dice_mean"):
            if row.get(key) is not None:
                self.writer.add_scalar(f"val/{key[4:]}", row[key], step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
