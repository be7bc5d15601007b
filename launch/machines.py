"""Which Google Cloud machine types carry which GPUs, and how many: checked before a Vertex AI request is made.

Compute Engine attaches each GPU model to one machine family only: T4, V100, P100 and P4 to N1 machines (1, 2, 4
or 8 of them, the model's own choices); L4 to G2, A100 40GB to A2 highgpu/megagpu, A100 80GB to A2 ultragpu, H100
80GB to A3 highgpu and H100 Mega to A3 megagpu, where the machine type fixes the count (a2-highgpu-4g: 4 x A100).
A request that breaks this is refused by Vertex AI after the submit; here it is a one-line error before it.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from celeba_common.errors import UserError

# accelerator -> GPU counts an N1 machine takes
N1_GPUS: Dict[str, Tuple[int, ...]] = {
    "NVIDIA_TESLA_T4": (1, 2, 4),
    "NVIDIA_TESLA_V100": (1, 2, 4, 8),
    "NVIDIA_TESLA_P100": (1, 2, 4),
    "NVIDIA_TESLA_P4": (1, 2, 4),
}
# machine type -> (accelerator, count) for the families whose machine type fixes both
FIXED_GPUS: Dict[str, Tuple[str, int]] = {
    **{f"g2-standard-{cpus}": ("NVIDIA_L4", 1) for cpus in (4, 8, 12, 16, 32)},
    "g2-standard-24": ("NVIDIA_L4", 2),
    "g2-standard-48": ("NVIDIA_L4", 4),
    "g2-standard-96": ("NVIDIA_L4", 8),
    **{f"a2-highgpu-{n}g": ("NVIDIA_TESLA_A100", n) for n in (1, 2, 4, 8)},
    "a2-megagpu-16g": ("NVIDIA_TESLA_A100", 16),
    **{f"a2-ultragpu-{n}g": ("NVIDIA_A100_80GB", n) for n in (1, 2, 4, 8)},
    **{f"a3-highgpu-{n}g": ("NVIDIA_H100_80GB", n) for n in (1, 2, 4, 8)},
    "a3-megagpu-8g": ("NVIDIA_H100_MEGA_80GB", 8),
}
DEFAULT_CPU_MACHINE = "n1-standard-8"
DEFAULT_N1_GPU_MACHINE = "n1-standard-8"


def _fixed_machine(accelerator: str, count: int) -> Optional[str]:
    """The smallest machine type of a fixed family that carries `count` x `accelerator`."""
    for machine, carried in FIXED_GPUS.items():
        if carried == (accelerator, count):
            return machine
    return None


def _known() -> str:
    return ", ".join(sorted({*N1_GPUS, *(a for a, _ in FIXED_GPUS.values())}))


def resolve(
    machine_type: Optional[str],
    accelerator: Optional[str],
    count: int,
    flags: Tuple[str, str, str] = ("--machine_type", "--accelerator_type", "--accelerator_count"),
) -> Tuple[str, Optional[str], int]:
    """(machine type, accelerator, count) that Google Cloud accepts, from what the user gave; UserError naming the
    flag otherwise. Without a machine type: the machine that carries the GPUs (n1-standard-8 for N1 GPUs, the
    smallest of the family otherwise). A fixed family's machine type alone implies its GPUs."""
    machine_flag, type_flag, count_flag = flags
    if count < 0:
        raise UserError(f"{count_flag}={count}: must be >= 0")
    if accelerator and accelerator not in N1_GPUS and accelerator not in {a for a, _ in FIXED_GPUS.values()}:
        raise UserError(f"{type_flag}={accelerator}: not a GPU Vertex AI offers; one of {_known()}")
    if machine_type in FIXED_GPUS:
        carried, carried_count = FIXED_GPUS[machine_type]
        if (accelerator or carried) != carried or (count or carried_count) != carried_count:
            raise UserError(
                f"{machine_flag}={machine_type} carries {carried_count} x {carried}, not "
                f"{count} x {accelerator}; drop {type_flag} and {count_flag}, or pick the machine for "
                f"them: {_fixed_machine(accelerator, count) or 'none carries that many'}"
            )
        return machine_type, carried, carried_count
    if count and not accelerator:
        raise UserError(f"{count_flag}={count} needs {type_flag} (e.g. NVIDIA_L4)")
    if accelerator and not count:
        raise UserError(f"{type_flag}={accelerator} needs {count_flag} >= 1")
    if not accelerator:
        return machine_type or DEFAULT_CPU_MACHINE, None, 0
    if accelerator in N1_GPUS:
        if machine_type and not machine_type.startswith("n1-"):
            raise UserError(
                f"{type_flag}={accelerator} attaches to N1 machines only, not {machine_flag}="
                f"{machine_type}; e.g. {machine_flag}={DEFAULT_N1_GPU_MACHINE}"
            )
        if count not in N1_GPUS[accelerator]:
            raise UserError(
                f"{count_flag}={count}: an N1 machine takes {', '.join(map(str, N1_GPUS[accelerator]))} x {accelerator}"
            )
        return machine_type or DEFAULT_N1_GPU_MACHINE, accelerator, count
    fitting = _fixed_machine(accelerator, count)
    counts = sorted({n for a, n in FIXED_GPUS.values() if a == accelerator})
    if fitting is None:
        raise UserError(f"{count_flag}={count}: {accelerator} comes {', '.join(map(str, counts))} to a machine")
    if machine_type:
        raise UserError(
            f"{type_flag}={accelerator} does not attach to {machine_flag}={machine_type}; "
            f"{count} x {accelerator} come on {fitting}"
        )
    return fitting, accelerator, count
