"""What the distiller takes and returns: layer pairs, a step's output, the teacher's outputs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

__all__ = ["LayerPair", "DistillOutput", "TeacherOutputs", "as_pairs"]


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
        parts: detached unweighted parts: ``ce`` always, then those of
            :attr:`ExplanationDistiller.loss_terms` (and ``map`` with ``return_maps``).
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
        class_maps: ``[B, K, s, s]`` class activation maps average-pooled to CAT-KD's size
            (None when the distiller has no CAT term).
    """

    logits: Tensor
    maps: tuple[Tensor, ...] = ()
    class_maps: Tensor | None = None


def as_pairs(
    pairs: Iterable[LayerPair | Sequence[object]] | None, default: LayerPair
) -> tuple[LayerPair, ...]:
    if pairs is None:
        return (default,)
    result = tuple(p if isinstance(p, LayerPair) else LayerPair(*p) for p in pairs)  # type: ignore[arg-type]
    if not result:
        raise ValueError("layer pairs must not be empty; leave them as None for the default")
    return result
