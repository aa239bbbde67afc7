"""``torch.compile`` for the training step (``trainer.compile``).

What is compiled is the networks: the student (its forward, and through AOTAutograd its
backward) and the frozen teacher's no-grad forward. The losses stay eager: they are a few
elementwise operations on ``[B, classes]`` and ``[B, h, w]`` tensors, and compiling the
distiller's ``forward`` as a whole breaks the graph at every activation hook anyway.

Grad-CAM(++) maps through autograd (``loss.map_closed_form=false``, or a map layer that does not
feed the pooled-linear head) cannot run on a compiled student: the maps differentiate the scores
with respect to an activation captured *inside* the compiled graph, which autograd sees as an
output of one opaque node, not as something the scores depend on; and AOTAutograd has no double
backward for the ``create_graph=True`` the map loss needs. In that case the student stays eager,
only the teacher is compiled, and a warning says so (at config load and when compiling). The
closed form (the default at every built model's ``cam_layer``) needs neither and compiles fully.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from distill.cam import pooled_linear_classifier

__all__ = [
    "COMPILE_MODES",
    "compile_classifier",
    "compile_distiller",
    "compile_mode",
    "is_compiled",
    "student_eager_reason",
]

COMPILE_MODES: tuple[bool | str, ...] = (
    False,
    True,
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)
"""Values of ``trainer.compile``: off, on (``default``), or a ``torch.compile`` mode.
``reduce-overhead`` records CUDA graphs, for small networks whose step is launch-bound."""


def compile_mode(value: bool | str) -> str | None:
    """The ``torch.compile`` mode a ``trainer.compile`` value asks for; None: do not compile.

    Example:
        >>> compile_mode(False), compile_mode(True), compile_mode("reduce-overhead")
        (None, 'default', 'reduce-overhead')
    """
    if value not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {value!r}")
    if value is False:
        return None
    return "default" if value is True else str(value)


def student_eager_reason(
    student: nn.Module,
    student_layers: list[str],
    *,
    map_closed_form: bool,
) -> str | None:
    """Why the student cannot be compiled, or None when it can.

    Validation computes the maps even when the map loss's weight is 0 (map similarity), so any
    student map layer without the closed form keeps the student eager.

    Args:
        student: the student network (a meta-device copy is enough).
        student_layers: the student side of the map layer pairs.
        map_closed_form: whether the closed form is allowed (``loss.map_closed_form``).
    """
    autograd = [
        layer
        for layer in student_layers
        if not map_closed_form or pooled_linear_classifier(student, layer) is None
    ]
    if not autograd:
        return None
    return (
        f"the student's maps at {', '.join(autograd)} go through autograd (create_graph=True in "
        "training: a double backward), which a compiled student cannot provide; the student runs eagerly "
        "and only the teacher's no-grad forward is compiled (the closed form, "
        "loss.map_closed_form=true at the student's cam_layer, compiles the student too)"
    )


def compile_distiller(distiller: nn.Module, value: bool | str, *, warn: bool = True) -> list[str]:
    """Compile the networks of an :class:`distill.ExplanationDistiller` in place.

    ``nn.Module.compile`` keeps the modules and their state-dict keys, so checkpoints, hooks and
    the optimizer see the same parameters as without compilation.


    Args:
        distiller: the distiller whose student and teacher are compiled.
        value: a ``trainer.compile`` value (see :data:`COMPILE_MODES`).
        warn: warn when the student must stay eager (the config check already warns).

    Returns:
        The names of the compiled networks (``[]`` when ``value`` is off).
    """
    mode = compile_mode(value)
    if mode is None:
        return []
    compiled = []
    reason = student_eager_reason(
        distiller.student,
        [pair.student for pair in distiller.map_layers],
        map_closed_form=distiller.map_closed_form,
    )
    if reason is None:
        _compile(distiller.student, mode)
        compiled.append("student")
    elif warn:
        warnings.warn(f"torch.compile: {reason}", UserWarning, stacklevel=2)
    # Validation always computes the teacher's maps: compile it only if they need no autograd.
    if not distiller._teacher_needs_autograd(with_maps=True):
        _compile(distiller.teacher, mode)
        compiled.append("teacher")
    return compiled


def _compile(model: nn.Module, mode: str) -> None:
    """``model.compile(mode=mode)`` with guards on module hooks.

    The activations the losses need are captured by forward hooks that exist only during each
    call (:func:`distill.cam.capture_activations`). By default dynamo installs no guards on
    module hooks, and compiled code is shared by the instances of a class: a graph traced
    without hooks (a plain forward in a callback, or another network of the same architecture)
    would be reused while they are present, and the captures would come back empty. Hence
    ``skip_nnmodule_hook_guards = False``, process-wide: one graph with the hooks, one without,
    and no recompilation for the fresh hook functions of each call.
    """
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    model.compile(mode=mode)


def compile_classifier(model: nn.Module, value: bool | str) -> bool:
    """Compile a network trained with cross-entropy alone (teachers, baselines) in place.

    Returns:
        Whether it was compiled.
    """
    mode = compile_mode(value)
    if mode is not None:
        _compile(model, mode)
    return mode is not None


def is_compiled(model: nn.Module) -> bool:
    """Whether ``nn.Module.compile`` was called on ``model``."""
    return getattr(model, "_compiled_call_impl", None) is not None
