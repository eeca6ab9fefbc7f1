"""lmdlt.data.sources._files: image decoding of every pixel mode PIL opens, against reference
conversions computed with numpy, through the image cache (docs/reliability.md lists what each
test pins)."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lmdlt.data.image_cache import build_image_cache
from lmdlt.data.sources import get_source
from lmdlt.data.sources._files import IMAGE_EXTENSIONS, load_image


H, W = 4, 6  # not square: a missed or wrong EXIF transpose changes the shape


def _png_by_hand(path, arr: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG written without PIL (PIL cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _rng(seed=0):
    return np.random.default_rng(seed)


def _grey(ref):
    """What a grey reference looks like in a 3-channel cache."""
    return np.repeat(ref[..., None], 3, axis=-1)


def _r(x):
    return np.rint(x).astype(np.int64)


# Each case writes one file and returns the reference (H, W, 3) pixels computed with numpy only
# (and the tolerance: exact unless PIL's own colour-space conversion is involved).
def case_L(path):
    a = _rng().integers(0, 256, (H, W), dtype=np.uint8)
    Image.fromarray(a).save(path.with_suffix(".png"))
    return _grey(a), 0


def case_1bit(path):
    a = _rng().integers(0, 2, (H, W)).astype(bool)
    Image.fromarray(a).convert("1").save(path.with_suffix(".png"))
    return _grey(a * 255), 0


def case_I16(path):  # the X-ray / DICOM-export case: was all 255
    a = _rng().integers(0, 65536, (H, W)).astype(np.uint16)
    a[0, :3] = [0, 65535, 257 * 100]
    im = Image.fromarray(a)
    assert im.mode == "I;16"
    im.save(path.with_suffix(".png"))
    return _grey(_r(a / 257)), 0


def case_I16B(path):
    a = _rng(1).integers(0, 65536, (H, W)).astype(np.uint16)
    Image.frombytes("I;16B", (W, H), a.astype(">u2").tobytes()).save(path.with_suffix(".tif"))
    with Image.open(path.with_suffix(".tif")) as im:
        assert im.mode == "I;16B"
    return _grey(_r(a / 257)), 0


def case_I32(path):  # 32-bit integer TIFF: scaled by its 32-bit depth
    a = _rng(2).integers(0, 2**31 - 1, (H, W)).astype(np.int32)
    Image.fromarray(a).save(path.with_suffix(".tif"))
    return _grey(_r(a.astype(np.float64) * 255 / (2**31 - 1))), 0  # PIL writes signed 32-bit


def case_I_pgm16(path):  # a 16-bit PGM opens as mode I holding 16-bit data
    a = _rng(3).integers(0, 65536, (H, W)).astype(np.uint16)
    path.with_suffix(".pgm").write_bytes(f"P5\n{W} {H}\n65535\n".encode() + a.astype(">u2").tobytes())
    with Image.open(path.with_suffix(".pgm")) as im:
        assert im.mode == "I"
    return _grey(_r(a / 257)), 0


def case_F(path):
    a = _rng(4).random((H, W)).astype(np.float32)
    a[0, :2] = [0.0, 1.0]
    Image.fromarray(a).save(path.with_suffix(".tif"))
    return _grey(_r(a.astype(np.float64) * 255)), 0


def case_P(path):
    pal = _rng(5).integers(0, 256, (256, 3), dtype=np.uint8)
    idx = _rng(6).integers(0, 256, (H, W), dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(pal.tobytes())
    im.save(path.with_suffix(".png"))
    return pal[idx].astype(np.int64), 0


def case_P_transparency(path):
    pal = _rng(7).integers(0, 256, (16, 3), dtype=np.uint8)
    alpha = _rng(8).integers(0, 256, 16, dtype=np.uint8)
    alpha[0], alpha[1] = 0, 255
    idx = _rng(9).integers(0, 16, (H, W), dtype=np.uint8)
    idx[0, :2] = [0, 1]
    im = Image.fromarray(idx, "P")
    im.putpalette(pal.tobytes())
    im.save(path.with_suffix(".png"), transparency=alpha.tobytes())
    return _r(pal[idx].astype(np.float64) * alpha[idx][..., None] / 255), 0


def case_LA(path):
    la = _rng(10).integers(0, 256, (H, W, 2), dtype=np.uint8)
    Image.fromarray(la, "LA").save(path.with_suffix(".png"))
    return _grey(_r(la[..., 0].astype(np.float64) * la[..., 1] / 255)), 0


def case_RGBA(path):
    a = _rng(11).integers(0, 256, (H, W, 4), dtype=np.uint8)
    a[0, 0, 3], a[0, 1, 3] = 0, 255
    Image.fromarray(a, "RGBA").save(path.with_suffix(".png"))
    return _r(a[..., :3].astype(np.float64) * a[..., 3:] / 255), 0


def case_CMYK(path):
    a = _rng(12).integers(0, 256, (H, W, 4), dtype=np.uint8)
    Image.fromarray(a, "CMYK").save(path.with_suffix(".tif"))
    c, k = a[..., :3].astype(np.float64), a[..., 3:].astype(np.float64)
    return _r((255 - c) * (255 - k) / 255), 1


def case_YCbCr(path):
    a = _rng(13).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(a, "YCbCr").save(path.with_suffix(".tif"))
    with Image.open(path.with_suffix(".tif")) as im:
        assert im.mode == "YCbCr"
    y, cb, cr = (a[..., i].astype(np.float64) for i in range(3))
    rgb = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                    y + 1.772 * (cb - 128)], axis=-1)
    return _r(np.clip(rgb, 0, 255)), 1


def case_RGB16(path):  # PIL opens 16-bit RGB as 8-bit from the high byte: within 1 of v / 257
    a = _rng(14).integers(0, 65536, (H, W, 3)).astype(np.uint16)
    _png_by_hand(path.with_suffix(".png"), a, color_type=2)
    return _r(a / 257), 1


def case_EXIF_rotated(path):  # stored 6 x 4, orientation 6 (rotate 90 deg clockwise): shown 4 x 6
    a = _rng(15).integers(0, 256, (W, H, 3), dtype=np.uint8)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(path.with_suffix(".png"), exif=exif)
    return np.rot90(a, k=-1).astype(np.int64), 0


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def cached_pixels(root, channels=3, size=None, tmp=None):
    src = get_source("imagefolder", str(root), {"channels": channels})
    out = (tmp or root.parent) / "images.h5"
    build_image_cache(src, size, out, {"stage": "image_cache"})
    import h5py

    with h5py.File(out, "r") as f:
        return f["images"][:].astype(np.int64)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cached_pixels_match_a_reference_conversion_per_mode(name, tmp_path):
    (tmp_path / "data" / "c0").mkdir(parents=True)
    ref, atol = CASES[name](tmp_path / "data" / "c0" / "img")
    (path,) = (tmp_path / "data" / "c0").iterdir()
    if path.suffix in IMAGE_EXTENSIONS:
        got = cached_pixels(tmp_path / "data")[0]
    else:  # a format ImageFolder does not index (PGM): the decoder the cache uses, directly
        got = load_image(path, None).astype(np.int64)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= atol, f"{name}: max difference {np.abs(got - ref).max()}"


def test_16bit_grey_resized_and_in_one_channel(tmp_path):
    """The 16-bit case through a resize and a 1-channel cache: never 255 everywhere."""
    (tmp_path / "data" / "c0").mkdir(parents=True)
    Image.fromarray(np.full((10, 12), 40000, np.uint16)).save(tmp_path / "data" / "c0" / "a.png")
    got = cached_pixels(tmp_path / "data", channels=1, size=4)
    assert got.shape == (1, 4, 4, 1) and (got == round(40000 / 257)).all()


def test_colour_to_one_channel_is_the_luma(tmp_path):
    (tmp_path / "data" / "c0").mkdir(parents=True)
    a = _rng(16).integers(0, 256, (H, W, 4), dtype=np.uint8)
    Image.fromarray(a, "RGBA").save(tmp_path / "data" / "c0" / "a.png")
    rgb = a[..., :3].astype(np.float64) * a[..., 3:] / 255
    rgb = np.rint(rgb)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    got = cached_pixels(tmp_path / "data", channels=1)[0, ..., 0]
    assert np.abs(got - luma).max() <= 1


@pytest.mark.parametrize("what", ["LAB", "F_out_of_range", "F_nan", "I_negative"])
def test_an_image_without_a_defined_conversion_is_an_error_naming_the_file(what, tmp_path):
    folder = tmp_path / "data" / "c0"
    folder.mkdir(parents=True)
    path = folder / "bad.tif"
    if what == "LAB":
        Image.new("LAB", (W, H), (50, 10, 10)).save(path)
    elif what == "F_out_of_range":
        Image.fromarray(np.full((H, W), 3.5, np.float32)).save(path)
    elif what == "F_nan":
        Image.fromarray(np.full((H, W), np.nan, np.float32)).save(path)
    else:
        Image.fromarray(np.full((H, W), -5, np.int32)).save(path)
    with pytest.raises(ValueError, match="bad.tif") as e:
        cached_pixels(tmp_path / "data")
    assert "corrupt" not in str(e.value)
