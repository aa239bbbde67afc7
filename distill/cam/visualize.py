"""Render explanation maps over images, in torch (no matplotlib or cv2 needed; PIL only writes
captions).

Pictures stay readable whatever the image size: tiles are brought to 128-256 pixels
(:data:`TILE_SIDES`; small images upscaled by a whole factor, nearest neighbour, so map cells
stay sharp; large ones shrunk with antialiasing), so that captions fit and one epoch's grid
stays a few MB. Text is drawn with DejaVu Sans (Latin, Greek, Cyrillic and many symbols):
the font a ``DISTILL_FONT`` variable names, else matplotlib's copy, else the system's, else
Pillow's own (Latin without accents). A character the font lacks is written so that it still
reads (:func:`drawable`): accents dropped (``é`` -> ``e``), kana and hangul by their
Unicode reading (``ね`` -> ``ne``, ``한`` -> ``han``), emoji by name (``[fox face]``) and
CJK ideographs, whose Unicode names carry no reading, as their code point (``U+732B``); set
``DISTILL_FONT`` to a CJK font (e.g. Noto Sans CJK) to draw them.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from distill.cam.functional import minmax_normalize, resize_maps

__all__ = [
    "CAPTION_HEIGHT",
    "FONT_ENV",
    "TILE_SIDES",
    "captioned_row",
    "drawable",
    "fit_tiles",
    "jet_colormap",
    "map_grid",
    "overlay_maps",
    "text_font",
]

FONT_SIZE = 12
CAPTION_HEIGHT = 36
"""Pixels above the panels of :func:`captioned_row`: two lines of :func:`text_font`."""
TILE_SIDES = (128, 256)
"""Smallest and largest side of a :func:`map_grid` tile, in pixels."""
FONT_ENV = "DISTILL_FONT"
"""Environment variable naming a TrueType/OpenType font file to draw text with."""
_MISSING = "\U0010fffd"  # a private-use code point no font draws: its mask is the .notdef box


@functools.lru_cache(maxsize=4)
def text_font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font of captions and labels (see the module docstring for the order searched)."""
    candidates = [os.environ.get(FONT_ENV, "")]
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(str(Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"))
    candidates.append("DejaVuSans.ttf")  # Pillow looks in the system's font folders
    for candidate in filter(None, candidates):
        try:
            return ImageFont.truetype(candidate, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size)  # FreeType Aileron (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


@functools.lru_cache(maxsize=4096)
def _has_glyph(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, char: str) -> bool:
    if char.isspace():
        return True

    def mask(text: str) -> tuple[tuple[int, int], bytes]:
        drawn = font.getmask(text)
        return drawn.size, bytes(drawn)

    return mask(char) != mask(_MISSING)


def _spelled(char: str) -> str:
    """A character no font here draws, in letters: a reading where Unicode's name gives one."""
    name = unicodedata.name(char, "")
    for prefix in ("HANGUL SYLLABLE ", "HIRAGANA LETTER ", "KATAKANA LETTER "):
        if name.startswith(prefix):
            return name.removeprefix(prefix).lower()
    if not name or name.startswith("CJK "):
        return f"U+{ord(char):04X}"
    return f"[{name.lower()}]"


def drawable(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont | None = None) -> str:
    """``text`` with every character ``font`` (default :func:`text_font`) lacks replaced by a
    readable stand-in (see the module docstring), so that nothing is drawn as an empty box.

    Example:
        >>> drawable("ねこ 猫")
        'ne ko U+732B'
    """
    font = font or text_font()
    parts: list[tuple[str, bool]] = []  # (text, spelled out)
    for char in unicodedata.normalize("NFC", text):
        if _has_glyph(font, char):
            parts.append((char, False))
            continue
        bare = "".join(
            c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c)
        )
        if bare and all(_has_glyph(font, c) for c in bare):
            parts.append((bare, False))
        else:
            parts.append((_spelled(char), True))
    out = ""
    for i, (piece, spelled) in enumerate(parts):
        if spelled and i and parts[i - 1][1]:
            out += " "  # consecutive stand-ins stay apart
        out += piece
    return out


def fit_tiles(images: Tensor, sides: tuple[int, int] = TILE_SIDES) -> Tensor:
    """``[..., H, W]`` images in [0, 1] with the longer side brought into ``sides``: smaller ones
    upscaled by the smallest whole factor that reaches ``sides[0]`` (nearest neighbour, so map
    cells stay sharp), larger ones shrunk to ``sides[1]`` (antialiased), others unchanged."""
    low, high = sides
    height, width = images.shape[-2:]
    side = max(height, width)
    if side < low:
        factor = math.ceil(low / side)
        return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    if side > high:
        size = (max(1, round(height * high / side)), max(1, round(width * high / side)))
        flat = images.reshape(-1, *images.shape[-3:]).float()
        shrunk = F.interpolate(flat, size=size, mode="bilinear", antialias=True).clamp(0, 1)
        return shrunk.reshape(*images.shape[:-2], *size)
    return images


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
    scale: int | None = None,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
) -> Tensor:
    """One row per image: the image, then one overlay per entry of ``maps`` (e.g. teacher,
    student). Returns a ``[3, H', W']`` float image in [0, 1] whose tiles are
    :func:`fit_tiles` sized (128-256 pixels), or ``scale`` times the images' size when given.

    ``titles`` (one per column) adds a header row and ``row_labels`` (one per image, newlines
    allowed) a left margin, e.g. the true class and each model's prediction: a saved PNG then
    reads on its own, without a dashboard's captions.
    """
    pictures = denormalize(images.detach().float().cpu(), mean, std)
    columns = [pictures] + [overlay_maps(pictures, m.detach().cpu()) for m in maps.values()]
    tiles = torch.stack(columns, dim=1)  # [B, columns, 3, H, W]
    if scale is None:
        tiles = fit_tiles(tiles)
    elif scale > 1:
        tiles = tiles.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    batch, ncols, channels, height, width = tiles.shape
    grid = tiles.permute(2, 0, 3, 1, 4).reshape(channels, batch * height, ncols * width)
    if titles is None and row_labels is None:
        return grid
    return _annotate(grid, titles or [], row_labels or [], height, width)


def _annotate(
    grid: Tensor, titles: Sequence[str], row_labels: Sequence[str], tile_h: int, tile_w: int
) -> Tensor:
    """Draw column titles above ``grid`` and row labels to its left (:func:`text_font`)."""
    font = text_font()
    titles, row_labels = (
        [drawable(t, font) for t in titles],
        [drawable(t, font) for t in row_labels],
    )
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
        x = margin + i * tile_w + max(0.0, (tile_w - size(title)[0]) / 2)
        draw.text((x, pad), title, fill="black", font=font)
    for i, label in enumerate(row_labels):
        y = header + i * tile_h + max(0.0, (tile_h - size(label)[1]) / 2)
        draw.multiline_text((pad, y), label, fill="black", font=font)
    return pil_to_tensor(canvas).float() / 255


def captioned_row(
    panels: Sequence[Tensor], captions: Sequence[str], sides: tuple[int, int] = (160, 512)
) -> Image.Image:
    """Equal-sized ``[3, H, W]`` panels in [0, 1] side by side, brought to ``sides`` by
    :func:`fit_tiles`, each under its caption (up to two lines, cut at the panel's edge).

    Returns:
        An RGB image of ``len(panels) * W'`` by ``CAPTION_HEIGHT + H'`` pixels.
    """
    tiles = fit_tiles(torch.stack([p.detach().float().cpu().clamp(0, 1) for p in panels]), sides)
    row = torch.cat(list(tiles), dim=2)
    width = tiles.shape[-1]
    canvas = Image.new("RGB", (row.shape[2], CAPTION_HEIGHT + row.shape[1]), "white")
    canvas.paste(to_pil_image(row), (0, CAPTION_HEIGHT))
    font = text_font()
    for i, caption in enumerate(captions):
        cell = Image.new("RGB", (width, CAPTION_HEIGHT), "white")  # clips a long caption
        ImageDraw.Draw(cell).multiline_text(
            (3, 2), drawable(caption, font), fill="black", font=font, spacing=2
        )
        canvas.paste(cell, (i * width, 0))
    return canvas
