"""What a run reports: test metrics (accuracy, per-class precision/recall, confusion matrix, ROC AUC, attribute
slices), the per-epoch history (history.csv, learning curves, TensorBoard) and the plots."""

from __future__ import annotations

import csv
import io
import logging
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from celeba_common import fileio
from dataset_format.schema import ATTRIBUTE_NAMES, CLASS_NAMES


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (the Mann-Whitney statistic, ties counted half); NaN when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, attributes: np.ndarray, slices: Sequence[str] = ATTRIBUTE_NAMES
) -> Dict:
    """Everything metrics.json reports about one split. probs: [N, 2]; labels: [N] 0/1; attributes: [N, 40] 0/1."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels).astype(int)
    predicted = probs.argmax(axis=1)
    correct = predicted == labels
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0)))) if len(labels) else 0.0
    confusion = np.zeros((2, 2), dtype=int)  # rows: true class, columns: predicted class
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for c, name in enumerate(CLASS_NAMES):
        tp = confusion[c, c]
        precision = tp / confusion[:, c].sum() if confusion[:, c].sum() else 0.0
        recall = tp / confusion[c, :].sum() if confusion[c, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": round(float(precision), 5),
            "recall": round(float(recall), 5),
            "f1": round(float(f1), 5),
            "support": int(confusion[c, :].sum()),
        }
    attribute_slices = {}
    for name in slices:
        column = np.asarray(attributes)[:, ATTRIBUTE_NAMES.index(name)].astype(bool)
        attribute_slices[name] = {
            key: {"count": int(mask.sum()), "accuracy": round(float(correct[mask].mean()), 5) if mask.any() else None}
            for key, mask in (("with", column), ("without", ~column))
        }
    return {
        "accuracy": round(float(correct.mean()), 5) if len(labels) else 0.0,
        "loss": round(loss, 5),
        "num_examples": int(len(labels)),
        "per_class": per_class,
        "confusion_matrix": {
            "labels": list(CLASS_NAMES),
            "rows": "true",
            "columns": "predicted",
            "matrix": confusion.tolist(),
        },
        "roc_auc": round(roc_auc(labels, probs[:, 1]), 5),
        "attribute_slices": attribute_slices,
    }


def _save_figure(fig, path: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    fileio.write_bytes(path, buffer.getvalue())


def plot_confusion_matrix(matrix: List[List[int]], path: str, title: str = "Test confusion matrix") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(matrix, cmap="Blues")
    threshold = max(max(row) for row in matrix) / 2
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                str(matrix[i][j]),
                ha="center",
                va="center",
                fontsize=12,
                color="white" if matrix[i][j] > threshold else "black",
            )
    ax.set_xticks([0, 1], CLASS_NAMES)
    ax.set_yticks([0, 1], CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


# epoch_seconds: the whole epoch (feature extraction and validation included); train_seconds and
# images_per_sec: its training steps only
HISTORY_FIELDS = (
    "epoch",
    "phase",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "epoch_seconds",
    "train_seconds",
    "images_per_sec",
    "feature_cache",
)
SCALARS = ("loss", "accuracy", "val_loss", "val_accuracy", "images_per_sec", "epoch_seconds")


def read_history(path: str) -> List[dict]:
    """The rows of history.csv. A row cut short (a file from before atomic writes) or holding a value that is not a
    number is dropped; a file that is not text at all is set aside, with a warning: the resume goes on, and the
    file is written anew from the epochs after it."""
    if not fileio.exists(path):
        return []
    try:
        rows = list(csv.DictReader(io.StringIO(fileio.read_bytes(path).decode())))
    except (UnicodeDecodeError, csv.Error) as e:
        logging.getLogger("trainer").warning(
            "%s is damaged (%s); its rows are dropped and it is written anew", path, type(e).__name__
        )
        return []
    return [
        row
        for row in rows
        if None not in row.values()
        and row.get("epoch", "").isascii()
        and row["epoch"].isdigit()
        and all(_number(row.get(key, "")) for key in SCALARS)
    ]


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def write_history(path: str, rows: List[dict]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_bytes(path, out.getvalue().encode())


def running_figures(loss_sum: float, correct_sum: float, steps: int, batch_size: int, start: float) -> list:
    """The progress bar's figures of an epoch so far: mean loss, accuracy, images per second since `start`."""
    images = steps * batch_size
    return [
        ("loss", loss_sum / steps),
        ("accuracy", correct_sum / images),
        ("images/s", images / max(time.time() - start, 1e-9)),
    ]


def progress_bar(steps: int, is_chief: bool):
    """Keras' Progbar, live on the chief's terminal; silent in a log (the epoch's summary line is enough there) and
    on the other workers."""
    import keras

    return keras.utils.Progbar(
        steps, stateful_metrics=["loss", "accuracy", "images/s"], verbose=1 if is_chief and sys.stdout.isatty() else 0
    )


class Progress:
    """The progress of a long loop that has no epoch line of its own (feature extraction): Keras' Progbar on a
    terminal; in a log, a line every LOG_SECONDS and one at the end. Silent unless `shown` (the chief)."""

    LOG_SECONDS = 30.0

    def __init__(self, what: str, target: int, unit: str, shown: bool):
        import keras

        self.what, self.target, self.unit, self.start = what, target, unit, time.monotonic()
        self._log, self._logged = logging.getLogger("trainer") if shown else None, self.start
        self._first: Optional[tuple] = None  # (time, count) after the first batch, whose call also traces
        self._bar = None
        if shown and sys.stdout.isatty():
            self._bar, self._log = keras.utils.Progbar(target, unit_name=unit), None

    def update(self, done: int) -> None:
        if self._first is None:
            self._first = (time.monotonic(), done)
        if self._bar is not None:
            self._bar.update(min(done, self.target))
        elif self._log is not None and time.monotonic() - self._logged >= self.LOG_SECONDS:
            self._logged = time.monotonic()
            rate = done / max(self._logged - self.start, 1e-9)
            left = max(self.target - done, 0) / max(rate, 1e-9)
            self._log.info(
                "%s: %d/%d %s (%.0f %s/s, about %s left)",
                self.what,
                done,
                self.target,
                self.unit,
                rate,
                self.unit,
                _duration(left),
            )

    def done(self, done: int) -> None:
        """The closing line: the count, the whole time, and the rate after the first batch (the steady rate)."""
        now = time.monotonic()
        first_time, first_done = self._first or (self.start, 0)
        steady = (
            (done - first_done) / max(now - first_time, 1e-9)
            if done > first_done
            else done / max(now - self.start, 1e-9)
        )
        if self._bar is not None:
            self._bar.update(self.target, finalize=True)
        if self._log is not None or self._bar is not None:
            logging.getLogger("trainer").info(
                "%s: %d %s in %s (%.0f %s/s after the first batch, which traces)",
                self.what,
                done,
                self.unit,
                _duration(now - self.start),
                steady,
                self.unit,
            )


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class EpochReport:
    """The chief's per-epoch outputs: the console line, history.csv, learning_curves.png and TensorBoard scalars.

    The curves are redrawn after the first and the last epoch and otherwise at most every PLOT_SECONDS: drawing
    takes about 0.6 s, more than a whole epoch of head training on cached features; TensorBoard has them live.
    """

    PLOT_SECONDS = 30.0

    def __init__(self, model_dir: str, tensorboard_dir: str):
        self.model_dir, self.tensorboard_dir = model_dir, tensorboard_dir
        self.history_path = fileio.join(model_dir, "history.csv")
        self._writer: Optional[object] = None
        self._plotted = float("-inf")

    def write(self, history: List[dict], total_epochs: int) -> None:
        import tensorflow as tf

        row = history[-1]
        print(
            f"epoch {row['epoch']}/{total_epochs}  loss {row['loss']:.4f}  accuracy {row['accuracy']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}  "
            f"(epoch {row['epoch_seconds']:.1f} s; training steps {row['train_seconds']:.1f} s, "
            f"{row['images_per_sec']:.0f} images/s)",
            flush=True,
        )
        write_history(self.history_path, history)
        if int(row["epoch"]) == total_epochs or time.monotonic() - self._plotted >= self.PLOT_SECONDS:
            plot_learning_curves(history, fileio.join(self.model_dir, "learning_curves.png"))
            self._plotted = time.monotonic()
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.tensorboard_dir)
        with self._writer.as_default(step=int(row["epoch"])):
            for key in SCALARS:
                tf.summary.scalar(key, row[key])
        self._writer.flush()


def plot_learning_curves(history: List[dict], path: str) -> None:
    """Train/val loss and accuracy per epoch, like the seed notebook's loss graph."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.plot(epochs, [float(r[key]) for r in history], "o-", label=f"train {key}")
        val = [(e, float(r[f"val_{key}"])) for e, r in zip(epochs, history) if r.get(f"val_{key}") not in ("", None)]
        if val:
            ax.plot(*zip(*val), "o-", label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    best = min(
        (r for r in history if r.get("val_loss") not in ("", None)), key=lambda r: float(r["val_loss"]), default=None
    )
    if best is not None:  # the epoch whose weights --restore_best keeps
        for ax, key in ((ax_loss, "val_loss"), (ax_acc, "val_accuracy")):
            ax.plot(
                [int(best["epoch"])], [float(best[key])], "r*", markersize=14, label=f"best (epoch {best['epoch']})"
            )
            ax.legend()
    fine_tune = [int(r["epoch"]) for r in history if r.get("phase") == "fine_tune"]
    if fine_tune:
        for ax in (ax_loss, ax_acc):
            ax.axvline(min(fine_tune) - 0.5, color="grey", linestyle="--", linewidth=1)
    fig.suptitle("Learning curves")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
