"""Decoding an ImageFolder tree: scanning it, reading files, and the decoded-tensor cache.

Why its own module: the in-memory path decodes a whole split once, in a thread pool, straight
into one preallocated uint8 tensor, and may keep it on disk; the per-sample path reads the same
files one at a time. Both name the file at fault when it cannot be decoded.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from distill.data.errors import DatasetNotFoundError, UnreadableImageError
from distill.data.geometry import resize_uint8

__all__ = ["class_folders", "decode_file", "load_image_folder", "pil_rgb", "scan_folder"]


def class_folders(folder: Path) -> list[str]:
    """The class folder names of a split folder, sorted as torchvision's ImageFolder sorts them
    (read from the folder names alone: cheap)."""
    from torchvision.datasets.folder import find_classes

    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"image folder '{folder}' does not exist; set data.root to a folder with "
            "<split>/<class>/<image> files (ImageFolder layout)"
        )
    try:
        return find_classes(str(folder))[0]
    except FileNotFoundError as e:
        raise DatasetNotFoundError(
            f"image folder '{folder}' holds no class folders; expected <class>/<image> files"
        ) from e


def scan_folder(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes and ``(path, label)`` samples exactly as torchvision's ImageFolder finds them;
    a class folder without images is refused, naming it."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    classes = class_folders(folder)
    class_to_idx = {name: i for i, name in enumerate(classes)}
    samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    present = {label for _, label in samples}
    empty = [name for name in classes if class_to_idx[name] not in present]
    if not samples:
        raise DatasetNotFoundError(
            f"image folder '{folder}' holds no usable images in its {len(classes)} class folder(s); "
            f"expected <class>/<image> files with extensions {', '.join(IMG_EXTENSIONS)}"
        )
    if empty:
        shown = ", ".join(f"'{folder / name}'" for name in empty[:3])
        more = f" and {len(empty) - 3} more" if len(empty) > 3 else ""
        raise DatasetNotFoundError(
            f"class folder {shown}{more} of '{folder}' holds no images (extensions "
            f"{', '.join(IMG_EXTENSIONS)}), while the other {len(classes) - len(empty)} "
            f"class folder(s) hold {len(samples)} images; add images or remove the empty folder"
        )
    return classes, samples


def decode_file(path: str) -> Tensor:
    """Decode one file to uint8 ``[3, H, W]``: torchvision.io first, PIL as fallback."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        image = decode_image(read_file(path), mode=ImageReadMode.RGB)
        return image if image.dtype == torch.uint8 else _to_uint8(image)
    except Exception:  # unsupported by libjpeg/libpng (bmp, tiff, ...) or corrupt: try PIL
        try:
            with Image.open(path) as im:
                arr = torch.from_numpy(_pil_rgb_array(im))
            return arr.permute(2, 0, 1).contiguous()
        except Exception as e:
            raise UnreadableImageError(f"cannot decode image file '{path}': {e}") from e


def _to_uint8(image: Tensor) -> Tensor:
    """16-bit samples (PNG) to 8 bits by their high byte, as PIL-based readers here do."""
    if image.dtype != torch.uint16:
        raise TypeError(f"unsupported sample type {image.dtype}")
    return (image.to(torch.int32) >> 8).to(torch.uint8)


def pil_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: grayscale, RGBA, palette, CMYK, and 16-bit grayscale, whose
    high byte is kept (PIL's own conversion would clip it at 255)."""
    if im.mode.startswith("I;16"):
        import numpy as np

        im = Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8))
    return im.convert("RGB")


def _pil_rgb_array(im: Image.Image) -> Any:
    import numpy as np

    return np.asarray(pil_rgb(im), dtype=np.uint8).copy()


def _cache_key(
    folder: Path, samples: list[tuple[str, int]], image_size: int | None, fit: str
) -> str:
    h = hashlib.sha1()
    size = image_size if fit == "stretch" else f"{image_size}|{fit}"
    h.update(f"{folder.resolve()}|{size}|{len(samples)}".encode())
    for path, label in samples:
        st = os.stat(path)
        h.update(f"|{path}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def load_image_folder(
    folder: str | os.PathLike[str],
    image_size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    num_threads: int | None = None,
    fit: str = "stretch",
) -> tuple[Tensor, Tensor, list[str]]:
    """Decode a whole ImageFolder tree once into ``(uint8 [N,3,H,W], int64 labels, classes)``.

    Files are read and decoded with ``torchvision.io`` in a thread pool, straight into one
    preallocated tensor. With ``cache_dir`` the result is saved as a ``.pt`` file whose name is
    keyed by the folder path, ``image_size``, the file count and every file's size and mtime,
    so any change to the folder invalidates it; a hit loads in about a second.

    Args:
        folder: ImageFolder root (``<class>/<image>``).
        image_size: Resize every image to this square size; ``None`` requires equal sizes.
        fit: How images are resized: ``"stretch"`` to the square, or ``"center"``: the shorter
            side to ``image_size``, then the central square.
        cache_dir: Where to read/write the decoded tensor cache (``None``: no cache).
        num_threads: Decoding threads (default: ``min(16, 2 * cpu_count)``).

    Returns:
        Images, labels (ImageFolder order) and class names.

    Raises:
        DatasetNotFoundError: Missing folder or no images in it.
        UnreadableImageError: A file cannot be decoded (names the file), or sizes differ while
            ``image_size`` is ``None``.
    """
    folder = Path(folder).expanduser()
    classes, samples = scan_folder(folder)
    cache_file = None
    if cache_dir is not None:
        key = _cache_key(folder, samples, image_size, fit)
        cache_file = Path(cache_dir).expanduser() / f"imagefolder-{folder.name}-{key[:20]}.pt"
        if cache_file.is_file():
            try:
                blob = torch.load(cache_file, map_location="cpu", weights_only=True)
                if blob.get("key") == key:
                    return blob["images"], blob["labels"], list(blob["classes"])
            except Exception:  # unreadable/partial cache: rebuild it
                pass

    paths = [p for p, _ in samples]
    labels = torch.tensor([y for _, y in samples], dtype=torch.long)
    first = decode_file(paths[0])
    if image_size is not None:
        h = w = int(image_size)
    else:
        h, w = int(first.shape[1]), int(first.shape[2])
    images = torch.empty(len(paths), 3, h, w, dtype=torch.uint8)

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            img = decode_file(paths[i])
            if img.shape[1:] != (h, w):
                if image_size is None:
                    raise UnreadableImageError(
                        f"image '{paths[i]}' is {img.shape[1]}x{img.shape[2]} but "
                        f"'{paths[0]}' is {h}x{w}; set data.image_size (image_size) to resize all images"
                    )
                img = resize_uint8(img[None], h, fit)[0]
            images[i] = img

    threads = num_threads or min(16, 2 * (os.cpu_count() or 1))
    step = 512
    with ThreadPoolExecutor(threads) as ex:
        futures = [
            ex.submit(work, lo, min(lo + step, len(paths))) for lo in range(0, len(paths), step)
        ]
        for fut in futures:
            fut.result()  # re-raises the first decoding error

    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        torch.save({"key": key, "images": images, "labels": labels, "classes": classes}, tmp)
        os.replace(tmp, cache_file)
    return images, labels, classes
