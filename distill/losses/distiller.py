"""The importable distiller: CE + Hinton KD + explanation-map matching (+ attention transfer).

One module holds the frozen teacher, the student and every loss weight. Called with
``(images, labels)`` it runs one student forward and one teacher forward, captures the layers the
losses need during those passes, and returns the total loss, its parts and the logits. The
Lightning module and plain PyTorch loops both call this object.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.cam import (
    CAM_METHODS,
    CAM_RULES,
    PooledHead,
    capture_activations,
    pooled_head,
    resolve_layer,
    token_layout,
    tokens_to_grid,
    twice_differentiable,
)
from distill.losses.modules import AttentionTransferLoss, ExplanationMatchingLoss, KDLoss

__all__ = ["LayerPair", "DistillOutput", "ExplanationDistiller", "TeacherOutputs"]

MapTarget = Literal["label", "teacher"]
MAP_TARGETS: tuple[str, ...] = ("label", "teacher")


@dataclass(frozen=True)
class LayerPair:
    """A student layer matched to a teacher layer, with the weight of that pair's loss."""

    student: str
    teacher: str
    weight: float = 1.0


class DistillOutput(NamedTuple):
    """What one distillation step returns.

    Attributes:
        loss: the weighted total, with its graph (call ``.backward()`` on it).
        parts: detached unweighted parts: ``ce`` always, ``kd``/``map``/``at`` when used.
        logits: the student's logits (with graph).
        teacher_logits: the teacher's logits (no graph); ``None`` when nothing needed the
            teacher (no KD, maps or AT in this step), which is then not run.
        student_maps: detached student maps, one per map layer pair (empty when not computed).
        teacher_maps: teacher maps for the same pairs.
    """

    loss: Tensor
    parts: dict[str, Tensor]
    logits: Tensor
    teacher_logits: Tensor | None
    student_maps: tuple[Tensor, ...] = ()
    teacher_maps: tuple[Tensor, ...] = ()


class TeacherOutputs(NamedTuple):
    """What the distiller needs from the teacher for one batch, without the teacher.

    Computed live by :meth:`ExplanationDistiller.teacher_outputs`, or read back from a
    :class:`distill.TeacherCache` so that students train with no teacher in the loop.

    Attributes:
        logits: ``[B, K]`` teacher logits (no graph).
        maps: one ``[B, h, w]`` map per map layer pair, for the classes the distiller explains
            (empty when the step computes no maps).
    """

    logits: Tensor
    maps: tuple[Tensor, ...] = ()


def _as_pairs(
    pairs: Iterable[LayerPair | Sequence[object]] | None, default: LayerPair
) -> tuple[LayerPair, ...]:
    if pairs is None:
        return (default,)
    result = tuple(p if isinstance(p, LayerPair) else LayerPair(*p) for p in pairs)  # type: ignore[arg-type]
    if not result:
        raise ValueError("layer pairs must not be empty; leave them as None for the default")
    return result


class ExplanationDistiller(nn.Module):
    """Teacher -> student distillation with Grad-CAM(++) map matching.

    ``loss = ce_weight * CE(s, y) + kd_weight * KD(s, t) + map_weight * sum_pairs w * D(M_s, M_t)
    + at_weight * sum_pairs AT(F_s, F_t)``, where ``M`` are Grad-CAM++ (or Grad-CAM) maps for the
    ground-truth class (or the teacher's prediction) and ``D`` is the squared L2 distance of the
    paper by default (eq. 27-28, alpha = 0.01).

    The teacher is frozen (no parameter requires grad) and stays in eval mode even when
    ``.train()`` is called on the distiller. Teacher maps build no parameter graph. Student maps
    are differentiable with respect to the student's parameters whenever grad is enabled. At a
    layer that feeds global-average-pooling + linear (every built CNN's ``cam_layer``, and the
    token-average head of a vision transformer, with its norm) both maps use the closed form with
    no backward pass.

    Vision transformers (``build_model("vit_tiny_p4_32")``, torchvision ViT/Swin, ``timm/...``)
    can be the teacher, the student or both: their token activations are laid out as the
    patch grid from the model's own metadata, and maps of different grids (a CNN's 8x8 and a
    ViT's 14x14, say) are resized to the larger before the distance.

    Args:
        teacher: trained teacher network.
        student: network being trained.
        ce_weight: weight of cross-entropy with the labels. The defaults 0.1 (CE) and 0.9 (KD)
            at temperature 4 are KD as the field runs it (mdistiller, RepDistiller); for CE
            without KD set ``ce_weight=1.0, kd_weight=0``.
        kd_weight: weight of Hinton KD, whose KL term is scaled by ``temperature**2`` (0
            disables it).
        temperature: KD temperature.
        map_weight: weight of the map-matching loss (0 disables it during training).
        map_method: a name of :data:`distill.cam.CAM_METHODS` (``gradcam_pp``, ``gradcam``,
            ``xgradcam``, ``layercam``, ``hirescam``, ``gradcam_elementwise``, ``cam``,
            ``eigencam``). ``cam`` only at layers that feed the pooled head (refused elsewhere);
            ``eigencam`` is class-agnostic (``map_target`` does not change it).
        map_layers: ``(student_layer, teacher_layer, weight)`` pairs; default: the two models'
            ``cam_layer`` with weight 1.
        map_target: class the maps explain: ``label`` (ground truth, the paper) or ``teacher``
            (the teacher's prediction).
        map_normalize: per-sample map normalisation before the distance: none, l2, minmax.
        map_distance: squared_l2 (paper), mse, l1 or cosine.
        at_weight: weight of attention transfer (0 disables it).
        at_layers: ``(student_layer, teacher_layer)`` pairs for attention transfer; default: the
            ``cam_layer`` pair.
        at_p: exponent of the attention map.
        at_form: ``code`` (reference implementation) or ``paper``.
        map_closed_form: use the closed form where a layer feeds a pooled-linear head; False
            forces the autograd path everywhere (same maps, slower; for checks and benchmarks).

    Example:
        >>> import torch
        >>> from distill import ExplanationDistiller, build_model
        >>> distiller = ExplanationDistiller(build_model("wrn_16_1", 10), build_model("wrn_16_1", 10))
        >>> out = distiller(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
        >>> sorted(out.parts)
        ['ce', 'kd', 'map']
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        *,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        temperature: float = 4.0,
        map_weight: float = 0.01,
        map_method: str = "gradcam_pp",
        map_layers: Iterable[LayerPair | Sequence[object]] | None = None,
        map_target: MapTarget = "label",
        map_normalize: str = "none",
        map_distance: str = "squared_l2",
        at_weight: float = 0.0,
        at_layers: Iterable[LayerPair | Sequence[object]] | None = None,
        at_p: float = 2.0,
        at_form: str = "code",
        map_closed_form: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (
            ("ce_weight", ce_weight),
            ("kd_weight", kd_weight),
            ("map_weight", map_weight),
            ("at_weight", at_weight),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if map_method not in CAM_METHODS:
            raise ValueError(f"map_method must be one of {tuple(CAM_METHODS)}, got {map_method!r}")
        if map_target not in MAP_TARGETS:
            raise ValueError(f"map_target must be one of {MAP_TARGETS}, got {map_target!r}")
        self.teacher = teacher
        self.student = student
        self.ce_weight = float(ce_weight)
        self.kd_weight = float(kd_weight)
        self.map_weight = float(map_weight)
        self.at_weight = float(at_weight)
        self.map_method = map_method
        self.map_target = map_target
        self.map_closed_form = bool(map_closed_form)
        self.kd = KDLoss(temperature)
        self.map_loss = ExplanationMatchingLoss(map_normalize, map_distance)  # type: ignore[arg-type]
        self.at_loss = AttentionTransferLoss(at_p, at_form)  # type: ignore[arg-type]
        default_pair = LayerPair(
            self._cam_layer(student, "student"), self._cam_layer(teacher, "teacher")
        )
        self.map_layers = _as_pairs(map_layers, default_pair)
        self.at_layers = _as_pairs(at_layers, default_pair)
        for pair in self.map_layers + self.at_layers:
            resolve_layer(student, pair.student)
            resolve_layer(teacher, pair.teacher)
        if CAM_RULES[map_method].gradient == "classifier":
            self._check_pooled_layers(map_method)
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    def _check_pooled_layers(self, map_method: str) -> None:
        """CAM exists only at a layer that feeds the pooled linear head: refuse other layers."""
        for pair in self.map_layers:
            for role, model, layer in (
                ("student", self.student, pair.student),
                ("teacher", self.teacher, pair.teacher),
            ):
                if self._head(model, layer) is None:
                    reason = (
                        "map_closed_form is off"
                        if not self.map_closed_form
                        else f"its layer {layer!r} does not feed its pooled linear head"
                    )
                    raise ValueError(
                        f"map_method={map_method!r} needs the {role}'s pooled-head layer, but "
                        f"{reason}: use another method or map the pooled layer"
                    )

    @staticmethod
    def _cam_layer(model: nn.Module, role: str) -> str:
        layer = getattr(model, "cam_layer", None)
        if not isinstance(layer, str):
            raise ValueError(
                f"the {role} ({type(model).__name__}) has no cam_layer attribute: "
                "pass map_layers explicitly or build it with distill.models.build_model"
            )
        return layer

    def train(self, mode: bool = True) -> ExplanationDistiller:
        """Set the student's mode; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

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

    @property
    def loss_terms(self) -> tuple[str, ...]:
        """The names of the unweighted parts a training step returns: ``ce``, then ``kd``,
        ``map`` and ``at`` where their weight is positive."""
        weights = {"kd": self.kd_weight, "map": self.map_weight, "at": self.at_weight}
        return ("ce", *(name for name, weight in weights.items() if weight > 0))

    @property
    def student_maps_need_grad(self) -> bool:
        """Whether student maps need autograd (then run under ``torch.enable_grad()``, also in
        validation); False when every student map layer has the closed form."""
        return any(self._map_needs_autograd(self.student, p.student) for p in self.map_layers)

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

    def forward(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        return_maps: bool = False,
        teacher: TeacherOutputs | None = None,
    ) -> DistillOutput:
        """One distillation step's losses.

        Args:
            images: ``[B, 3, H, W]`` input batch.
            labels: ``[B]`` ground-truth class ids.
            return_maps: compute the maps even when ``map_weight`` is 0 (for monitoring).
            teacher: the teacher's outputs for this batch (e.g. from a
                :class:`distill.TeacherCache`); the teacher network is then not run.
        """
        with_maps = self.map_weight > 0 or return_maps
        with_at = self.at_weight > 0
        student_layers = [p.student for p in self.map_layers if with_maps]
        student_layers += [p.student for p in self.at_layers if with_at]

        image_size = (images.shape[-2], images.shape[-1])
        create_graph = with_maps and torch.is_grad_enabled() and self.map_weight > 0
        # Autograd maps trained on need a twice-differentiable attention kernel (transformers).
        double_backward = create_graph and self.student_maps_need_grad
        with (
            capture_activations(self.student, student_layers) as student_acts,
            twice_differentiable(double_backward),
        ):
            logits = self.student(images)
        ce = F.cross_entropy(logits, labels)
        loss = self.ce_weight * ce
        parts = {"ce": ce.detach()}
        if not (self.kd_weight > 0 or with_maps or with_at):
            # A CE-only step: running the teacher would cost a forward for nothing.
            return DistillOutput(loss, parts, logits, None)

        teacher_acts: dict[str, Tensor] = {}  # filled by a live teacher run
        if teacher is None:
            teacher, teacher_acts = self._run_teacher(images, labels, with_maps, with_at)
        else:
            self._check_cached(teacher, with_maps, with_at)
        teacher_logits = teacher.logits
        if teacher_logits.shape != logits.shape:
            raise ValueError(
                f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                f"{tuple(logits.shape)} differ: the two models must predict the same classes"
            )

        if self.kd_weight > 0:
            kd = self.kd(logits, teacher_logits)
            loss = loss + self.kd_weight * kd
            parts["kd"] = kd.detach()

        student_maps: list[Tensor] = []
        if with_maps:
            targets = self._map_targets(labels, teacher_logits)
            map_loss = logits.new_zeros((), dtype=torch.float32)
            for pair, t_map in zip(self.map_layers, teacher.maps, strict=True):
                s_map = self._maps(
                    self.student,
                    pair.student,
                    student_acts[pair.student],
                    logits,
                    targets,
                    create_graph,
                    image_size,
                )
                map_loss = map_loss + pair.weight * self.map_loss(s_map, t_map)
                student_maps.append(s_map.detach())
            if self.map_weight > 0:
                loss = loss + self.map_weight * map_loss
            parts["map"] = map_loss.detach()

        if with_at:
            student_layout = token_layout(self.student, image_size)
            teacher_layout = token_layout(self.teacher, image_size)
            at_loss = sum(
                self.at_loss(
                    tokens_to_grid(student_acts[p.student], student_layout),
                    tokens_to_grid(teacher_acts[p.teacher].detach(), teacher_layout),
                )
                for p in self.at_layers
            )
            loss = loss + self.at_weight * at_loss
            parts["at"] = at_loss.detach()  # type: ignore[union-attr]

        return DistillOutput(loss, parts, logits, teacher_logits, tuple(student_maps), teacher.maps)

    def _map_targets(self, labels: Tensor, teacher_logits: Tensor) -> Tensor:
        return labels if self.map_target == "label" else teacher_logits.argmax(dim=1)

    def _run_teacher(
        self, images: Tensor, labels: Tensor, with_maps: bool, with_at: bool
    ) -> tuple[TeacherOutputs, dict[str, Tensor]]:
        """The teacher's forward: its outputs and the activations attention transfer needs."""
        layers = [p.teacher for p in self.map_layers if with_maps]
        layers += [p.teacher for p in self.at_layers if with_at]
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
        return TeacherOutputs(logits, tuple(maps)), acts

    def teacher_outputs(
        self, images: Tensor, labels: Tensor, with_maps: bool = True
    ) -> TeacherOutputs:
        """The teacher's logits (and maps) for a batch, as a training step would use them.

        This is what :class:`distill.TeacherCache` stores: ``forward(..., teacher=outputs)``
        with the result gives the same losses as a live step on the same batch. The maps are
        computed even when ``map_weight`` is 0, so that students with and without the map loss
        can share one cache.
        """
        outputs, _ = self._run_teacher(images, labels, with_maps=with_maps, with_at=False)
        return outputs

    def _check_cached(self, teacher: TeacherOutputs, with_maps: bool, with_at: bool) -> None:
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

    def extra_repr(self) -> str:
        return (
            f"ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, map_weight={self.map_weight}, "
            f"map_method={self.map_method!r}, map_target={self.map_target!r}, "
            f"map_layers={list(self.map_layers)}, at_weight={self.at_weight}"
        )
