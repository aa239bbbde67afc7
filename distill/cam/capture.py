"""Capture a layer's activations during the ordinary forward pass, by module name.

One forward pass then serves the cross-entropy, the KD term and the explanation map: there is no
second pass to get activations. Hooks live only inside the ``with`` block.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

__all__ = ["capture_activations", "resolve_layer", "pooled_linear_classifier"]


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
                    "pick a layer whose output is a single [B, K, H, W] tensor"
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


def pooled_linear_classifier(model: nn.Module, layer: str) -> nn.Linear | None:
    """The classifier that ``layer`` feeds through global average pooling alone, if declared.

    A model declares it with ``cam_layer`` (that layer's name), ``has_pooled_linear_head = True``
    and ``get_classifier()`` returning an ``nn.Linear``: every model of
    :func:`distill.models.build_model` with such a head does. Grad-CAM(++) at that layer then has
    a closed form with no backward pass. Anything else returns None (autograd path).
    """
    if layer != getattr(model, "cam_layer", None):
        return None
    if not getattr(model, "has_pooled_linear_head", False):
        return None
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    return classifier if isinstance(classifier, nn.Linear) else None
