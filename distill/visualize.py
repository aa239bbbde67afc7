"""Render explanation maps over images, in torch (no matplotlib or cv2 needed; PIL only writes
captions)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from distill.cam import minmax_normalize, resize_maps

__all__ = ["CAPTION_HEIGHT", "captioned_row", "jet_colormap", "overlay_maps", "map_grid"]

CAPTION_HEIGHT = 28
"""Pixels above the panels of :func:`captioned_row`: two lines of PIL's default font."""


def jet_colormap(values: Tensor) -> Tensor:
    """Map ``[B, H, W]`` values in [0, 1] to ``[B, 3, H, W]`` RGB with the classic jet ramp."""
    x = values.clamp(0, 1)[:, None]
    red = (1.5 - (4 * x - 3).abs()).clamp(0, 1)
    green = (1.5 - (4 * x - 2).abs()).clamp(0, 1)
    blue = (1.5 - (4 * x - 1).abs()).clamp(0, 1)
    return torch.cat([red, green, blue], dim=1)


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo per-channel normalisation; returns images in [0, 1]."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    return (images * std_t + mean_t).clamp(0, 1)


def overlay_maps(images: Tensor, maps: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend min-max normalised maps, upsampled to the image size, over ``[B, 3, H, W]`` images."""
    heat = jet_colormap(minmax_normalize(resize_maps(maps.float(), images.shape[-2:])))
    return (1 - alpha) * images.float() + alpha * heat


def map_grid(
    images: Tensor,
    maps: dict[str, Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    scale: int = 4,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
) -> Tensor:
    """One row per image: the image, then one overlay per entry of ``maps`` (e.g. teacher,
    student). Returns a ``[3, H', W']`` float image in [0, 1], upscaled ``scale`` times.

    ``titles`` (one per column) adds a header row and ``row_labels`` (one per image, newlines
    allowed) a left margin, e.g. the true class and each model's prediction: a saved PNG then
    reads on its own, without a dashboard's captions.
    """
    pictures = denormalize(images.detach().float().cpu(), mean, std)
    columns = [pictures] + [overlay_maps(pictures, m.detach().cpu()) for m in maps.values()]
    rows = torch.stack(columns, dim=1)  # [B, columns, 3, H, W]
    batch, ncols, channels, height, width = rows.shape
    grid = rows.permute(2, 0, 3, 1, 4).reshape(channels, batch * height, ncols * width)
    if scale > 1:
        grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    if titles is None and row_labels is None:
        return grid
    return _annotate(grid, titles or [], row_labels or [], height * scale, width * scale)


def _annotate(
    grid: Tensor, titles: Sequence[str], row_labels: Sequence[str], tile_h: int, tile_w: int
) -> Tensor:
    """Draw column titles above ``grid`` and row labels to its left (PIL's default font)."""
    font = ImageFont.load_default()
    body = to_pil_image(grid.clamp(0, 1).mul(255).round().byte())  # as save_image rounds
    measure = ImageDraw.Draw(body)

    def size(text: str) -> tuple[float, float]:
        left, top, right, bottom = measure.multiline_textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    pad = 4
    margin = int(max(size(label)[0] for label in row_labels)) + 2 * pad if row_labels else 0
    header = int(max(size(title)[1] for title in titles)) + 2 * pad if titles else 0
    canvas = Image.new("RGB", (margin + body.width, header + body.height), "white")
    canvas.paste(body, (margin, header))
    draw = ImageDraw.Draw(canvas)
    for i, title in enumerate(titles):
        x = margin + i * tile_w + (tile_w - size(title)[0]) / 2
        draw.text((x, pad), title, fill="black", font=font)
    for i, label in enumerate(row_labels):
        y = header + i * tile_h + (tile_h - size(label)[1]) / 2
        draw.multiline_text((pad, y), label, fill="black", font=font)
    return pil_to_tensor(canvas).float() / 255


def captioned_row(panels: Sequence[Tensor], captions: Sequence[str], scale: int = 1) -> Image.Image:
    """Equal-sized ``[3, H, W]`` panels in [0, 1] side by side, upscaled ``scale`` times (nearest
    neighbour, so map cells stay sharp), each under its caption (up to two lines).

    Returns:
        An RGB image of ``len(panels) * W * scale`` by ``CAPTION_HEIGHT + H * scale`` pixels.
    """
    row = torch.cat([panel.detach().float().cpu().clamp(0, 1) for panel in panels], dim=2)
    if scale > 1:
        row = row.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    canvas = Image.new("RGB", (row.shape[2], CAPTION_HEIGHT + row.shape[1]), "white")
    canvas.paste(to_pil_image(row), (0, CAPTION_HEIGHT))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    width = row.shape[2] // len(panels)
    for i, caption in enumerate(captions):
        draw.multiline_text((i * width + 3, 2), caption, fill="black", font=font, spacing=2)
    return canvas
