"""Any importable ``nn.Module`` as a teacher or student: ``name=package.module:callable``.

The callable is called with ``num_classes`` and the section's ``kwargs``; the network it returns
is wrapped as ``self.net`` (its parameters keep their names under ``net.``, as for torchvision
models). What the toolkit needs to explain it is found by a forward pass of two random images,
not declared:

- the CAM layer: the module (outermost, last to finish) whose ``[B, C, H, W]`` output with
  ``H, W > 1`` the logits derive from (checked by autograd, so a branch that does not feed the
  classifier is never chosen). A ``cam_layer`` attribute of the network, or the section's
  ``cam_layer``, overrides it;
- the head: closed-form Grad-CAM++ is used only where the logits equal ``W · mean(A) + b`` for a
  linear layer of the network, checked numerically with random ``W`` and ``b`` in training mode
  (dropout in the head fails the check); otherwise maps are computed by autograd.

The choice is printed once per process. The forward pass runs under a forked RNG, and the
BatchNorm statistics it touches are restored, so building the model changes nothing else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["ImportedClassifier", "build_imported", "import_builder"]

_PROBE_SIZES = (32, 64, 224)  # square input sizes tried, in order, for the probing forward
_BATCH = 2
_ANNOUNCED: set[str] = set()


def import_builder(name: str) -> Callable[..., nn.Module]:
    """The callable that ``package.module:callable`` names (``callable`` may be dotted).

    Raises:
        ValueError: the module cannot be imported or holds no such callable (one line).
    """
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"model name {name!r} must look like package.module:callable")
    try:
        target = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"cannot import {module_name!r} for {name!r} ({error}); the module must be "
            "importable (installed, or on PYTHONPATH)"
        ) from None
    for part in attribute.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise ValueError(f"{module_name!r} has no callable {attribute!r} (from {name!r})")
    return target


@dataclass(frozen=True)
class _Probe:
    layer: str  # the network's own name of the layer that feeds the pooled features
    shape: tuple[int, ...]
    size: int
    classifier: str | None  # the verified pooled-linear classifier, else None


class ImportedClassifier(nn.Module):
    """A user's network behind the distill model contract (``cam_layer``,
    ``has_pooled_linear_head``, ``get_classifier``, ``num_classes``).

    Args:
        name: ``package.module:callable``.
        num_classes: classifier outputs, passed to the callable.
        kwargs: further keyword arguments of the callable.
        cam_layer: the layer to explain (the network's own name, or with ``net.``).
    """

    def __init__(
        self, name: str, num_classes: int, kwargs: dict | None = None, cam_layer: str | None = None
    ) -> None:
        super().__init__()
        builder = import_builder(name)
        try:
            net = builder(num_classes=num_classes, **(kwargs or {}))
        except TypeError as error:
            raise ValueError(f"{name}(num_classes={num_classes}, **kwargs): {error}") from None
        if not isinstance(net, nn.Module):
            raise ValueError(f"{name} returned a {type(net).__name__}, not a torch.nn.Module")
        for module in net.modules():  # hooked activations must not be overwritten
            if isinstance(getattr(module, "inplace", None), bool):
                module.inplace = False
        self.net = net
        self.model_name = name
        self.num_classes = num_classes
        probe = _probe(net, num_classes, name)
        self.pooled_head_layer = f"net.{probe.layer}"
        self.has_pooled_linear_head = probe.classifier is not None
        self._classifier = probe.classifier
        self.num_features = probe.shape[1]
        declared = cam_layer or getattr(net, "cam_layer", None)
        self.cam_layer = self.pooled_head_layer
        if declared:
            names = dict(net.named_modules())
            inner = str(declared).removeprefix("net.")
            if inner not in names or not inner:
                raise ValueError(f"cam_layer {declared!r} is not a layer of {name}")
            self.cam_layer = f"net.{inner}"
        if not next(net.parameters(), torch.empty(0)).is_meta:
            _announce(name, self.cam_layer, probe, given=bool(declared))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def get_classifier(self) -> nn.Module | None:
        """The verified pooled-linear classifier; else the last linear layer with
        ``num_classes`` outputs (None when there is none)."""
        if self._classifier is not None:
            return self.net.get_submodule(self._classifier)
        linears = [
            m
            for m in self.net.modules()
            if isinstance(m, nn.Linear) and m.out_features == self.num_classes
        ]
        return linears[-1] if linears else None


def build_imported(
    name: str, num_classes: int, kwargs: dict, cam_layer: str | None
) -> ImportedClassifier:
    """:class:`ImportedClassifier` (the entry point of ``build_model``)."""
    return ImportedClassifier(name, num_classes, kwargs, cam_layer)


def _announce(name: str, cam_layer: str, probe: _Probe, *, given: bool) -> None:
    _, channels, height, width = probe.shape
    found = (
        f"found by a forward pass: [B, {channels}, {height}, {width}] at "
        f"{probe.size}x{probe.size} px feeds the pooled features"
    )
    if probe.classifier is None:
        head = "autograd (the head is not verified to be global-average pooling + linear)"
    elif cam_layer != f"net.{probe.layer}":
        head = f"autograd (the pooling is fed by net.{probe.layer})"
    else:
        head = f"its closed form (the head is verified to be pooling + net.{probe.classifier})"
    line = f"{name}: cam_layer={cam_layer} ({'given' if given else found}); Grad-CAM++ by {head}"
    if line not in _ANNOUNCED:
        _ANNOUNCED.add(line)
        print(line, flush=True)


def _probe(net: nn.Module, num_classes: int, name: str) -> _Probe:
    """Find the layer feeding global pooling and verify the head, by forward passes of random
    images, leaving the network's buffers and the global RNG as they were."""
    buffers = {key: value.clone() for key, value in net.named_buffers()}
    errors = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for size in _PROBE_SIZES:
                try:
                    return _probe_at(net, num_classes, name, size)
                except _ProbeFailed:
                    raise
                except Exception as error:  # the network does not take this size
                    errors.append(f"{size}px: {type(error).__name__}: {error}")
    finally:
        with torch.no_grad():
            for key, value in net.named_buffers():
                value.copy_(buffers[key])
    raise ValueError(
        f"{name}: a forward pass of random images failed at every size tried "
        f"({'; '.join(e.splitlines()[0] for e in errors)})"
    )


class _ProbeFailed(ValueError):
    """The forward pass ran, but its result does not fit the contract."""


def _capture(net: nn.Module, x: Tensor, params: dict | None = None):
    """``(logits, [(name, [B, C, H, W] output)])`` in order of completion (a module called
    twice keeps its last output)."""
    outputs: dict[str, Tensor] = {}

    def hook(name: str):
        def record(_module, _inputs, output) -> None:
            spatial = isinstance(output, Tensor) and output.dim() == 4
            if spatial and output.shape[-1] > 1 and output.shape[-2] > 1:
                outputs.pop(name, None)
                outputs[name] = output

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in net.named_modules() if n]
    try:
        logits = functional_call(net, params, (x,)) if params else net(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, list(outputs.items())


def _probe_at(net: nn.Module, num_classes: int, name: str, size: int) -> _Probe:
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn(_BATCH, 3, size, size, device=device)
    with torch.enable_grad():
        logits, maps = _capture(net, x)
        if not isinstance(logits, Tensor) or tuple(logits.shape) != (_BATCH, num_classes):
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise _ProbeFailed(
                f"{name} returned {shape} for {_BATCH} images; expected logits "
                f"[B, num_classes={num_classes}]"
            )
        feeding = _feeding_maps(logits, maps)
    if not feeding:
        raise _ProbeFailed(
            f"{name}: no layer's output of shape [B, C, H, W] with H, W > 1 feeds its logits; "
            "Grad-CAM++ needs such a map (set cam_layer to name one)"
        )
    layer, activation = feeding[-1]
    classifier = None if device.type == "meta" else _pooled_linear(net, x, layer, activation)
    return _Probe(layer, tuple(activation.shape), size, classifier)


def _feeding_maps(logits: Tensor, maps: list[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    """The maps that the logits derive from (all of them when autograd cannot tell)."""
    tracked = [(n, t) for n, t in maps if t.requires_grad]
    if not tracked or not logits.requires_grad:
        return maps
    try:
        grads = torch.autograd.grad(
            logits.sum(), [t for _, t in tracked], allow_unused=True, retain_graph=False
        )
    except RuntimeError:
        return maps
    return [(n, t.detach()) for (n, t), g in zip(tracked, grads, strict=True) if g is not None]


def _pooled_linear(net: nn.Module, x: Tensor, layer: str, activation: Tensor) -> str | None:
    """The linear layer ``L`` with ``logits == L(mean(activation))`` for random weights of
    ``L``, if there is one."""
    channels = activation.shape[1]
    for linear_name, linear in net.named_modules():
        if not isinstance(linear, nn.Linear) or linear.in_features != channels:
            continue
        weight = torch.randn_like(linear.weight)
        params = {f"{linear_name}.weight": weight}
        bias = None
        if linear.bias is not None:
            bias = torch.randn_like(linear.bias)
            params[f"{linear_name}.bias"] = bias
        with torch.no_grad():
            logits, maps = _capture(net, x, params)
            captured = dict(maps).get(layer)
            if captured is None or not isinstance(logits, Tensor):
                continue
            expected = captured.mean(dim=(2, 3)) @ weight.T
            if bias is not None:
                expected = expected + bias
            if expected.shape == logits.shape and torch.allclose(
                logits, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()) + 1e-6
            ):
                return linear_name
    return None
