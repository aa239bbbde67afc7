"""Lightning wiring: a classifier (teachers, CE baselines) and a distillation module.

The modules hold metrics, logging and the optimizer only; the losses are the importable
:class:`distill.ExplanationDistiller`, not a copy of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from distill.cam import GradCAMPlusPlus, resize_maps
from distill.losses import ExplanationDistiller, TeacherOutputs
from distill.metrics import (
    AverageDrop,
    DeletionAUC,
    EnergyPointingGame,
    IncreaseInConfidence,
    Localization,
    MapAgreement,
    TopOneAgreement,
    explanation_confidences,
)
from distill.training.checkpoints import CheckpointError, load_classifier, weights_sha256
from distill.training.optim import build_optimizer, build_scheduler, param_groups
from distill.training.teacher_cache import TeacherCache

__all__ = ["ClassifierModule", "DistillModule", "load_classifier", "CheckpointError"]

TEACHER_PREFIX = "distiller.teacher."
"""State-dict prefix of the teacher, which student checkpoints leave out."""


class _ClassificationModule(L.LightningModule):
    """Shared metrics, optimizer and logging; subclasses define ``model_step``.

    Args:
        num_classes: number of classes.
        optim: the ``optim`` config section.
        epochs: length of the schedule.
        explanation_metrics: log faithfulness (and localisation) of the maps at validation.
        mean, std: the input normalisation (explanation metrics undo it; inference needs it).
        classes: class names, index = label.
        image_size: ``(H, W)`` of the training images.
        crop: the data's training crop (``pad`` or ``random_resized``): it says how evaluation
            resizes new images (stretch, or resize then center-crop).

    The last five are saved as hyperparameters so that :func:`distill.load_model` can hand
    them to inference code.
    """

    def __init__(
        self,
        num_classes: int,
        optim: dict[str, Any],
        epochs: int,
        explanation_metrics: bool = False,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        classes: Sequence[str] | None = None,
        image_size: tuple[int, int] | None = None,
        crop: str | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        # Faithfulness (and, with boxes in the batches, localisation) of the trained network's
        # Grad-CAM++ maps for its predicted class: two extra forwards per batch (and twenty for
        # the deletion AUC), so off by default.
        self.explanation_metrics = explanation_metrics
        self._mean, self._std = mean, std
        if explanation_metrics:
            self.val_average_drop = AverageDrop()
            self.val_increase = IncreaseInConfidence()
            self.val_deletion = DeletionAUC()
            self.val_localization = Localization(delta=0.5, image_size=None)
            self.val_energy_pointing = EnergyPointingGame(image_size=None)
        top5 = min(5, num_classes)
        self.train_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        # Epoch means of the training losses as metrics: under DDP they are reduced over the
        # processes once per epoch, not all-reduced at every step.
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        # "test": the checkpoint the protocol selects; "test_last": the last epoch's weights,
        # tested beside it so that a table can report both.
        self.test_prefix = "test"

    def trainable(self) -> nn.Module:
        raise NotImplementedError

    def model_step(
        self, images: Tensor, labels: Tensor, stage: str, teacher: TeacherOutputs | None = None
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def cached_teacher(self, batch: tuple[Tensor, ...]) -> TeacherOutputs | None:
        """The teacher's outputs carried by a training batch (a teacher cache), if any."""
        return None

    def cached_val_teacher(
        self, batch: tuple[Tensor, ...]
    ) -> tuple[tuple[Tensor, ...], TeacherOutputs | None]:
        """A validation batch without the cached teacher rows it carries, and those rows as
        teacher outputs (``None`` when the teacher runs live)."""
        return batch, None

    def on_train_start(self) -> None:
        # Drop what the sanity check accumulated. ``val_acc_best`` is left alone: the sanity
        # check never updates it, and a resumed run has just restored it.
        self.val_loss.reset()
        self.val_acc.reset()

    def on_train_epoch_start(self) -> None:
        # A run resumed from a checkpoint written at an epoch's end does not get that epoch's
        # scheduler step from Lightning: catch up, so the learning rate is a function of the
        # epoch whether or not the run was interrupted.
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == "epoch":
                while config.scheduler.last_epoch < self.current_epoch:
                    config.scheduler.step()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["val_acc_best"] = float(self.val_acc_best.max_value)

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, in one line, a checkpoint this module cannot continue from (a resume checks
        this before it touches the run's files)."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint(checkpoint)
        best = checkpoint.get("val_acc_best", float("-inf"))
        self.val_acc_best.reset()
        if best > float("-inf"):
            self.val_acc_best.update(torch.tensor(best))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch[0], batch[1]
        loss, logits = self.model_step(images, labels, "train", self.cached_teacher(batch))
        self.train_acc(logits, labels)
        self.train_loss(loss.detach(), len(labels))  # weighted by samples, as Lightning does
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        batch, teacher = self.cached_val_teacher(batch)
        images, labels = batch[0], batch[1]
        loss, logits = self.model_step(images, labels, "val", teacher)
        self.val_loss(loss)
        self.val_acc(logits, labels)
        self.val_acc5(logits, labels)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc5", self.val_acc5, on_step=False, on_epoch=True)
        if self.explanation_metrics:
            self._log_explanation_metrics(batch)

    def _log_explanation_metrics(self, batch: tuple[Tensor, ...]) -> None:
        images = batch[0]
        model = self.trainable()
        maps, scores = GradCAMPlusPlus(model).maps_and_scores(images)  # the predicted class
        predicted = scores.argmax(1)
        y, o = explanation_confidences(
            model, images, maps, predicted, mean=self._mean, std=self._std
        )
        self.val_average_drop(y, o)
        self.val_increase(y, o)
        self.val_deletion.update(model, images, maps, predicted, logits=scores)
        self.log("val/average_drop", self.val_average_drop, on_step=False, on_epoch=True)
        self.log("val/increase_in_confidence", self.val_increase, on_step=False, on_epoch=True)
        self.log("val/deletion_auc", self.val_deletion, on_step=False, on_epoch=True)
        if len(batch) > 2:  # boxes (shapes with return_boxes)
            upsampled = resize_maps(maps, images.shape[-2:])
            self.val_localization(upsampled, batch[2])
            self.val_energy_pointing(upsampled, batch[2])
            self.log("val/localization", self.val_localization, on_step=False, on_epoch=True)
            self.log("val/energy_pointing", self.val_energy_pointing, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a few batches of an untrained model: not a result
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch[0], batch[1]
        _, logits = self.model_step(images, labels, "test")
        self.test_acc(logits, labels)
        self.test_acc5(logits, labels)
        prefix = self.test_prefix
        self.log(f"{prefix}/acc", self.test_acc, on_step=False, on_epoch=True)
        self.log(f"{prefix}/acc5", self.test_acc5, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = SimpleNamespace(**self.hparams.optim)
        optimizer = build_optimizer(param_groups(self.trainable(), cfg.weight_decay), cfg)
        scheduler = build_scheduler(optimizer, cfg, self.hparams.epochs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


class ClassifierModule(_ClassificationModule):
    """Cross-entropy training of one network: teachers and the CE baseline.

    Args:
        model: the network (rebuilt from ``model_name``/``model_kwargs`` when loading).
        model_name: its :func:`distill.models.build_model` name, saved for checkpoint checks.
        num_classes: number of classes.
        optim: the ``optim`` config section.
        epochs: length of the schedule.
        model_kwargs: extra ``build_model`` keyword arguments.
        **options: ``explanation_metrics``, ``mean``, ``std``, ``classes``, ``image_size``
            (see ``_ClassificationModule``).
    """

    def __init__(
        self,
        model: nn.Module,
        model_name: str,
        num_classes: int,
        optim: dict[str, Any],
        epochs: int,
        model_kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(num_classes, optim, epochs, **options)
        self.save_hyperparameters(ignore=["model"])
        self.model = model

    def trainable(self) -> nn.Module:
        return self.model

    def explained_models(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def model_step(
        self, images: Tensor, labels: Tensor, stage: str, teacher: TeacherOutputs | None = None
    ) -> tuple[Tensor, Tensor]:
        logits = self.model(images)
        return F.cross_entropy(logits, labels), logits


class DistillModule(_ClassificationModule):
    """Student training with :class:`distill.ExplanationDistiller` (teacher frozen, in eval).

    Validation also measures teacher-student top-1 agreement and the cosine similarity of their
    Grad-CAM++ maps, which needs gradients unless the maps have a closed form: run it with
    ``Trainer(inference_mode=False)``.

    Checkpoints hold the student only: the teacher has a file of its own, so its tensors are
    left out and ``checkpoint["teacher"]`` records ``{"path", "sha256", "name"}`` instead.
    Loading such a checkpoint (resume, test) keeps the teacher this module was built with,
    after checking that its weights are the ones the student was distilled from.

    Args:
        distiller: the losses, holding the teacher and the student.
        num_classes, optim, epochs: as :class:`ClassifierModule`.
        student_name, teacher_name: the ``build_model`` names of the two networks.
        model_kwargs: extra ``build_model`` keyword arguments of the student.
        teacher_path: the teacher's checkpoint, recorded in the student's checkpoints.
        teacher_cache: read the teacher's training outputs from this cache (the datamodule
            appends them to each training batch, see ``attach_teacher_cache``) instead of
            running the teacher.
        val_teacher_cache: the same for validation batches (one pass over the validation
            split, whose transforms are deterministic). Testing never runs the teacher.
        **options: ``explanation_metrics``, ``mean``, ``std``, ``classes``, ``image_size``.
    """

    def __init__(
        self,
        distiller: ExplanationDistiller,
        num_classes: int,
        optim: dict[str, Any],
        epochs: int,
        student_name: str = "",
        teacher_name: str = "",
        model_kwargs: dict[str, Any] | None = None,
        teacher_path: str | None = None,
        teacher_cache: TeacherCache | None = None,
        val_teacher_cache: TeacherCache | None = None,
        **options: Any,
    ) -> None:
        super().__init__(num_classes, optim, epochs, **options)
        self.save_hyperparameters(ignore=["distiller", "teacher_cache", "val_teacher_cache"])
        self.distiller = distiller
        self.teacher_cache = teacher_cache
        self.val_teacher_cache = val_teacher_cache
        # Hashed once, as loaded: the teacher is frozen, so this is what every checkpoint records.
        self.teacher_sha256 = weights_sha256(distiller.teacher)
        self.val_agreement = TopOneAgreement()
        self.val_map_similarity = MapAgreement()
        self.val_teacher_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.train_parts = nn.ModuleDict({name: MeanMetric() for name in distiller.loss_terms})

    def trainable(self) -> nn.Module:
        return self.distiller.student

    def explained_models(self) -> dict[str, nn.Module]:
        return {"teacher": self.distiller.teacher, "student": self.distiller.student}

    def cached_teacher(self, batch: tuple[Tensor, ...]) -> TeacherOutputs | None:
        return None if self.teacher_cache is None else self.teacher_cache.unpack(batch[-1])

    def cached_val_teacher(
        self, batch: tuple[Tensor, ...]
    ) -> tuple[tuple[Tensor, ...], TeacherOutputs | None]:
        if self.val_teacher_cache is None:
            return batch, None
        return batch[:-1], self.val_teacher_cache.unpack(batch[-1])

    def model_step(
        self, images: Tensor, labels: Tensor, stage: str, teacher: TeacherOutputs | None = None
    ) -> tuple[Tensor, Tensor]:
        if stage == "train":
            out = self.distiller(images, labels, teacher=teacher, epoch=self.current_epoch)
            for name, value in out.parts.items():
                part = self.train_parts[name]
                part(value, len(labels))
                self.log(f"train/{name}", part, on_step=True, on_epoch=True)
            return out.loss, out.logits
        if stage == "test":  # only the student's accuracy is tested: the teacher is not run
            logits = self.distiller.student(images)
            return F.cross_entropy(logits, labels).detach(), logits.detach()
        grad = torch.enable_grad() if self.distiller.student_maps_need_grad else nullcontext()
        with grad:
            out = self.distiller(
                images, labels, return_maps=True, teacher=teacher, epoch=self.current_epoch
            )
        if stage == "val":
            self.val_agreement(out.logits, out.teacher_logits)
            self.val_map_similarity(out.student_maps[0], out.teacher_maps[0])
            self.val_teacher_acc(out.teacher_logits, labels)
            self.log(
                "val/agreement", self.val_agreement, on_step=False, on_epoch=True, prog_bar=True
            )
            self.log("val/map_similarity", self.val_map_similarity, on_step=False, on_epoch=True)
            self.log("val/teacher_acc", self.val_teacher_acc, on_step=False, on_epoch=True)
            for name, value in out.parts.items():
                self.log(f"val/{name}", value, on_step=False, on_epoch=True, sync_dist=True)
        return out.loss.detach(), out.logits.detach()

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.distiller.teacher.eval()  # Lightning calls .train() on the whole module

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]
        checkpoint["teacher"] = {
            "path": self.hparams.teacher_path,
            "sha256": self.teacher_sha256,
            "name": self.hparams.teacher_name,
        }

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        recorded = checkpoint.get("teacher")
        if recorded is not None and recorded["sha256"] != self.teacher_sha256:
            raise CheckpointError(
                f"the teacher changed since this student checkpoint was written: it was distilled "
                f"from {recorded['path']} with weights sha256 {recorded['sha256']}, but the "
                f"teacher loaded now ({self.hparams.teacher_path}) has sha256 "
                f"{self.teacher_sha256}; restore that teacher file or start a new run"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # checks the teacher
        if checkpoint.get("teacher") is None:  # an older checkpoint that holds the teacher
            return
        # Verified identical: put the teacher's own tensors back so loading stays strict.
        teacher = self.distiller.teacher.state_dict()
        checkpoint["state_dict"].update({TEACHER_PREFIX + k: v for k, v in teacher.items()})
