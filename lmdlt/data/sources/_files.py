"""Helpers shared by the file-based sources: paths kept inside the data root, CSV reading with
clear errors, and JPEG/PNG decoding with PIL (each image decoded and resized exactly once, the
same way for the image cache and for a fresh decode)."""
from __future__ import annotations

import abc

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def require_root(source_name: str, root: str | os.PathLike | None) -> Path:
    """The source's data root as an absolute path; an error naming the source when unset."""
    if root is None or str(root) == "":
        raise ValueError(f"dataset.root: source {source_name!r} needs a data root (a folder)")
    return Path(os.path.abspath(Path(root).expanduser()))


def inside(root: Path, relative: str | os.PathLike, what: str = "image path") -> Path:
    """``root / relative``; an error when it escapes ``root`` (an absolute path, or '..' leading
    out). The check is on the path's text, so a data root made of symbolic links still works."""
    rel = str(relative)
    if rel == "" or os.path.isabs(rel) or Path(rel).drive:
        raise ValueError(f"{what} {rel!r} must be relative to the data root {str(root)!r}")
    full = Path(os.path.normpath(root / rel))
    if full != root and root not in full.parents:
        raise ValueError(f"{what} {rel!r} escapes the data root {str(root)!r}")
    return full


def check_confined(root: Path, entries: Iterable[str], where: str) -> None:
    """Every image path a label file lists stays inside ``root``: an entry that is absolute or
    climbs out with '..' is refused when the index is read (before any split or cache is
    built), naming the file it came from. Results and data folders are shared on clusters, so a
    label file from someone else must not make the pipeline read files elsewhere."""
    for rel in entries:
        try:
            inside(root, rel)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


def data_file(root: Path, name: str | os.PathLike, what: str) -> Path:
    """A metadata file: absolute, or relative to the data root; an error naming it when absent."""
    p = Path(name).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        raise FileNotFoundError(f"{what} {str(p)!r} not found")
    return p


def read_csv(path: Path, columns: Sequence[str], what: str, **kwargs) -> pd.DataFrame:
    """A CSV with the named columns required (the error names the file and the column)."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {str(path)!r}: cannot be read as CSV ({e})") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} {str(path)!r} lacks column(s) {missing} "
                         f"(columns found: {list(df.columns)})")
    return df


def labels_from_names(names: Iterable[str], class_names: Sequence[str], where: str,
                      aliases: dict[str, str] | None = None) -> np.ndarray:
    """Class names -> label ids; an error naming the first unknown class and the file."""
    aliases = aliases or {}
    lookup = {c: i for i, c in enumerate(class_names)}
    out = []
    for n in names:
        n = aliases.get(n, n)
        if n not in lookup:
            raise ValueError(f"{where}: label {n!r} is not in the class list {list(class_names)}")
        out.append(lookup[n])
    return np.asarray(out, dtype=np.int64)


def load_image(path: Path, size: int | None, channels: int = 3) -> np.ndarray:
    """One image as uint8 (H, W, C): decoded with PIL, converted to RGB (or L), squashed to
    ``size`` x ``size`` with an antialiased bilinear filter. The error names the file."""
    mode = "RGB" if channels == 3 else "L"
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} not found")
    try:
        with Image.open(path) as im:
            if size is not None and im.format == "JPEG":
                im.draft(mode, (size, size))  # JPEG DCT scaling: decode at >= size, much faster
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"image file {str(path)!r} is corrupt or not an image ({e})") from None
    return arr[..., None] if arr.ndim == 2 else arr


def load_images(paths: Sequence[Path], size: int | None, channels: int = 3) -> np.ndarray:
    """A batch of images (same size required when ``size`` is None)."""
    imgs = [load_image(p, size, channels) for p in paths]
    if not imgs:
        side = size or 1
        return np.zeros((0, side, side, channels), np.uint8)
    shapes = {a.shape for a in imgs}
    if len(shapes) > 1:
        raise ValueError(f"images differ in size {sorted(shapes)[:3]}; set dataset.image_size")
    return np.stack(imgs)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


class FileImagesMixin:
    """``images()`` for sources whose index has a ``path`` column relative to ``self.image_root``."""

    channels = 3

    @abc.abstractmethod
    def image_root(self) -> Path:
        """The folder that index paths are relative to (and confined to)."""

    def resolve(self, rel: str) -> Path:
        return inside(self.image_root(), rel)

    def images(self, table: pd.DataFrame, size: int | None) -> np.ndarray:
        if "path" not in table.columns:
            raise ValueError(f"source {self.name!r}: the index has no 'path' column")
        return load_images([self.resolve(p) for p in table["path"]], size, self.channels)
