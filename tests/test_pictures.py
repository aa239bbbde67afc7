"""Pictures that read whatever the image size: maps grids of 128-256 px tiles and a few MB,
captions that do not overlap, class names in any script drawn as text rather than boxes."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFont
from torchvision.utils import save_image

from distill.cam.visualize import (
    FONT_ENV,
    captioned_row,
    drawable,
    fit_tiles,
    map_grid,
    text_font,
)

TITLES = ["image", "teacher", "student"]


def _images(n: int, size: int) -> torch.Tensor:
    """Photo-like images: smooth shapes plus a little grain, in [0, 1]."""
    g = torch.Generator().manual_seed(size)
    coarse = torch.rand(n, 3, 6, 6, generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (smooth + 0.03 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)


def _grid(size: int, labels: list[str] | None = None, n: int = 8) -> torch.Tensor:
    images = _images(n, size)
    g = torch.Generator().manual_seed(1)
    maps = {name: torch.rand(n, 4, 4, generator=g) for name in TITLES[1:]}
    labels = labels or [
        f"true: class {i}\nteacher: class {i}\nstudent: class {i}" for i in range(n)
    ]
    return map_grid(images, maps, (0, 0, 0), (1, 1, 1), titles=TITLES, row_labels=labels)


@pytest.mark.parametrize(
    "hw, expected",
    [
        ((7, 7), (133, 133)),  # 19 times: the smallest whole factor reaching 128
        ((32, 32), (128, 128)),
        ((100, 60), (200, 120)),
        ((200, 200), (200, 200)),
        ((512, 512), (256, 256)),
        ((300, 600), (128, 256)),
    ],
)
def test_tiles_are_brought_to_128_to_256_pixels(hw, expected):
    assert tuple(fit_tiles(torch.rand(2, 3, *hw)).shape) == (2, 3, *expected)


def test_small_tiles_are_upscaled_by_whole_pixels():
    image = torch.rand(1, 3, 7, 7)
    tiles = fit_tiles(image)
    assert torch.equal(tiles[..., ::19, ::19], image)  # nearest neighbour: map cells stay sharp


def _header_and_margin(grid: torch.Tensor, tile: int, rows: int) -> tuple[int, int]:
    return grid.shape[1] - rows * tile, grid.shape[2] - len(TITLES) * tile


def test_a_512_px_grid_is_a_few_mb_without_a_decompression_bomb_warning(tmp_path):
    """Before: 2048 px tiles, one epoch's PNG 6219x16402 px, 17.6 MB."""
    grid = _grid(512)
    header, margin = _header_and_margin(grid, 256, 8)
    assert 0 < header < 40 and 0 < margin < 200
    path = tmp_path / "maps_epoch001.png"
    save_image(grid, path)  # as MapImageCallback saves it
    assert path.stat().st_size < 4e6
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as picture:
            assert picture.size == (margin + 3 * 256, header + 8 * 256)


def test_captions_of_7_px_images_do_not_overlap():
    """Before: 28 px tiles under titles wider than that, and three-line labels taller."""
    grid = _grid(7, n=3)
    header, margin = _header_and_margin(grid, 133, 3)
    ink = (grid < 0.5).any(dim=0)  # black text on white
    titles, labels = ink[:header, margin:], ink[header:, :margin]
    assert titles.any() and labels.any()
    for i in range(1, len(TITLES)):  # no title crosses into its neighbour's column
        assert not titles[:, i * 133 - 1 : i * 133 + 1].any()
    for i in range(1, 3):  # no row label crosses into the next row
        assert not labels[i * 133 - 1 : i * 133 + 1].any()


@pytest.mark.parametrize("a, b", [("é", "ü"), ("Ω", "Ж"), ("猫", "犬"), ("🦊", "🐙"), ("ね", "こ")])
def test_distinct_non_ascii_names_are_drawn_distinctly(a, b):
    """Before, every one of these was the same empty box."""
    first, second = _grid(32, [f"true: {a}"], n=1), _grid(32, [f"true: {b}"], n=1)
    assert first.shape != second.shape or not torch.equal(first, second)


def test_characters_the_font_lacks_become_readable_text():
    font = text_font()
    for text in ["café", "Ωмега", "猫", "ねこ", "한국", "🦊"]:
        shown = drawable(text, font)
        missing = font.getmask("\U0010fffd")
        for char in shown.replace(" ", ""):  # every character drawn is a real glyph
            drawn = font.getmask(char)
            assert (drawn.size, bytes(drawn)) != (missing.size, bytes(missing)), (text, char)
    assert drawable("猫 ねこ") == "U+732B ne ko"  # CJK ideographs: no reading in Unicode's names
    assert drawable("한국") == "han gug"
    if "DejaVu" in str(getattr(font, "path", "")):  # Latin accents, Greek, Cyrillic as they are
        assert drawable("café Ωмега") == "café Ωмега"


def test_explain_rows_keep_their_size_range_and_clip_long_captions():
    panels = [torch.rand(3, 1024, 512) for _ in range(2)]
    row = captioned_row(panels, ["student: a very long class name indeed\np=0.50", "x"])
    assert row.size == (2 * 256, 36 + 512)  # shrunk to 512 px on the longer side


def test_look(tmp_path_factory):
    """Writes the pictures the report looks at (kept under pytest's temporary folder)."""
    out = Path(tmp_path_factory.mktemp("look"))
    labels = ["true: café\nteacher: 猫\nstudent: 🦊", "true: Ωмега\nteacher: ねこ\nstudent: dog"]
    for size in (7, 32, 512):
        save_image(_grid(size, labels, n=2), out / f"grid_{size}.png")
    assert len(list(out.glob("*.png"))) == 3


@pytest.fixture
def fresh_font(monkeypatch):
    text_font.cache_clear()
    yield monkeypatch
    text_font.cache_clear()


def test_distill_font_names_the_font(fresh_font):
    default = text_font()
    if not hasattr(default, "path"):
        pytest.skip("no TrueType font to name")
    other = Path(default.path).with_name("DejaVuSans-Bold.ttf")
    if not other.is_file():
        pytest.skip("no second DejaVu font beside the first")
    fresh_font.setenv(FONT_ENV, str(other))
    text_font.cache_clear()
    assert text_font().path == str(other)


def test_without_dejavu_accents_are_dropped_not_boxed(fresh_font):
    fresh_font.setattr("distill.cam.visualize.importlib.util.find_spec", lambda name: None)
    real = ImageFont.truetype

    def no_files(font, *args, **kwargs):  # Pillow's own font comes from memory, not a file
        if isinstance(font, str):
            raise OSError("cannot open resource")
        return real(font, *args, **kwargs)

    fresh_font.setattr(ImageFont, "truetype", no_files)
    font = text_font()
    assert "DejaVu" not in str(getattr(font, "path", ""))
    assert drawable("café", font) == "cafe"
