"""Helpers shared by the file-based sources: paths kept inside the data root, CSV reading with
clear errors, and image decoding with PIL (each image decoded and resized exactly once, the
same way for the image cache and for a fresh decode; ``to_uint8`` holds the rule of every
pixel mode: 16-bit grey, palette, alpha, CMYK, EXIF orientation...)."""
from __future__ import annotations

import abc
import logging
import os
import stat
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

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


def files_inside(root: Path, relatives: Iterable[str]) -> list[str]:
    """``inside(root, rel)`` of many paths, as strings, with string operations only (the data
    fingerprint resolves every image of a source each time the workflow builds its job graph:
    10,015 HAM10000 paths in ~20 ms instead of ~1 s); any path that looks odd goes through
    ``inside`` for its error."""
    base = str(root)
    prefix = base.rstrip(os.sep) + os.sep
    out = []
    for rel in relatives:
        rel = str(rel)
        full = os.path.normpath(os.path.join(base, rel)) if rel and not os.path.isabs(rel) else ""
        if not full.startswith(prefix):
            full = str(inside(root, rel))  # raises, naming the path
        out.append(full)
    return out


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


class ImageModeError(ValueError):
    """An image whose pixel mode or values have no defined 8-bit conversion (names the file)."""


def _composite_on_black(im: Image.Image) -> Image.Image:
    """An image with alpha, alpha-composited on black: ``round(c * a / 255)`` per colour band."""
    target = "LA" if im.mode in ("LA", "La") else "RGBA"
    arr = np.asarray(im.convert(target), dtype=np.uint16)  # La/RGBa: un-premultiplied first
    colour, alpha = arr[..., :-1], arr[..., -1:]
    out = ((colour * alpha + 127) // 255).astype(np.uint8)
    return Image.fromarray(out[..., 0] if target == "LA" else out, "L" if target == "LA" else "RGB")


def _declared_range(im: Image.Image) -> tuple[int, int]:
    """(bits, largest value) of a 32-bit integer (mode ``I``) image: the TIFF BitsPerSample and
    SampleFormat tags when the file has them (signed: ``2**(bits-1) - 1``, unsigned:
    ``2**bits - 1``), else 16 bits (PIL's other ``I`` readers, PGM/PPM and older PNG, hold
    16-bit data)."""
    tags = getattr(im, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    fmt = tags.get(339) if tags is not None else None
    bits, fmt = (v[0] if isinstance(v, tuple) and v else v for v in (bits, fmt))
    bits = int(bits) if bits else 16
    return bits, (2 ** (bits - 1) - 1 if fmt == 2 else 2 ** bits - 1)


def to_uint8(im: Image.Image, channels: int, where: str) -> Image.Image:
    """A decoded PIL image as an 8-bit ``L`` (``channels`` 1) or ``RGB`` (``channels`` 3) image:
    the one place where pixel modes are turned into what the image cache holds.

    EXIF orientation is applied first (``ImageOps.exif_transpose``: the image as viewers show
    it). Then, per mode PIL opens (``v``: a pixel value; ``a``: alpha):

    =====================  =================================================================
    mode                   rule
    =====================  =================================================================
    ``L``, ``RGB``         unchanged
    ``1``                  0 -> 0, 1 -> 255
    ``I;16`` (``I;16L``,   16-bit grey, scaled by its bit depth: ``round(v / 257)``
    ``I;16B``, ``I;16N``)  (65535 -> 255; never clipped)
    ``I``                  32-bit integer grey, scaled by the file's bit depth ``b`` (TIFF
                           BitsPerSample; 16 for other formats, whose ``I`` data is 16-bit):
                           ``round(v * 255 / top)``, ``top = 2**b - 1`` (signed TIFF:
                           ``2**(b-1) - 1``); a value below 0 or above ``top`` is an error
    ``F``                  32-bit float grey: data within [0, 1] -> ``round(v * 255)``; NaN,
                           infinite or any value outside [0, 1] is an error (no per-image
                           min-max stretch, which would silently change contrast between
                           images)
    ``P`` (palette)        the palette's colours; with transparency (``tRNS``) as ``RGBA``
    ``LA``, ``La``,        alpha-composited on black: ``round(c * a / 255)`` per colour band
    ``RGBA``, ``RGBa``,    (fully transparent -> 0, opaque -> unchanged); alpha is not kept
    ``PA``
    ``CMYK``               PIL's conversion: ``R = (255 - C) * (255 - K) / 255`` (likewise G, B)
    ``YCbCr``              PIL's JPEG (ITU-R BT.601 full-range) conversion to RGB
    ``RGBX``               the padding band dropped
    16-bit RGB(A)          PIL opens 16-bit RGB(A) PNG/TIFF as 8-bit ``RGB(A)`` from each
                           value's high byte (``v >> 8``, within 1 of ``round(v / 257)``)
    anything else          an error naming the file (e.g. ``LAB``, ``HSV``, ``I;16S``)
    =====================  =================================================================

    Grey results are repeated to 3 bands for ``channels`` 3; colour results become grey for
    ``channels`` 1 with PIL's ITU-R 601-2 luma (``L = R*299/1000 + G*587/1000 + B*114/1000``).
    ``where`` (the file) is named in every error.
    """
    declared = _declared_range(im) if im.mode == "I" else None  # before the tags are lost
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in ("L", "RGB"):
        out = im
    elif mode in ("1", "CMYK", "YCbCr", "RGBX"):
        out = im.convert("L" if mode == "1" else "RGB")
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        v = np.asarray(im).astype(np.float64)
        out = Image.fromarray(np.rint(v / 257.0).astype(np.uint8), "L")
    elif mode == "I":
        bits, top = declared
        v = np.asarray(im).astype(np.int64)
        if v.size and (v.min() < 0 or v.max() > top):
            raise ImageModeError(f"image file {where}: mode I ({bits}-bit integer) values "
                                 f"{int(v.min())}..{int(v.max())} are outside 0..{top}; "
                                 "convert the image to unsigned 8- or 16-bit")
        out = Image.fromarray(np.rint(v * (255.0 / top)).astype(np.uint8), "L")
    elif mode == "F":
        v = np.asarray(im).astype(np.float64)
        finite = v[np.isfinite(v)]
        if finite.size < v.size or (v.size and (finite.min() < 0.0 or finite.max() > 1.0)):
            found = (f"{finite.min():g}..{finite.max():g}" if finite.size else "no finite value")
            raise ImageModeError(f"image file {where}: mode F (32-bit float) data must lie within "
                                 f"[0, 1], found {found}"
                                 f"{' and NaN/inf' if finite.size < v.size else ''}; "
                                 "rescale it or convert it to 8- or 16-bit integers")
        out = Image.fromarray(np.rint(v * 255.0).astype(np.uint8), "L")
    elif mode == "P":
        out = (_composite_on_black(im.convert("RGBA")) if "transparency" in im.info
               else im.convert("RGB"))
    elif mode in ("LA", "La", "RGBA", "RGBa", "PA"):
        out = _composite_on_black(im.convert("RGBA") if mode == "PA" else im)
    else:
        raise ImageModeError(f"image file {where}: pixel mode {mode!r} is not supported (supported: "
                             "L, RGB, 1, I;16, I, F, P, LA, RGBA, CMYK, YCbCr, RGBX); convert it "
                             "to RGB or grey")
    want = "RGB" if channels == 3 else "L"
    return out if out.mode == want else out.convert(want)


def load_image(path: Path, size: int | None, channels: int = 3) -> np.ndarray:
    """One image as uint8 (H, W, C): decoded with PIL, EXIF orientation applied, converted to
    RGB (or L) by ``to_uint8`` (its table: the rule of every pixel mode), squashed to
    ``size`` x ``size`` with an antialiased bilinear filter. The error names the file."""
    mode = "RGB" if channels == 3 else "L"
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} not found")
    try:
        with Image.open(path) as im:
            if size is not None and im.format == "JPEG":
                im.draft(mode, (size, size))  # JPEG DCT scaling: decode at >= size, much faster
            im.load()
            im = to_uint8(im, channels, repr(str(path)))
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except ImageModeError:
        raise
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


#: the largest fraction of a source's image files that may be unreadable (dangling links, no read
#: permission): they are left out of the index and named in the logs; above it, an error
MAX_UNREADABLE_FRACTION = 0.01


def list_images(folder: Path, skipped: list | None = None) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (``list_image_names``)."""
    return [folder / name for name in list_image_names(folder, skipped)]


def list_image_names(folder: Path, skipped: list | None = None) -> list[str]:
    """Names of the image files directly in ``folder``, sorted.

    An entry with an image extension that cannot be read (a dangling symbolic link, a file
    without read permission) is left out; with ``skipped`` given, ``(path, why)`` is appended to
    it so that the caller can count and name it (``check_unreadable``). Names and string paths,
    not Paths: the workflow indexes the data each time it builds its job graph, and 10,000
    Path objects cost ~0.2 s."""
    found = []
    base = str(folder)
    for name in sorted(os.listdir(base)):
        if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
            continue
        full = os.path.join(base, name)
        why = None
        try:
            st = os.stat(full)  # follows a symbolic link
        except FileNotFoundError:
            if not os.path.islink(full):
                continue  # removed while listed
            why = f"dangling symbolic link to {os.readlink(full)!r}"
        except OSError as e:
            why = f"cannot be read ({e.strerror or e})"
        else:
            if not stat.S_ISREG(st.st_mode):
                continue  # a folder named like an image
            if not os.access(full, os.R_OK):
                why = "no read permission"
        if why is None:
            found.append(name)
        elif skipped is not None:
            skipped.append((full, why))
    return found


def check_unreadable(skipped: list, n_readable: int, where: str) -> None:
    """An error naming the unreadable image files when they are more than
    ``MAX_UNREADABLE_FRACTION`` of all the files found, else a warning naming them."""
    if not skipped:
        return
    total = n_readable + len(skipped)
    shown = ", ".join(f"{p!r} ({why})" for p, why in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
    text = (f"{where}: {len(skipped)} of {total} image files cannot be read "
            f"({100 * len(skipped) / total:.1f}%): {shown}")
    if len(skipped) > MAX_UNREADABLE_FRACTION * total:
        raise ValueError(f"{text}; more than {MAX_UNREADABLE_FRACTION:.0%} of the files: fix or "
                         "remove them")
    logging.getLogger("lmdlt.sources").warning("%s; left out of the index", text)


class ChannelsOption:
    """``channels`` from ``dataset.options.channels`` (1 grey or 3 RGB), for sources whose files
    do not fix it (ImageFolder, CSV lists); put before ``FileImagesMixin`` in the bases."""

    @property
    def channels(self) -> int:
        c = self.opts["channels"]
        if c not in (1, 3):
            raise ValueError(f"dataset.options.channels must be 1 or 3, got {c!r}")
        return c


class FileImagesMixin:
    """``images()`` for sources whose index has a ``path`` column relative to ``self.image_root``."""

    channels = 3

    @abc.abstractmethod
    def image_root(self) -> Path:
        """The folder that index paths are relative to (and confined to)."""

    def resolve(self, rel: str) -> Path:
        return inside(self.image_root(), rel)

    def image_files(self, table: pd.DataFrame) -> list[str]:
        return files_inside(self.image_root(), table["path"])

    def images(self, table: pd.DataFrame, size: int | None) -> np.ndarray:
        if "path" not in table.columns:
            raise ValueError(f"source {self.name!r}: the index has no 'path' column")
        return load_images([self.resolve(p) for p in table["path"]], size, self.channels)
