"""Capture a layer's activations during the ordinary forward pass, by module name.

One forward pass then serves the cross-entropy, the KD term and the explanation map: there is no
second pass to get activations. Hooks live only inside the ``with`` block.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

from torch import Tensor, nn

__all__ = [
    "PooledHead",
    "capture_activations",
    "resolve_layer",
    "pooled_head",
    "pooled_linear_classifier",
]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule called ``name`` in ``model.named_modules()``.

    Raises:
        ValueError: naming the closest valid layer names when ``name`` does not exist.
    """
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    default = getattr(model, "cam_layer", None)
    default_hint = f" (the model's default is {default!r})" if default else ""
    raise ValueError(
        f"{type(model).__name__} has no layer {name!r}{hint}{default_hint}; "
        "valid names are those of model.named_modules()"
    )


@contextmanager
def capture_activations(
    model: nn.Module, layers: Iterable[str], *, detach: bool = False
) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of the named layers during forward passes inside the block.

    Args:
        model: the network.
        layers: submodule names as in ``model.named_modules()``.
        detach: cut the graph at the first captured layer that a forward pass reaches and make
            its output a leaf that requires grad. The network before it then builds no graph,
            while the scores stay differentiable with respect to every captured activation:
            what a frozen teacher needs for autograd Grad-CAM++ maps (run its forward under
            ``torch.enable_grad()``).

    Yields:
        A dict ``{layer name: activations}``, emptied at the start of each forward pass of
        ``model`` and filled during it.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.ReLU())
        >>> with capture_activations(net, ["1"]) as acts:
        ...     _ = net(torch.randn(1, 3, 4, 4))
        >>> acts["1"].shape, len(net[1]._forward_hooks)
        (torch.Size([1, 2, 4, 4]), 0)
    """
    names = list(dict.fromkeys(layers))
    captured: dict[str, Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor | None:
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {name!r} returned {type(output).__name__}, not a Tensor; "
                    "pick a layer whose output is a single tensor"
                )
            if detach and not captured:
                output = output.detach().requires_grad_()
                captured[name] = output
                return output
            captured[name] = output
            return None

        return hook

    def start_pass(_module: nn.Module, _inputs: object) -> None:
        captured.clear()

    try:
        handles.append(model.register_forward_pre_hook(start_pass))
        for name in names:
            handles.append(resolve_layer(model, name).register_forward_hook(make_hook(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


class PooledHead(NamedTuple):
    """A head that pools a layer's positions (or patch tokens) by their mean, optionally
    normalises the mean (``norm``), and applies ``classifier``."""

    classifier: nn.Linear
    norm: nn.Module | None = None


def pooled_head(model: nn.Module, layer: str) -> PooledHead | None:
    """The pooled head that ``layer`` feeds, if the model declares one; else None (autograd).

    A model declares it with ``has_pooled_linear_head = True``, ``get_classifier()`` returning an
    ``nn.Linear``, the name of the layer that feeds the pooling (``pooled_head_layer``, default
    ``cam_layer``) and, for a token-average head with a norm after the pooling (timm's
    ``fc_norm``), ``get_head_norm()``. Grad-CAM(++) at that layer then has a closed form with no
    backward pass through the network.
    """
    if not getattr(model, "has_pooled_linear_head", False):
        return None
    feeding = getattr(model, "pooled_head_layer", None) or getattr(model, "cam_layer", None)
    if layer != feeding:
        return None
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    if not isinstance(classifier, nn.Linear):
        return None
    get_head_norm = getattr(model, "get_head_norm", None)
    norm = get_head_norm() if callable(get_head_norm) else None
    return PooledHead(classifier, norm)


def pooled_linear_classifier(model: nn.Module, layer: str) -> nn.Linear | None:
    """The classifier of :func:`pooled_head` when no norm sits between pooling and it."""
    head = pooled_head(model, layer)
    return head.classifier if head is not None and head.norm is None else None
