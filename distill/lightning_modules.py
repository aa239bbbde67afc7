"""Lightning wiring: a classifier (teachers, CE baselines) and a distillation module.

The modules hold metrics, logging and the optimizer only; the losses are the importable
:class:`distill.ExplanationDistiller`, not a copy of it.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from distill.cam import GradCAMPlusPlus, resize_maps
from distill.losses import ExplanationDistiller
from distill.metrics import (
    AverageDrop,
    EnergyPointingGame,
    IncreaseInConfidence,
    Localization,
    MapAgreement,
    TopOneAgreement,
    explanation_confidences,
)
from distill.models import build_model
from distill.optim import build_optimizer, build_scheduler, param_groups

__all__ = ["ClassifierModule", "DistillModule", "load_classifier", "CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the expected model."""


class _ClassificationModule(L.LightningModule):
    """Shared metrics, optimizer and logging; subclasses define ``model_step``."""

    def __init__(
        self,
        num_classes: int,
        optim: dict[str, Any],
        epochs: int,
        explanation_metrics: bool = False,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        # Faithfulness (and, with boxes in the batches, localisation) of the trained network's
        # Grad-CAM++ maps for its predicted class: two extra forwards per batch, so off by default.
        self.explanation_metrics = explanation_metrics
        self._mean, self._std = mean, std
        if explanation_metrics:
            self.val_average_drop = AverageDrop()
            self.val_increase = IncreaseInConfidence()
            self.val_localization = Localization(delta=0.5, image_size=None)
            self.val_energy_pointing = EnergyPointingGame(image_size=None)
        top5 = min(5, num_classes)
        self.train_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.val_loss = MeanMetric()
        self.val_acc_best = MaxMetric()

    def trainable(self) -> nn.Module:
        raise NotImplementedError

    def model_step(self, images: Tensor, labels: Tensor, stage: str) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        best = checkpoint.get("val_acc_best", float("-inf"))
        self.val_acc_best.reset()
        if best > float("-inf"):
            self.val_acc_best.update(torch.tensor(best))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch[0], batch[1]
        loss, logits = self.model_step(images, labels, "train")
        self.train_acc(logits, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch[0], batch[1]
        loss, logits = self.model_step(images, labels, "val")
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
        predicted = model(images).argmax(1)
        maps = GradCAMPlusPlus(model)(images, predicted)
        y, o = explanation_confidences(
            model, images, maps, predicted, mean=self._mean, std=self._std
        )
        self.val_average_drop(y, o)
        self.val_increase(y, o)
        self.log("val/average_drop", self.val_average_drop, on_step=False, on_epoch=True)
        self.log("val/increase_in_confidence", self.val_increase, on_step=False, on_epoch=True)
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
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)
        self.log("test/acc5", self.test_acc5, on_step=False, on_epoch=True)

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
    """

    def __init__(
        self,
        model: nn.Module,
        model_name: str,
        num_classes: int,
        optim: dict[str, Any],
        epochs: int,
        model_kwargs: dict[str, Any] | None = None,
        **metric_options: Any,
    ) -> None:
        super().__init__(num_classes, optim, epochs, **metric_options)
        self.save_hyperparameters(ignore=["model"])
        self.model = model

    def trainable(self) -> nn.Module:
        return self.model

    def explained_models(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def model_step(self, images: Tensor, labels: Tensor, stage: str) -> tuple[Tensor, Tensor]:
        logits = self.model(images)
        return F.cross_entropy(logits, labels), logits


class DistillModule(_ClassificationModule):
    """Student training with :class:`distill.ExplanationDistiller` (teacher frozen, in eval).

    Validation also measures teacher-student top-1 agreement and the cosine similarity of their
    Grad-CAM++ maps, which needs gradients unless the maps have a closed form: run it with
    ``Trainer(inference_mode=False)``.
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
        **metric_options: Any,
    ) -> None:
        super().__init__(num_classes, optim, epochs, **metric_options)
        self.save_hyperparameters(ignore=["distiller"])
        self.distiller = distiller
        self.val_agreement = TopOneAgreement()
        self.val_map_similarity = MapAgreement()
        self.val_teacher_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")

    def trainable(self) -> nn.Module:
        return self.distiller.student

    def explained_models(self) -> dict[str, nn.Module]:
        return {"teacher": self.distiller.teacher, "student": self.distiller.student}

    def model_step(self, images: Tensor, labels: Tensor, stage: str) -> tuple[Tensor, Tensor]:
        if stage == "train":
            out = self.distiller(images, labels)
            for name, value in out.parts.items():
                self.log(f"train/{name}", value, on_step=True, on_epoch=True)
            return out.loss, out.logits
        grad = torch.enable_grad() if self.distiller.student_maps_need_grad else nullcontext()
        with grad:
            out = self.distiller(images, labels, return_maps=(stage == "val"))
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


def load_classifier(
    path: str | Path,
    *,
    expected_name: str | None = None,
    expected_classes: int | None = None,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild the network saved in a :class:`ClassifierModule` checkpoint.

    Raises:
        CheckpointError: the file is missing or unreadable, or its architecture or class count
            differs from the expected one; the message names the file and the mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"teacher checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        raise CheckpointError(
            f"teacher checkpoint {path} cannot be read ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'truncated or corrupt'})"
        ) from None
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if "model_name" not in hparams or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a classifier checkpoint written by this toolkit "
            "(no model_name hyperparameter or state_dict)"
        )
    name, classes = hparams["model_name"], int(hparams["num_classes"])
    if expected_name is not None and name != expected_name:
        raise CheckpointError(
            f"{path} holds a {name} but the config asks for {expected_name}: "
            f"set teacher.name={name} or point teacher.checkpoint at a {expected_name}"
        )
    if expected_classes is not None and classes != expected_classes:
        raise CheckpointError(
            f"{path} was trained for {classes} classes but the data has {expected_classes}"
        )
    model = build_model(name, num_classes=classes, **dict(hparams.get("model_kwargs") or {}))
    state = {
        key.removeprefix("model."): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith("model.")
    }
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"{path}: weights do not fit {name}: {str(error).splitlines()[0]}"
        ) from None
    return model
