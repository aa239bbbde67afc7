"""The run config's schema: every key, its type and its default, as dataclasses.

A recipe in ``configs/`` states only what differs from these defaults; :mod:`distill.config.compose`
merges recipes and overrides over them, and the comment beside a key is its documentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

__all__ = [
    "CifarDataConfig",
    "DataConfig",
    "ImageFolderDataConfig",
    "LayerPairConfig",
    "LoggingConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "STAGES",
    "ShapesDataConfig",
    "StreamDataConfig",
    "TeacherCacheConfig",
    "TrainerConfig",
    "stages_to_train",
]

STAGES: tuple[str, ...] = ("all", "teacher", "student")


@dataclass
class CifarDataConfig:
    """Options of ``data.name=cifar10|cifar100`` only."""

    download: bool = True  # fetch into data.root when missing


@dataclass
class ImageFolderDataConfig:
    """Options of ``data.name=imagefolder`` only."""

    train_dir: str = "train"  # split folders under data.root
    val_dir: str = "test"  # the evaluation split (a train/ + val/ tree: val)
    test_dir: str | None = None  # None: val_dir
    cache_dir: str | None = None  # keep the decoded uint8 tensor here (.pt), in-memory path


@dataclass
class ShapesDataConfig:
    """Options of ``data.name=shapes`` only."""

    num_train: int = 4000  # generated training images (the holdout is carved from them)
    num_val: int = 1000  # generated test images
    data_seed: int = 0  # seed of the generated images (not of shuffling or augmentation)


@dataclass
class StreamDataConfig:
    """Options of ``data.name=stream`` only: splits written by
    ``python -m distill.data.stream optimize SRC OUT``, under data.root (a folder or s3://...)."""

    train_dir: str = "train"  # the training split's chunks under data.root
    holdout_dir: str | None = None  # validation and selection (optimize --holdout); None: test
    test_dir: str = "val"  # ImageNet's labelled evaluation set
    cache_dir: str | None = None  # litdata's cache of remote chunks; None: its default


@dataclass
class DataConfig:
    """Dataset and loader settings: shared options, then one section per dataset (only the
    section of ``name`` is used, so a recipe can switch datasets with ``data.name``)."""

    name: str = "shapes"  # the dataset; shapes is generated in memory (offline)
    root: str | None = None  # cifar, imagefolder: dataset folder; None: ~/.cache/distill/data
    batch_size: int = 128  # global batch, split across devices
    # Drop each epoch's last incomplete training batch (timm's default): a batch of one image
    # stops batch norm. A split smaller than one batch still trains, as one batch.
    drop_last: bool = True
    num_workers: int = 2  # loader worker processes (per-sample and streamed paths)
    in_memory: bool = True  # uint8 tensor in memory, batched augmentation on the device
    # Model input size (square); None: the images' own size (all equal). shapes: generated size.
    image_size: int | None = None
    # Training crop: pad (CIFAR: 4-pixel pad, random crop) or random_resized (ImageNet: area
    # 0.08-1, ratio 3/4-4/3; evaluation resizes to image_size/0.875, then center-crops).
    crop: str = "pad"
    augment: bool = True  # the training crop and a horizontal flip
    # Class-balanced holdout of the training split: validation, checkpoint selection, curves.
    # 0: no holdout (the paper's protocol): validation runs on the test split, the last
    # checkpoint is tested and nothing is selected.
    val_fraction: float = 0.1
    train_fraction: float = 1.0  # class-balanced share of what remains (data-scarce runs)
    subset_seed: int = 0  # seed of the holdout and of that share, the same for every method
    # Seed of the training order and augmentation; None: the run's seed. Fixed, every student
    # of a comparison or sweep sees the same batches (and can share one teacher cache).
    augment_seed: int | None = None
    # Per-channel normalisation ([0, 1] scale); None: the dataset's (CIFAR-10's for image
    # folders). Pretrained ImageNet models: [0.485, 0.456, 0.406] and [0.229, 0.224, 0.225].
    mean: list[float] | None = None
    std: list[float] | None = None  # per-channel std, as mean; None: the dataset's
    cifar: CifarDataConfig = field(default_factory=CifarDataConfig)
    imagefolder: ImageFolderDataConfig = field(default_factory=ImageFolderDataConfig)
    shapes: ShapesDataConfig = field(default_factory=ShapesDataConfig)
    stream: StreamDataConfig = field(default_factory=StreamDataConfig)


@dataclass
class ModelConfig:
    """A network built by ``distill.models.build_model``."""

    # Also torchvision names (resnet18), timm/<name> (pip: distill[timm]) and any importable
    # package.module:callable, called with num_classes and kwargs.
    name: str = "wrn_16_1"
    kwargs: dict[str, Any] = field(default_factory=dict)  # builder options (depth=9, ...)
    # Starting weights: a pretrained name (torchvision: DEFAULT, IMAGENET1K_V1; timm: DEFAULT) or
    # a state_dict file (.pt, .pth, .safetensors). Another class count keeps the backbone and
    # gives a new head, to fine-tune (stage=teacher). None: random initialisation.
    weights: str | None = None
    # Teacher only: trained weights (this toolkit's .ckpt, or a state_dict of teacher.name for
    # the data's classes); unset or absent: train first.
    checkpoint: str | None = None
    epochs: int = 30  # training epochs of this stage; teacher: 0 evaluates the given weights or checkpoint (stage=teacher)
    # Rename rules for the keys of a weights file from other code, applied in order: OLD:NEW
    # (literal, e.g. linear.:fc.) or re:PATTERN:REPL. A DDP module. prefix is stripped anyway.
    key_map: list[str] = field(default_factory=list)
    # The layer Grad-CAM++ explains; None: the model's own (import-path models: found by a
    # forward pass, the layer that feeds global pooling).
    cam_layer: str | None = None


@dataclass
class LayerPairConfig:
    """One (student layer, teacher layer, weight) pair of ``loss.map_layers`` / ``loss.at_layers``."""

    student: str = "???"  # a module name of the student, as in named_modules() (required)
    teacher: str = "???"  # the teacher's layer matched to it (required)
    weight: float = 1.0  # this pair's weight in the sum over pairs


@dataclass
class LossConfig:
    """Weights of the distillation losses (see ``distill.ExplanationDistiller``)."""

    ce_weight: float = 0.1  # CE 0.1 + KD 0.9 at T=4: KD as the field runs it
    kd_weight: float = 0.9  # Hinton KD, its KL term scaled by temperature^2; 0 disables it
    temperature: float = 4.0  # KD's (and DKD's) softmax temperature
    map_weight: float = 0.01  # the explanation-map term (the paper's 0.01); 0 disables it
    map_method: str = "gradcam_pp"  # any of distill.cam.CAM_METHODS; cam: pooled layer only
    map_target: str = "label"  # class the maps explain: label (the paper) or teacher (its top-1)
    map_normalize: str = "none"  # per-sample map normalisation before the distance
    map_distance: str = "squared_l2"  # squared_l2 (the paper), mse, l1 or cosine
    map_layers: list[LayerPairConfig] | None = None  # None: the models' cam_layer pair
    map_closed_form: bool = True  # False forces the autograd path (same maps, slower)
    at_weight: float = 0.0  # attention transfer (the authors' 1000); 0 disables it
    at_layers: list[LayerPairConfig] | None = None  # None: the models' cam_layer pair
    at_p: float = 2.0  # exponent of the attention map (channel mean of |x|^p)
    at_form: str = "code"  # code (the authors' reference code) or paper (eq. 2)

    # The field's baselines (docs/baselines.md): DKD, logit standardisation, CAT-KD.

    logit_standardize: bool = False  # z-score logits before KD's and DKD's softmax
    dkd_weight: float = 0.0  # 1 (with ce_weight 1, kd_weight 0): the authors' DKD
    dkd_alpha: float = 1.0  # DKD's target-class (TCKD) weight
    dkd_beta: float = 8.0  # DKD's non-target (NCKD) weight; 6 for WRN-40-2 -> WRN-16-2
    dkd_warmup_epochs: int = 20  # the DKD term grows linearly over this many epochs
    cat_weight: float = 0.0  # weight of CAT-KD's term; 0 disables it
    cat_beta: float = 12.0  # CAT-KD's beta, compare.py's cat_kd weight: 12 (WRN pair), 15 (8x4)
    cat_size: int = 2  # class maps pooled to cat_size x cat_size (4 at ImageNet sizes)


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule, shared by the teacher and student stages."""

    name: str = "sgd"  # sgd (momentum, Nesterov) or adamw
    lr: float = 0.1  # initial learning rate
    momentum: float = 0.9  # SGD only
    nesterov: bool = True  # SGD only, with momentum > 0
    weight_decay: float = 5e-4  # not applied to biases and norm weights
    schedule: str = "multistep"  # per epoch: multistep, cosine or constant
    milestones: list[float] = field(default_factory=lambda: [0.3, 0.6, 0.8])  # fractions of epochs
    gamma: float = 0.2  # multistep: the factor at each milestone
    warmup_epochs: int = 0  # linear warm-up before the schedule


@dataclass
class TeacherCacheConfig:
    """The teacher's logits and maps, computed once per teacher, data and augmentation stream
    (``distill.TeacherCache``) and read back by every student trained on them."""

    enabled: bool = False  # train the student from the cache, without the teacher in the loop
    dir: str | None = None  # None: <output_dir>/teacher_cache; one sub-folder per key
    dtype: str = "float16"  # float32 (exact), float16 or bfloat16


@dataclass
class TrainerConfig:
    """Arguments passed to ``lightning.Trainer``."""

    accelerator: str = "auto"  # auto, cpu, gpu (cuda), mps
    devices: Any = 1  # devices per node: a number, a list of ids or auto
    num_nodes: int = 1  # machines (DDP across nodes)
    strategy: str = "auto"  # auto or ddp (one process per device)
    precision: str = "32-true"  # 32-true, 16-mixed (CUDA), bf16-mixed
    limit_train_batches: float = 1.0  # share (float) or number (int) of training batches per epoch
    limit_val_batches: float = 1.0  # the same for validation
    log_every_n_steps: int = 20  # how often training metrics are logged
    check_val_every_n_epoch: int = 1  # validate every N epochs (N must divide the epochs)
    deterministic: bool = False  # deterministic algorithms (bit-exact resumes on the CPU)
    enable_progress_bar: bool = True  # the progress bar on the terminal
    gradient_clip_val: float | None = None  # clip the gradient norm; None: no clipping
    sync_batchnorm: bool = False  # DDP: batch statistics over the global batch
    # torch.compile the networks of the training step: false, true (= "default") or a mode such
    # as "reduce-overhead" (CUDA graphs). Autograd Grad-CAM maps keep the student eager (warned;
    # see distill/training/compile.py).
    compile: bool | str = False
    # Convolution weights (and so activations) in channels-last memory format: faster
    # convolutions on CPUs (oneDNN) and on tensor-core GPUs; the values are unchanged.
    channels_last: bool = False


@dataclass
class LoggingConfig:
    """Where metrics and maps go."""

    wandb: str = "auto"  # auto: online when logged in, else offline
    project: str = "distill"  # wandb project
    group: str | None = None  # wandb group; None: the run directory's name (one per run)
    map_images: int = 8  # validation images whose maps are logged
    map_every_n_epochs: int = 5  # how often the maps are drawn
    # methods drawn side by side (names of distill.cam.CAM_METHODS; cam: pooled layer only)
    map_methods: list[str] = field(default_factory=lambda: ["gradcam_pp"])
    explanation_metrics: bool = False  # validation Average Drop, Increase in Confidence, Loc


@dataclass
class RunConfig:
    """A whole run: data, teacher, student, losses, optimisation, trainer, logging."""

    name: str = "run"  # the recipe's name: runs go to <output_dir>/<name>/<stamp>/
    seed: int = 0  # seeds initialisation (and the stream, unless data.augment_seed)
    stage: str = "all"  # all (teacher, then student), teacher or student
    output_dir: str = "runs"  # where run directories are created
    data: DataConfig = field(default_factory=DataConfig)
    teacher: ModelConfig = field(default_factory=lambda: ModelConfig(name="wrn_16_2"))
    student: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher_cache: TeacherCacheConfig = field(default_factory=TeacherCacheConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def stages_to_train(cfg: DictConfig) -> list[str]:
    """The stages a run trains: ``stage=all`` skips the teacher when ``teacher.checkpoint``
    names an existing file (it is loaded instead)."""
    if cfg.stage != "all":
        return [cfg.stage]
    teacher_present = bool(cfg.teacher.checkpoint) and Path(cfg.teacher.checkpoint).is_file()
    return ["student"] if teacher_present else ["teacher", "student"]
