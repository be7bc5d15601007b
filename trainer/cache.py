"""Lists or clears the shared feature cache (trainer/feature_cache.py).

Usage:
  python -m trainer.cache                      # one line per entry: key, size, splits, what it was computed from
  python -m trainer.cache --clear=KEY          # remove one entry (or --clear=all; also removes abandoned temp folders)
  python -m trainer.cache --feature_cache_dir=gs://b/features
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence

from celeba_common import fileio
from celeba_common.cli import import_tensorflow_for_remote, run_main
from celeba_common.errors import UserError
from celeba_common.flagdefs import define_flags, from_flags, option
from trainer.cache_layout import KEY, read_info
from trainer.config import default_feature_cache_dir


@dataclasses.dataclass
class CacheCommand:
    feature_cache_dir: str = option(
        "", "The cache folder (default: the trainer's default, ~/.cache/celeba-tfrecords/features)."
    )
    clear: str = option("", "KEY: remove that entry; all: remove every entry.")


def entries(root: str) -> List[dict]:
    """One dict per cached key: key, size (bytes), splits and the facts of its info.json."""
    found: Dict[str, dict] = {}
    for name in fileio.listdir(root) if fileio.isdir(root) else []:  # every file under root, relative
        parts = name.split("/")
        if not KEY.fullmatch(parts[0]):  # not a cache entry: never listed, never cleared
            continue
        entry = found.setdefault(parts[0], {"key": parts[0], "size": 0, "splits": set()})
        entry["size"] += fileio.size(fileio.join(root, name))
        if len(parts) > 2:
            entry["splits"].add(parts[1])
    out = []
    for key in sorted(found):
        facts = read_info(fileio.join(root, key)) or {}  # missing or damaged: listed (and clearable) all the same
        out.append({**facts, **found[key], "splits": sorted(found[key]["splits"])})
    return out


def _entries(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}"


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise UserError(f"unexpected argument {argv[1]}")
    config = from_flags(CacheCommand)
    root = config.feature_cache_dir or default_feature_cache_dir()
    # gs:// through tf.io.gfile, as the trainer that wrote it
    import_tensorflow_for_remote(root, writes=(root,) if config.clear else ())
    found = entries(root)
    if config.clear:
        doomed = found if config.clear == "all" else [e for e in found if e["key"] == config.clear]
        if not doomed and config.clear != "all":
            raise UserError(f"--clear={config.clear}: no such entry in {root} (run without --clear to list them)")
        for entry in doomed:
            fileio.delete_tree(fileio.join(root, entry["key"]))
        print(f"removed {_entries(len(doomed))} ({sum(e['size'] for e in doomed) / 2**20:.1f} MB) from {root}")
        return 0
    for e in found:
        print(
            f"{e['key']}  {e['size'] / 2**20:8.1f} MB  {','.join(e['splits']) or '-':<17} "
            f"{e.get('image_size', '?')} px  weights={e.get('weights', '?')}  pooling={e.get('pooling', '?')}  "
            f"{e.get('precision', '?')}  records={e.get('records', '?')}"
        )
    print(f"{_entries(len(found))}, {sum(e['size'] for e in found) / 2**20:.1f} MB in {root}")
    return 0


def cli() -> None:
    run_main(main, define_flags=lambda: define_flags(CacheCommand))


if __name__ == "__main__":
    cli()
