"""Batched tensor augmentation and normalisation.

Why: per-sample PIL transforms in DataLoader workers are the bottleneck for 32x32 data on a GPU.
These modules work on a whole ``[B, C, H, W]`` batch on whatever device it lives on (applied in
``LightningDataModule.on_after_batch_transfer``), with no Python loop over samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "BatchAugment",
    "Normalize",
    "SeededModule",
    "make_generator",
]

CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)


def make_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """A CPU generator from a generator (used as is), a seed, or ``None`` (random seed)."""
    if isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator()
    if generator is None:
        g.seed()
    else:
        g.manual_seed(int(generator))
    return g


class SeededModule(nn.Module):
    """A module that draws random parameters from its own CPU generator (``self.generator``).

    Why: results then depend only on its seed, not on the device or on global RNG state.
    """

    generator: torch.Generator

    def __getstate__(self) -> dict[str, Any]:
        # torch.Generator pickles through shared memory, which breaks under spawn-based
        # multiprocessing (e.g. Lightning's ddp_spawn); carry its state as plain bytes instead.
        state = self.__dict__.copy()
        state["generator"] = self.generator.get_state().numpy().tobytes()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        raw = state["generator"]
        g = torch.Generator()
        g.set_state(torch.tensor(list(raw), dtype=torch.uint8))
        self.__dict__.update({**state, "generator": g})

    def manual_seed(self, seed: int) -> None:
        """Reset the parameter stream (e.g. per batch, for resumable runs)."""
        self.generator.manual_seed(int(seed))


class BatchAugment(SeededModule):
    """Standard CIFAR augmentation for a batch: zero-pad, random crop, random horizontal flip.

    Every sample gets its own crop offset and flip. The random parameters are drawn on the CPU
    from the module's own generator (so results do not depend on the device or on global RNG
    state), moved to the batch device, and the crop is one advanced-indexing gather from the
    padded batch. Output has the input's shape and dtype (uint8 works; padding is value 0).

    Args:
        padding: Zero padding on each side before cropping back to the input size.
        flip: Whether to flip horizontally with probability 0.5.
        generator: A CPU ``torch.Generator``, an int seed, or ``None`` (non-deterministic).
    """

    def __init__(
        self,
        padding: int = 4,
        flip: bool = True,
        generator: torch.Generator | int | None = None,
    ) -> None:
        super().__init__()
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = int(padding)
        self.flip = bool(flip)
        self.generator = make_generator(generator)

    def sample_params(self, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
        """Draw per-sample ``(dy, dx, flip)``: crop offsets in ``[0, 2*padding]`` and flip flags."""
        hi = 2 * self.padding + 1
        g = self.generator
        dy = torch.randint(0, hi, (batch_size,), generator=g)
        dx = torch.randint(0, hi, (batch_size,), generator=g)
        if self.flip:
            fl = torch.rand(batch_size, generator=g) < 0.5
        else:
            fl = torch.zeros(batch_size, dtype=torch.bool)
        return dy, dx, fl

    @staticmethod
    def apply(x: Tensor, padding: int, dy: Tensor, dx: Tensor, flip: Tensor) -> Tensor:
        """Crop/flip ``x`` with given per-sample parameters (deterministic part, for testing).

        Args:
            x: ``[B, C, H, W]`` batch, any dtype.
            padding: Zero padding on each side.
            dy: ``[B]`` crop row offsets into the padded image, in ``[0, 2*padding]``.
            dx: ``[B]`` crop column offsets, same range.
            flip: ``[B]`` bool, flip the crop horizontally.

        Returns:
            Augmented batch with the shape and dtype of ``x``.
        """
        b, c, h, w = x.shape
        dev = x.device
        dy, dx, flip = dy.to(dev), dx.to(dev), flip.to(dev)
        xp = F.pad(x, (padding, padding, padding, padding)) if padding else x
        rows = dy[:, None] + torch.arange(h, device=dev)  # [B, H]
        cols = dx[:, None] + torch.arange(w, device=dev)  # [B, W]
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ci = torch.arange(c, device=dev)[None, :, None, None]
        return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]

    def forward(self, x: Tensor) -> Tensor:
        """Augment a ``[B, C, H, W]`` batch (each sample independently)."""
        if x.ndim != 4:
            raise ValueError(f"expected a [B, C, H, W] batch, got shape {tuple(x.shape)}")
        dy, dx, fl = self.sample_params(x.shape[0])
        return self.apply(x, self.padding, dy, dx, fl)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, flip={self.flip}"


class Normalize(nn.Module):
    """Convert to float and normalise per channel: ``(x / 255 - mean) / std``.

    uint8 input is scaled to ``[0, 1]`` first; floating input is assumed already in ``[0, 1]``.
    Runs on the batch's device, so it can follow :class:`BatchAugment` on the GPU.

    Args:
        mean: Per-channel mean of ``[0, 1]`` images.
        std: Per-channel standard deviation of ``[0, 1]`` images.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std lengths differ: {len(mean)} vs {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), False)

    def _stats(self, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self.mean.device != x.device:  # follow the data once instead of copying every call
            self.mean = self.mean.to(x.device)
            self.std = self.std.to(x.device)
        return self.mean.to(dtype), self.std.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``[..., C, H, W]``; returns float32 (or the input's float dtype)."""
        out = x if x.is_floating_point() else x.float().div_(255.0)
        mean, std = self._stats(out, out.dtype)
        return (out - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """Invert :meth:`forward` back to ``[0, 1]`` floats (for visualising inputs and CAMs)."""
        mean, std = self._stats(x, x.dtype)
        return x * std + mean

    def extra_repr(self) -> str:
        m = tuple(round(v, 4) for v in self.mean.flatten().tolist())
        s = tuple(round(v, 4) for v in self.std.flatten().tolist())
        return f"mean={m}, std={s}"
