"""Config records. Each checks itself when built, so commands never validate options by hand."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from edgeclf.atomic import overlaps
from edgeclf.errors import UsageError
from edgeclf.pipeline.backbones import get_backbone
from edgeclf.pipeline.distribute import STRATEGIES
from edgeclf.pipeline.resize import DEFAULT as DEFAULT_RESIZE, get_kernel
from edgeclf.pipeline.streaming import CACHE_MODES
from edgeclf.checks import check_range
from edgeclf.outputs import absolute

LEAK_POLICIES = ("warn", "exclude", "refuse")
EMBEDDING_MODES = ("auto", "on", "off")
MAX_IMG_SIZE = 1024  # decoded splits are held in memory: 1000 images at 1024 px are already 3 GB
MAX_LR = 1.0  # Adam: far above any rate that trains
MAX_SEED = 2**32 - 1  # numpy's legacy seeding (used by Keras) takes no more


@dataclass
class TrainConfig:
    data_dir: str
    out: str
    arch: str = "mobilenetv2"
    weights: str = "imagenet"  # "imagenet", "none" or a path
    img_size: int | None = None  # None: the backbone's default
    alpha: float = 1.0
    val_split: float = 0.2
    val_dir: str | None = None
    test_dir: str | None = None
    batch_size: int = 32
    head_epochs: int = 5
    fine_tune_epochs: int = 15
    lr: float = 1e-3
    fine_tune_lr: float | None = None  # None: lr / 20
    fine_tune_at: int | None = None  # None: the backbone's default
    dropout: float = 0.4
    label_smoothing: float = 0.1
    augment: bool = True
    class_weight: str = "none"  # "none" or "auto"
    patience: int = 5
    seed: int = 42
    cache: str = "auto"  # decoded images: memory, disk (a file in the run), none (decode per read), auto
    distribute: str = "none"  # none, mirrored, multi-worker (pipeline/distribute.py)
    leaks: str = "warn"  # val/test images that duplicate training images: warn, exclude, refuse (jobs/audit.py)
    audit_embeddings: str = "auto"  # the audit's embedding checks: auto (when cheap next to training), on, off
    resize: str = DEFAULT_RESIZE  # the resize kernel (pipeline/resize.py): the app's, when it is known

    def __post_init__(self):
        backbone = get_backbone(self.arch)
        self.arch = backbone.name
        if self.img_size is None:
            self.img_size = backbone.default_size
        check_range("--img-size", self.img_size, backbone.min_size, MAX_IMG_SIZE, example=f"--img-size {backbone.default_size} for {self.arch}")
        if self.alpha != 1.0 and not backbone.has_alpha:
            raise UsageError(f"--alpha applies only to mobilenetv2, not {self.arch}", "drop --alpha")
        if not 0 < self.alpha <= 1.4:
            raise UsageError(f"--alpha {self.alpha} is out of range", "use a width multiplier in (0, 1.4], e.g. 0.35, 0.5, 1.0")
        if self.val_dir is None and not 0 < self.val_split < 1:
            raise UsageError(f"--val-split {self.val_split} must be between 0 and 1", "e.g. --val-split 0.2")
        check_range("--batch-size", self.batch_size, 1, example="--batch-size 32")
        if self.head_epochs < 0 or self.fine_tune_epochs < 0 or self.head_epochs + self.fine_tune_epochs == 0:
            raise UsageError("no epochs to train", "set --head-epochs and/or --fine-tune-epochs above 0")
        check_range("--lr", self.lr, 0, MAX_LR, low_open=True, example="--lr 1e-3")
        if self.fine_tune_lr is not None:
            check_range("--fine-tune-lr", self.fine_tune_lr, 0, MAX_LR, low_open=True, example="--fine-tune-lr 5e-5")
        if self.fine_tune_lr is None:
            self.fine_tune_lr = self.lr / 20
        if not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout {self.dropout} must be in [0, 1)", "e.g. --dropout 0.2")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"--label-smoothing {self.label_smoothing} must be in [0, 1)", "e.g. --label-smoothing 0.1")
        check_range("--patience", self.patience, 0, example="--patience 5")
        check_range("--seed", self.seed, 0, MAX_SEED, example="--seed 42")
        if self.class_weight not in ("none", "auto"):
            raise UsageError(f"--class-weight {self.class_weight} is not supported", "use 'auto' or 'none'")
        if self.cache not in CACHE_MODES:
            raise UsageError(f"--cache {self.cache} is not supported", f"use one of {', '.join(CACHE_MODES)}")
        if self.distribute not in STRATEGIES:
            raise UsageError(f"--distribute {self.distribute} is not supported", f"use one of {', '.join(STRATEGIES)}")
        if self.leaks not in LEAK_POLICIES:
            raise UsageError(f"--leaks {self.leaks} is not supported", f"use one of {', '.join(LEAK_POLICIES)}")
        if self.audit_embeddings not in EMBEDDING_MODES:
            raise UsageError(f"--audit-embeddings {self.audit_embeddings} is not supported", f"use one of {', '.join(EMBEDDING_MODES)}")
        get_kernel(self.resize)  # unknown, or its library missing: one line naming the fix
        if self.weights.lower() in ("imagenet", "none"):
            self.weights = self.weights.lower()
        else:
            path = Path(self.weights).expanduser()
            if not path.is_file():
                raise UsageError(f"weights file {path} does not exist", "pass --weights imagenet, none, or a path to an .h5/.keras file")
            self.weights = str(path.resolve())
        if self.fine_tune_at is None:
            self.fine_tune_at = backbone.fine_tune_at
        check_range("--fine-tune-at", self.fine_tune_at, 0, example=f"--fine-tune-at {backbone.fine_tune_at}")
        for name in ("data_dir", "val_dir", "test_dir"):
            value = getattr(self, name)
            if value is not None:
                path = Path(value).expanduser()
                if not path.is_dir():
                    raise UsageError(f"{name.replace('_', '-')} {path} is not a folder", "pass a folder with one subfolder per class")
                setattr(self, name, str(path.resolve()))
        self._refuse_overlapping_splits()
        self.out = str(absolute(self.out))  # a link at --out is refused by the output rule, never followed

    def _refuse_overlapping_splits(self) -> None:
        """Val or test images that are also training images would report training scores."""
        folders = [(name.replace("_", "-"), getattr(self, name)) for name in ("data_dir", "val_dir", "test_dir")]
        for i, (name, folder) in enumerate(folders):
            for other_name, other in folders[:i]:
                if folder is not None and other is not None and overlaps(Path(folder), Path(other)):
                    raise UsageError(f"--{name} {folder} overlaps the {other_name} {other}",
                                     "give each split its own folder, none inside another")

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
