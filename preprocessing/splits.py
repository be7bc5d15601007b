"""Which images go into which split: pure functions of the rows, the sizes and the seed.

Each split is drawn only from its official CelebA partition (the partitions are identity-disjoint, so no person
is in two splits). Within a partition, images are ordered by a seeded sha256 ranking of their file names (never
Python's hash()), so the same inputs give the same subset on every machine and runner. A few spare candidates
follow the wanted ones in that order, to replace unreadable images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Dict, List, Optional, Sequence

from celeba_common.errors import UserError
from dataset_format.schema import CLASS_NAMES, SPLITS
from preprocessing.celeba import Row

DEFAULT_SPLIT_SIZES = "24000,3000,3000"


@dataclasses.dataclass
class Group:
    """Candidates for one split (or one label of a split with --balance), best rank first."""

    split: str
    label: Optional[int]  # None unless balanced
    target: Optional[int]  # None: keep every readable candidate
    candidates: List[Row]


def parse_split_sizes(text: str) -> Optional[Dict[str, int]]:
    """'24000,3000,3000' -> {'train': 24000, ...}; 'all' -> None (every image of each partition)."""
    if text.strip().lower() == "all":
        return None
    parts = [p.strip() for p in text.split(",")]
    # ASCII digits only: int() also takes other scripts' digits, which no list file or manifest should carry
    sizes = [int(p) for p in parts] if all(p.isascii() and p.isdigit() for p in parts) else []
    if len(sizes) != 3 or any(s < 0 for s in sizes) or sum(sizes) == 0:
        raise UserError(f"--split_sizes={text}: expected TRAIN,VAL,TEST (three non-negative integers) or 'all'")
    return dict(zip(SPLITS, sizes))


def rank_key(name: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}/{name}".encode()).digest()


def spare_count(target: int) -> int:
    """Spare candidates kept after the wanted ones to replace unreadable images."""
    return max(32, math.ceil(target * 0.02))


def select_candidates(
    rows: Sequence[Row], sizes: Optional[Dict[str, int]], seed: int, balance: bool = False
) -> List[Group]:
    """Ranked candidates per split (and label, with balance); raises UserError when a partition is too small."""
    by_partition: Dict[str, List[Row]] = {s: [] for s in SPLITS}
    for row in rows:
        by_partition[row.partition].append(row)
    groups = []
    for split in SPLITS:
        pool = sorted(by_partition[split], key=lambda r: rank_key(r.name, seed))
        wanted = None if sizes is None else sizes[split]
        if wanted == 0 or (wanted is None and not pool):
            continue
        if not balance:
            if wanted is not None and wanted > len(pool):
                raise UserError(
                    f"split {split} asks for {wanted} images but the official {split} partition lists only {len(pool)}"
                )
            keep = pool if wanted is None else pool[: wanted + spare_count(wanted)]
            groups.append(Group(split, None, wanted, keep))
            continue
        by_label = {label: [r for r in pool if r.label == label] for label in (0, 1)}
        if wanted is None:
            wanted = 2 * min(len(v) for v in by_label.values())
        for label in (0, 1):
            target = wanted // 2 + (wanted % 2 if label == 0 else 0)
            have = by_label[label]
            if target > len(have):
                raise UserError(
                    f"split {split} asks for {target} {CLASS_NAMES[label]} images (--balance) but "
                    f"the official {split} partition lists only {len(have)}"
                )
            groups.append(Group(split, label, target, have[: target + spare_count(target)]))
    return groups
