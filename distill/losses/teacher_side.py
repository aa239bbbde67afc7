"""The teacher's side of a distillation step: its forward, its maps and class maps, and the
check of cached outputs. A base of :class:`distill.ExplanationDistiller`, which sets the
attributes declared here; kept apart so that the distiller reads as the sum of its terms."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from distill.cam import (
    CAM_METHODS,
    CAM_RULES,
    PooledHead,
    capture_activations,
    pooled_head,
    token_layout,
)
from distill.losses.cat import pooled_class_maps
from distill.losses.outputs import LayerPair, TeacherOutputs

__all__ = ["TeacherSide"]


class TeacherSide(nn.Module):
    """Teacher outputs (live or cached) and the map helpers both models share."""

    teacher: nn.Module
    map_layers: tuple[LayerPair, ...]
    at_layers: tuple[LayerPair, ...]
    cat_layers: LayerPair | None
    map_method: str
    map_target: str
    map_closed_form: bool
    cat_weight: float
    cat_size: int

    def _head(self, model: nn.Module, layer: str) -> PooledHead | None:
        """The pooled head that enables the closed form at ``layer``, if any."""
        return pooled_head(model, layer) if self.map_closed_form else None

    def _map_needs_autograd(self, model: nn.Module, layer: str) -> bool:
        """A method that uses the score's gradient, at a layer without the closed form."""
        return CAM_RULES[self.map_method].gradient == "score" and self._head(model, layer) is None

    def _teacher_needs_autograd(self, with_maps: bool) -> bool:
        return with_maps and any(
            self._map_needs_autograd(self.teacher, pair.teacher) for pair in self.map_layers
        )

    def _maps(
        self,
        model: nn.Module,
        layer: str,
        activations: Tensor,
        scores: Tensor,
        targets: Tensor,
        create_graph: bool,
        image_size: tuple[int, int],
    ) -> Tensor:
        head = self._head(model, layer)
        return CAM_METHODS[self.map_method](
            activations,
            scores,
            targets,
            create_graph=create_graph,
            classifier_weight=head.classifier.weight if head is not None else None,
            head_norm=head.norm if head is not None else None,
            layout=token_layout(model, image_size),
        )

    def _map_targets(self, labels: Tensor, teacher_logits: Tensor) -> Tensor:
        return labels if self.map_target == "label" else teacher_logits.argmax(dim=1)

    def _run_teacher(
        self, images: Tensor, labels: Tensor, with_maps: bool, with_at: bool, with_cat: bool
    ) -> tuple[TeacherOutputs, dict[str, Tensor]]:
        """The teacher's forward: its outputs and the activations attention transfer needs."""
        layers = [p.teacher for p in self.map_layers if with_maps]
        layers += [p.teacher for p in self.at_layers if with_at]
        layers += [self.cat_layers.teacher] if with_cat else []
        autograd = self._teacher_needs_autograd(with_maps)
        with (
            capture_activations(self.teacher, layers, detach=autograd) as acts,
            torch.enable_grad() if autograd else torch.no_grad(),
        ):
            scores = self.teacher(images)
        logits = scores.detach()
        maps: list[Tensor] = []
        if with_maps:
            targets = self._map_targets(labels, logits)
            with nullcontext() if autograd else torch.no_grad():
                image_size = (images.shape[-2], images.shape[-1])
                for pair in self.map_layers:
                    layer_maps = self._maps(
                        self.teacher,
                        pair.teacher,
                        acts[pair.teacher],
                        scores,
                        targets,
                        False,
                        image_size,
                    )
                    maps.append(layer_maps.detach())
        class_maps = None
        if with_cat:
            with torch.no_grad():
                class_maps = pooled_class_maps(
                    self.teacher,
                    acts[self.cat_layers.teacher],
                    (images.shape[-2], images.shape[-1]),
                    self.cat_size,
                )
        return TeacherOutputs(logits, tuple(maps), class_maps), acts

    def teacher_outputs(
        self, images: Tensor, labels: Tensor, with_maps: bool = True
    ) -> TeacherOutputs:
        """The teacher's logits (and maps) for a batch, as a training step would use them.

        This is what :class:`distill.TeacherCache` stores: ``forward(..., teacher=outputs)``
        with the result gives the same losses as a live step on the same batch. The maps are
        computed even when ``map_weight`` is 0, so that students with and without the map loss
        can share one cache; the pooled class maps only when the distiller has a CAT term.
        """
        outputs, _ = self._run_teacher(
            images, labels, with_maps=with_maps, with_at=False, with_cat=self.cat_weight > 0
        )
        return outputs

    def _check_cached(
        self, teacher: TeacherOutputs, with_maps: bool, with_at: bool, with_cat: bool
    ) -> None:
        if with_cat and teacher.class_maps is None:
            raise ValueError(
                "CAT-KD needs the teacher's class activation maps, which these cached teacher "
                "outputs do not hold: rebuild the cache with a distiller that has cat_weight > 0"
            )
        if with_at:
            raise ValueError(
                "attention transfer needs the teacher's features, which cached teacher outputs do "
                "not hold: set at_weight=0 or run the teacher live"
            )
        if with_maps and len(teacher.maps) != len(self.map_layers):
            raise ValueError(
                f"the cached teacher outputs hold {len(teacher.maps)} map(s) but the distiller "
                f"matches {len(self.map_layers)} layer pair(s); rebuild the cache with "
                "this distiller's map settings"
            )
