"""A learning-rate x batch-size grid of trainer runs, and the seed notebook's two tables, in one command.

Usage:
  python -m launch.sweep --batch_sizes=8,16,32,64 --lrs=1e-2,1e-3,1e-4 --epochs=10 --output_dir=runs/sweep \
      -- --data_dir=tfrecords/celeba
  python -m launch.sweep ... --vertex --project=P --image_uri=IMG --accelerator_type=NVIDIA_L4 \
      --accelerator_count=1 --output_dir=gs://B/sweep -- --data_dir=gs://B/tfrecords/celeba

Each cell trains in its own model_dir under output_dir (lr<LR>_bs<BS>); finished cells (metrics.json present) are
not rerun, and an interrupted cell resumes from its checkpoints. Locally the cells run one after another; with
--vertex each cell is a Vertex AI job and rerunning the command later collects the finished ones. Writes
summary.md, summary.csv and val_accuracy_heatmap.png, and names the best cell with the command reproducing it.

The backbone runs once for the whole grid: locally, trainer.extract_features fills the shared feature cache before
the first cell, and every cell trains its head on those features from epoch 1. With --vertex and
--feature_cache_dir=gs://..., the first invocation submits one GPU job that extracts the features; rerun the
command once it has finished, and the cells go out on --cell_machine_type without a GPU.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import io
import json
import math
import shlex
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from celeba_common import fileio
from celeba_common.cli import passthrough_args, run_main
from celeba_common.errors import UserError
from celeba_common.flagdefs import define_flags, from_flags, option
from launch import vertex as vertex_lib
from trainer.metrics import read_history


@dataclasses.dataclass
class SweepConfig:
    batch_sizes: Tuple[str, ...] = option(("8", "16", "32", "64"), "Global batch sizes of the grid.")
    lrs: Tuple[str, ...] = option(("1e-2", "1e-3", "1e-4"), "Learning rates of the grid.")
    epochs: int = option(10, "Epochs per cell.", lower_bound=1)
    output_dir: str = option("runs/sweep", "One model_dir per cell under it, and the summary.")
    converged_epochs: int = option(3, "'Converged' = mean over this many last epochs.", lower_bound=1)
    vertex: bool = option(False, "Run each cell as a Vertex AI job (uses launch.vertex's flags).")
    cell_machine_type: str = option(
        "n1-standard-8",
        "With --vertex and shared features (--feature_cache_dir=gs://"
        "...): the machine of each cell, which trains only the head on the cached "
        "features, without GPU; the extraction job gets launch.vertex's machine.",
    )


COLUMNS = (
    "lr",
    "batch_size",
    "status",
    "epochs",
    "val_accuracy_lowest",
    "val_accuracy_highest",
    "val_accuracy_converged",
    "val_loss_at_lowest",
    "val_loss_at_highest",
    "val_loss_converged",
    "model_dir",
)


def parse_grid(lrs: Sequence[str], batch_sizes: Sequence[str]):
    try:
        lr_values = [float(x) for x in lrs if x.strip()]
        bs_values = [int(x) for x in batch_sizes if x.strip()]
    except ValueError:
        raise UserError(f"--lrs={','.join(lrs)} --batch_sizes={','.join(batch_sizes)}: expected numbers") from None
    if not lr_values or not bs_values:
        raise UserError("the grid is empty: give at least one --lrs value and one --batch_sizes value")
    if any(v <= 0 or not math.isfinite(v) for v in lr_values):
        raise UserError(f"--lrs={','.join(lrs)}: learning rates must be > 0")
    if any(v <= 0 for v in bs_values):
        raise UserError(f"--batch_sizes={','.join(batch_sizes)}: batch sizes must be > 0")
    for flag, given, values in (("--lrs", lrs, lr_values), ("--batch_sizes", batch_sizes, bs_values)):
        twice = [v for i, v in enumerate(values) if v in values[:i]]
        if twice:  # one run, not several cells
            raise UserError(f"{flag}={','.join(given)}: {twice[0]:g} is listed twice")
    return lr_values, bs_values


def cell_name(lr: float, batch_size: int) -> str:
    """The cell's folder name: the learning rate as Python writes it back exactly (repr), so two rates never share a
    folder (`{lr:g}` would: 1e-4 and 1.000001e-4 both print 0.0001)."""
    return f"lr{lr!r}_bs{batch_size}"


def cell_args(lr: float, batch_size: int, epochs: int, model_dir: str, trainer_args: Sequence[str]) -> List[str]:
    return [
        *trainer_args,
        f"--model_dir={model_dir}",
        f"--batch_size={batch_size}",
        f"--lr={lr!r}",
        f"--epochs={epochs}",
    ]


class Status(enum.Enum):
    FINISHED = "finished"
    FAILED = "failed"
    SUBMITTED = "submitted"
    DRY_RUN = "dry run"


@dataclasses.dataclass
class Cell:
    """One cell of the grid and where it stands; `row()` is its line in summary.csv."""

    lr: float
    batch_size: int
    model_dir: str
    status: Status = Status.FINISHED
    detail: str = ""  # why it failed, or the Vertex AI job it was submitted as
    metrics: Dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return cell_name(self.lr, self.batch_size)

    def row(self) -> dict:
        status = {Status.FAILED: f"failed ({self.detail})", Status.SUBMITTED: f"submitted {self.detail}"}.get(
            self.status, self.status.value
        )
        return {
            "lr": self.lr,
            "batch_size": self.batch_size,
            "model_dir": self.model_dir,
            "status": status,
            **self.metrics,
        }


def summarize_history(history: List[dict], converged_epochs: int) -> Dict[str, float]:
    """Lowest / highest / converged val accuracy and the val loss at those points."""
    acc = [float(r["val_accuracy"]) for r in history]
    loss = [float(r["val_loss"]) for r in history]
    low, high = acc.index(min(acc)), acc.index(max(acc))
    tail = slice(-min(converged_epochs, len(acc)), None)
    return {
        "val_accuracy_lowest": acc[low],
        "val_accuracy_highest": acc[high],
        "val_accuracy_converged": sum(acc[tail]) / len(acc[tail]),
        "val_loss_at_lowest": loss[low],
        "val_loss_at_highest": loss[high],
        "val_loss_converged": sum(loss[tail]) / len(loss[tail]),
        "epochs": len(acc),
    }


def _run_local(args: Sequence[str], log_path: str) -> tuple:
    proc = subprocess.run([sys.executable, "-m", "trainer.main", *args], capture_output=True, text=True)
    fileio.write_bytes(log_path, (proc.stdout + proc.stderr).encode())
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    reason = errors[-1] if errors else (proc.stderr.strip().splitlines() or [""])[-1]
    return proc.returncode, reason


def shares_features(trainer) -> bool:
    """Whether the cells' head phase trains on cached features (so one extraction serves the whole grid); `trainer`
    is the cells' parsed TrainConfig (vertex.parse_trainer_flags)."""
    return trainer.feature_cache != "off" and not trainer.augment


def _extract_once(lrs, batch_sizes, output_dir: str, trainer_args: Sequence[str]) -> None:
    """Runs the frozen backbone once for the grid (trainer.extract_features); every cell then reuses the features."""
    print(
        f"[sweep] the backbone runs once for all {len(lrs) * len(batch_sizes)} cells: extracting the features",
        flush=True,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.extract_features", *trainer_args, f"--batch_size={min(batch_sizes)}"],
        capture_output=True,
        text=True,
    )
    fileio.write_bytes(fileio.join(output_dir, "extract_features.log"), (proc.stdout + proc.stderr).encode())
    if proc.returncode:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        print(
            f"[sweep] extracting the features failed ({(errors or ['see extract_features.log'])[-1]}); each cell "
            f"extracts its own",
            flush=True,
        )


def _extracted(trainer) -> bool:
    """Whether the shared cache holds finished features of the grid's records, weights, pooling and seed (and
    precision, unless `auto`, which the GPU machine resolved: an entry of any precision then serves)."""
    from dataset_format.manifest import read_manifest
    from trainer import cache_layout

    facts = cache_layout.key_facts(
        read_manifest(trainer.data_dir), trainer.weights, trainer.pooling, trainer.precision, trainer.seed
    )
    unknown = ("precision",) if trainer.precision == "auto" else ()
    return any(
        cache_layout.serves(entry, facts, unknown) for entry in fileio.glob(fileio.join(trainer.feature_cache_dir, "*"))
    )


def _submit_extraction(vertex: vertex_lib.VertexJob, trainer_args: Sequence[str], trainer, jobs: dict) -> Optional[str]:
    """With --vertex: the one GPU job that fills the shared gs:// cache; None once it is known to have finished."""
    if not trainer.feature_cache_dir.startswith("gs://"):
        return None  # each cell extracts its own features, as a single run does
    if "extract" in jobs and _extracted(trainer):
        return None
    if "extract" not in jobs:
        jobs["extract"] = vertex_lib.launch(
            vertex, trainer_args, display_name="sweep-extract-features", module="trainer.extract_features"
        )
    return jobs["extract"] or "dry run"


class LocalCells:
    """Cells trained here, one after another (trainer.main processes); a failed cell is recorded and the grid goes
    on."""

    def __init__(self, epochs: int, output_dir: str, trainer_args: Sequence[str]):
        self.epochs, self.output_dir, self.trainer_args = epochs, output_dir, trainer_args

    def start(self, cell: Cell) -> None:
        print(f"[sweep] {cell.name}: training ({self.epochs} epochs)", flush=True)
        code, reason = _run_local(
            cell_args(cell.lr, cell.batch_size, self.epochs, cell.model_dir, self.trainer_args),
            fileio.join(self.output_dir, f"{cell.name}.log"),
        )
        if code != 0:
            cell.status, cell.detail = Status.FAILED, reason or f"exit {code}"
            print(f"[sweep] {cell.name}: FAILED: {reason}", flush=True)


class VertexCells:
    """Cells submitted as Vertex AI jobs, each with its own base_output_dir (its AIP_CHECKPOINT_DIR and logs); the
    jobs are remembered in vertex_jobs.json, so a rerun submits nothing twice and collects what finished."""

    def __init__(
        self, vertex: vertex_lib.VertexJob, epochs: int, trainer_args: Sequence[str], jobs: dict, jobs_path: str
    ):
        self.vertex, self.epochs, self.trainer_args, self.jobs, self.jobs_path = (
            vertex,
            epochs,
            trainer_args,
            jobs,
            jobs_path,
        )

    def start(self, cell: Cell) -> None:
        if cell.name not in self.jobs:
            submitted = vertex_lib.launch(
                dataclasses.replace(self.vertex, base_output_dir=cell.model_dir),
                cell_args(cell.lr, cell.batch_size, self.epochs, cell.model_dir, self.trainer_args),
                display_name=f"sweep-{cell.name}".replace(".", "-"),
            )
            if not submitted:  # --dry_run: printed, not sent
                cell.status = Status.DRY_RUN
                return
            self.jobs[cell.name] = submitted
            fileio.write_bytes(self.jobs_path, json.dumps(self.jobs, indent=2).encode())
        cell.status, cell.detail = Status.SUBMITTED, self.jobs[cell.name]


def _cell(cell: Cell, runner, finished, converged_epochs: int) -> Cell:
    """Starts the cell with `runner` unless it already finished, then reads its history when it has one."""
    if finished(cell.model_dir):
        print(f"[sweep] {cell.name}: already finished, not rerun", flush=True)
    else:
        runner.start(cell)
    history = read_history(fileio.join(cell.model_dir, "history.csv")) if cell.status is Status.FINISHED else []
    if history:
        cell.metrics = summarize_history(history, converged_epochs)
    return cell


def run_sweep(
    lrs: Sequence[float],
    batch_sizes: Sequence[int],
    epochs: int,
    output_dir: str,
    trainer_args: Sequence[str],
    converged_epochs: int = 3,
    vertex: Optional[vertex_lib.VertexJob] = None,
    cell_machine_type: str = "n1-standard-8",
) -> List[dict]:
    """Runs (or, with a VertexJob, submits) every unfinished cell, then tabulates all of them. Returns the rows.

    With cached features, the backbone runs once first: locally here, on Vertex as its own GPU job, after which
    the cells (submitted by a rerun of the command, or at once in a dry run) need no GPU."""
    dry_run = bool(vertex and vertex.dry_run)  # prints the jobs; reads and writes no storage
    jobs_path = fileio.join(output_dir, "vertex_jobs.json")
    jobs = json.loads(fileio.read_bytes(jobs_path)) if vertex and not dry_run and fileio.exists(jobs_path) else {}
    finished = lambda model_dir: not dry_run and fileio.exists(fileio.join(model_dir, "metrics.json"))  # noqa: E731
    cells = [Cell(lr, bs, fileio.join(output_dir, cell_name(lr, bs))) for lr in lrs for bs in batch_sizes]
    unfinished = not all(finished(cell.model_dir) for cell in cells)
    trainer = vertex_lib.parse_trainer_flags(trainer_args)  # the cells' settings, as trainer.main will read them
    if unfinished and shares_features(trainer) and not vertex:
        _extract_once(lrs, batch_sizes, output_dir, trainer_args)
    if unfinished and shares_features(trainer) and vertex:
        extraction = _submit_extraction(
            dataclasses.replace(vertex, base_output_dir=fileio.join(output_dir, "extract_features")),
            trainer_args,
            trainer,
            jobs,
        )
        if extraction and extraction != "dry run":
            fileio.write_bytes(jobs_path, json.dumps(jobs, indent=2).encode())
            print(
                f"[sweep] extracting the features once ({extraction}); rerun this command when it has finished "
                f"to submit the cells, which then need no GPU",
                flush=True,
            )
            return []
        if extraction or trainer.feature_cache_dir:
            vertex = dataclasses.replace(
                vertex, machine_type=cell_machine_type, accelerator_type=None, accelerator_count=0
            )
    runner = (
        VertexCells(vertex, epochs, trainer_args, jobs, jobs_path)
        if vertex
        else LocalCells(epochs, output_dir, trainer_args)
    )
    rows = [_cell(cell, runner, finished, converged_epochs).row() for cell in cells]
    if dry_run:
        print(f"[sweep] dry run: {len(rows)} cell jobs printed; nothing was read from or written to {output_dir}")
    else:
        write_summary(rows, output_dir, trainer_args, epochs)
    return rows


def best_cell(rows: List[dict]) -> Optional[dict]:
    done = [r for r in rows if "val_accuracy_converged" in r]
    if not done:
        return None
    return sorted(done, key=lambda r: (-r["val_accuracy_converged"], r["val_loss_converged"]))[0]


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_summary(rows: List[dict], output_dir: str, trainer_args: Sequence[str], epochs: int) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {k: (f"{v!r}" if k == "lr" else round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
        )
    fileio.write_bytes(fileio.join(output_dir, "summary.csv"), out.getvalue().encode())
    lines = [
        "# Sweep summary",
        "",
        "## Validation accuracy",
        "",
        "| lr | batch size | lowest | highest | converged | status |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['lr']!r} | {r['batch_size']} | {_fmt(r.get('val_accuracy_lowest', '-'))} | "
            f"{_fmt(r.get('val_accuracy_highest', '-'))} | {_fmt(r.get('val_accuracy_converged', '-'))} | "
            f"{r['status']} |"
        )
    lines += [
        "",
        "## Validation loss (at the lowest / highest accuracy epoch, converged)",
        "",
        "| lr | batch size | at lowest accuracy | at highest accuracy | converged |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['lr']!r} | {r['batch_size']} | {_fmt(r.get('val_loss_at_lowest', '-'))} | "
            f"{_fmt(r.get('val_loss_at_highest', '-'))} | {_fmt(r.get('val_loss_converged', '-'))} |"
        )
    lines += _best_cell_lines(best_cell(rows), epochs, trainer_args)
    fileio.write_bytes(fileio.join(output_dir, "summary.md"), ("\n".join(lines) + "\n").encode())
    plot_heatmap(rows, fileio.join(output_dir, "val_accuracy_heatmap.png"))


def _best_cell_lines(best: Optional[dict], epochs: int, trainer_args: Sequence[str]) -> List[str]:
    """summary.md's best-cell paragraph with the command that reproduces it (also printed); none without one."""
    lines: List[str] = []
    if best:
        command = shlex.join(
            [
                sys.executable.rsplit("/", 1)[-1],
                "-m",
                "trainer.main",
                *cell_args(best["lr"], best["batch_size"], epochs, best["model_dir"], trainer_args),
            ]
        )
        lines += [
            "",
            f"**Best cell:** lr={best['lr']!r}, batch size={best['batch_size']} (converged val accuracy "
            f"{best['val_accuracy_converged']:.4f}, val loss {best['val_loss_converged']:.4f}).",
            "",
            "Reproduce it with:",
            "",
            f"    {command}",
        ]
        print(
            f"[sweep] best cell: lr={best['lr']!r} batch_size={best['batch_size']} "
            f"(converged val accuracy {best['val_accuracy_converged']:.4f}); reproduce with:\n  {command}"
        )
    return lines


def plot_heatmap(rows: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lrs = sorted({r["lr"] for r in rows}, reverse=True)
    sizes = sorted({r["batch_size"] for r in rows})
    grid = np.full((len(lrs), len(sizes)), np.nan)
    for r in rows:
        if "val_accuracy_converged" in r:
            grid[lrs.index(r["lr"]), sizes.index(r["batch_size"])] = r["val_accuracy_converged"]
    fig, ax = plt.subplots(figsize=(1.4 * len(sizes) + 2, 1.0 * len(lrs) + 1.5))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis")
    for i in range(len(lrs)):
        for j in range(len(sizes)):
            ax.text(
                j,
                i,
                "failed" if np.isnan(grid[i, j]) else f"{grid[i, j]:.3f}",
                ha="center",
                va="center",
                color="white" if np.isnan(grid[i, j]) or grid[i, j] < np.nanmean(grid) else "black",
            )
    ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
    ax.set_yticks(range(len(lrs)), [repr(lr) for lr in lrs])
    ax.set_xlabel("batch size")
    ax.set_ylabel("learning rate")
    ax.set_title("converged validation accuracy")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    fileio.write_bytes(path, buffer.getvalue())


def main(argv: Sequence[str]) -> int:
    args = passthrough_args(argv)
    for reserved in ("model_dir", "batch_size", "lr", "epochs"):
        if any(a.startswith(f"--{reserved}=") for a in args):
            raise UserError(f"--{reserved} is set per cell by the sweep; remove it from the trainer flags")
    config = from_flags(SweepConfig)
    lrs, batch_sizes = parse_grid(config.lrs, config.batch_sizes)
    vertex = from_flags(vertex_lib.VertexJob) if config.vertex else None
    if vertex and not config.output_dir.startswith("gs://"):
        raise UserError(
            f"--output_dir={config.output_dir}: Vertex AI jobs need a gs:// output folder (each cell's "
            f"base_output_dir is its folder there)"
        )
    rows = run_sweep(
        lrs,
        batch_sizes,
        config.epochs,
        config.output_dir,
        args,
        config.converged_epochs,
        vertex,
        config.cell_machine_type,
    )
    if vertex and vertex.dry_run:
        return 0
    failed = [r for r in rows if r["status"].startswith("failed")]
    print(
        f"[sweep] {len(rows) - len(failed)} of {len(rows)} cells ok; summary in "
        f"{fileio.join(config.output_dir, 'summary.md')}"
    )
    return 1 if failed and len(failed) == len(rows) else 0


def _define_flags() -> None:
    define_flags(SweepConfig)
    # for --vertex; each cell names its own job and has its own base_output_dir (its folder under --output_dir)
    define_flags(vertex_lib.VertexJob, skip=("display_name", "base_output_dir"))


def cli() -> None:
    run_main(main, define_flags=_define_flags)


if __name__ == "__main__":
    cli()
