"""From a TrainConfig to decoded train/val/test splits, plus the record of how they were made."""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from edgeclf import console
from edgeclf.layout import sha256_file
from edgeclf.pipeline.config import TrainConfig
from edgeclf.pipeline.datasets import (
    DecodedSplit,
    ImageFolder,
    Sample,
    Samples,
    check_same_classes,
    scan_folder,
    stratified_split,
)
from edgeclf.pipeline.resize import DEFAULT as DEFAULT_RESIZE
from edgeclf.pipeline.streaming import choose_cache, load_split


@dataclass
class SplitPlan:
    """Which files go where; cheap to build, and built before anything is written."""

    classes: list[str]
    roots: dict[str, Path]
    samples: dict[str, list[Sample]]
    how: str

    def to_json(self) -> dict:
        return {
            "how": self.how,
            "classes": self.classes,
            "splits": {
                name: {
                    "root": str(self.roots[name]),
                    "files": [[str(s.path.relative_to(self.roots[name])), s.label] for s in samples],
                }
                for name, samples in self.samples.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict) -> SplitPlan:
        roots = {name: Path(split["root"]) for name, split in data["splits"].items()}
        samples = {
            name: Samples((roots[name] / rel for rel, _ in split["files"]), [int(label) for _, label in split["files"]])
            for name, split in data["splits"].items()
        }
        return cls(list(data["classes"]), roots, samples, data["how"])

    def decode(self, name: str, img_size: int, cache: str = "memory", resize: str = DEFAULT_RESIZE) -> DecodedSplit:
        """One split's images; `cache="auto"` keeps them in memory if they fit the budget and
        otherwise decodes them on every read (for one-pass scoring; see pipeline/streaming.py)."""
        samples = self.samples[name]
        mode = choose_cache(cache, len(samples), img_size, streamed="none")
        return load_split(name, self.roots[name], self.classes, samples, img_size, mode, resize=resize)


def plan_splits(config: TrainConfig) -> SplitPlan:
    """Scan the folders and check them; every dataset error surfaces here, before training."""
    train_folder = scan_folder(Path(config.data_dir), "training data")
    roots = {"train": train_folder.root}
    if config.val_dir:
        val_folder = _checked(train_folder, Path(config.val_dir), "validation")
        samples = {"train": train_folder.samples, "val": val_folder.samples}
        roots["val"] = val_folder.root
        how = f"explicit --val-dir {config.val_dir}"
    else:
        train, val = stratified_split(train_folder, config.val_split, config.seed)
        samples = {"train": Samples.of(train), "val": Samples.of(val)}
        roots["val"] = train_folder.root
        how = f"stratified --val-split {config.val_split} of {config.data_dir} with seed {config.seed}"
    if config.test_dir:
        test_folder = _checked(train_folder, Path(config.test_dir), "test")
        samples["test"] = test_folder.samples
        roots["test"] = test_folder.root
    warn_identical_files_across_splits(samples)
    return SplitPlan(train_folder.classes, roots, samples, how)


def warn_identical_files_across_splits(samples: dict[str, list[Sample]]) -> None:
    """Warn when a val or test file has the same bytes as a file of an earlier split (leakage).

    Only files whose size occurs in more than one split are hashed, so this costs little.
    """
    by_size: dict[int, list[tuple[str, Path]]] = defaultdict(list)
    for split, members in samples.items():
        for sample in members:
            by_size[sample.path.stat().st_size].append((split, sample.path))
    seen: dict[str, str] = {}  # sha256 -> the first split holding it
    copies: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for group in by_size.values():
        if len({split for split, _ in group}) < 2:
            continue
        for split, path in group:
            first = seen.setdefault(sha256_file(path), split)
            if first != split:
                copies[(split, first)].append(path)
    for (split, first), paths in copies.items():
        console.warn(f"{len(paths)} file(s) in {split} are identical to files in {first} (e.g. {paths[0]}): "
                     f"their {split} score is not a fair one")


def _checked(train_folder: ImageFolder, root: Path, what: str) -> ImageFolder:
    folder = scan_folder(root, f"{what} data")
    check_same_classes(train_folder.classes, folder.classes, root, what)
    return folder


def save_plan(plan: SplitPlan, path: Path) -> None:
    path.write_text(json.dumps(plan.to_json(), indent=1))


def load_plan(path: Path) -> SplitPlan:
    return SplitPlan.from_json(json.loads(path.read_text()))
