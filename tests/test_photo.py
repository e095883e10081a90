"""photo.py: how a user's file becomes the model's input, and every refusal's message."""

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import common.photo

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cat_0003.jpg"
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def read(path, size=32) -> np.ndarray:
    return common.photo.load_photo(path, size).permute(1, 2, 0).numpy().astype(int)


def near(color, expected, tol=12):
    return np.abs(np.asarray(color) - np.asarray(expected)).max() <= tol


def jpeg_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny real JPEG whose header claims width x height (a decompression bomb's shape)."""
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 90).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def test_a_cifar_image_is_read_unchanged():
    image = common.photo.load_photo(EXAMPLE, 32)
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(Image.open(EXAMPLE).convert("RGB")))


def test_the_size_is_the_models(tmp_path):
    Image.new("RGB", (100, 80), RED).save(tmp_path / "red.png")
    assert common.photo.load_photo(tmp_path / "red.png", 48).shape == (3, 48, 48)


def test_center_crop_then_resize(tmp_path):
    wide = Image.new("RGB", (300, 100), RED)
    wide.paste(Image.new("RGB", (100, 100), BLUE), (100, 0))
    wide.save(tmp_path / "wide.png")
    image = read(tmp_path / "wide.png")
    # Only the middle square is left; bicubic lets a trace of red into the edge columns.
    assert near(image.reshape(-1, 3).min(0), BLUE, 25) and near(image.reshape(-1, 3).max(0), BLUE, 25)


def test_transparency_is_white(tmp_path):
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (32, 32), BLUE + (255,)), (16, 16))
    rgba.save(tmp_path / "rgba.png")
    image = read(tmp_path / "rgba.png")
    assert near(image[0, 0], WHITE) and near(image[16, 16], BLUE)

    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(0, (0, 0, 20, 40))
    palette.save(tmp_path / "p.png", transparency=0)  # the left half: transparent black
    image = read(tmp_path / "p.png")
    assert near(image[16, 0], WHITE) and near(image[16, 31], RED)

    Image.new("LA", (40, 40), (0, 0)).save(tmp_path / "la.png")
    assert near(read(tmp_path / "la.png")[5, 5], WHITE)


def test_grayscale_palette_and_cmyk_become_rgb(tmp_path):
    Image.new("L", (40, 40), 100).save(tmp_path / "gray.png")
    assert near(read(tmp_path / "gray.png")[7, 7], (100, 100, 100), 0)
    Image.new("RGB", (40, 40), RED).convert("P").save(tmp_path / "p.gif")
    assert near(read(tmp_path / "p.gif")[7, 7], RED)
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert near(read(tmp_path / "cmyk.jpg")[7, 7], RED, 20)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_grayscale_is_scaled_to_eight_bits(tmp_path, suffix):
    levels = np.zeros((64, 64), np.uint16)
    levels[:, 32:] = 65535
    levels[:, :32] = 32896  # 128 * 257
    Image.fromarray(levels).save(tmp_path / f"gray16{suffix}")
    assert Image.open(tmp_path / f"gray16{suffix}").mode.startswith("I")
    image = read(tmp_path / f"gray16{suffix}")
    assert near(image[5, 2], (128, 128, 128), 1) and near(image[5, 30], (255, 255, 255), 0)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 64x32: left half red, right half blue. Orientation 6 says "rotate 90 degrees
    # clockwise to show": upright it is 32x64, red on top, blue below.
    stored = Image.new("RGB", (64, 32), RED)
    stored.paste(Image.new("RGB", (32, 32), BLUE), (32, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = read(tmp_path / "rotated.jpg")
    assert near(image[2, 2], RED, 30) and near(image[2, 29], RED, 30)
    assert near(image[29, 2], BLUE, 30) and near(image[29, 29], BLUE, 30)


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 40), c) for c in (RED, BLUE, WHITE)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(tmp_path / "anim.gif").n_frames == 3
    assert near(read(tmp_path / "anim.gif")[5, 5], RED)


def test_huge_jpeg_is_decoded_small(tmp_path, monkeypatch):
    Image.new("L", (10000, 10000), 90).save(tmp_path / "huge.jpg", quality=50)
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or load(self))
    assert near(read(tmp_path / "huge.jpg")[9, 9], (90, 90, 90), 3)
    assert set(decoded) == {(1250, 1250)}  # 1/8 scale: 1.5 MB instead of 100 MB


def test_a_photo_beyond_pillows_bomb_guard_is_read_at_reduced_scale(tmp_path):
    # 13600 x 13600 = 185 megapixels: over twice Pillow's 89 MP guard, which refuses it
    # in Image.open, yet at 1/8 scale a 1700 x 1700 decode.
    Image.new("L", (13600, 13600), 60).save(tmp_path / "camera.jpg", quality=30)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "camera.jpg")
    assert near(read(tmp_path / "camera.jpg")[3, 3], (60, 60, 60), 3)


def test_jpeg_decompression_bombs_stay_refused(tmp_path):
    with pytest.raises(common.photo.UserError, match="too many pixels to decode safely"):
        common.photo.load_photo(jpeg_claiming(tmp_path / "bomb.jpg", 60000, 60000), 32)
    with pytest.raises(common.photo.UserError, match="too many pixels to decode safely"):
        common.photo.load_photo(jpeg_claiming(tmp_path / "wide.jpg", 65000, 8000), 32)  # 520 MP


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: Image.new("RGB", (1, 1)).save(p, "PNG"), "1x1 pixels; it needs at least 8x8"),
        (lambda p: Image.new("1", (10000, 10000)).save(p, "PNG"), "10000x10000 (100 megapixels), more than"),
        (lambda p: Image.new("1", (14000, 14000)).save(p, "PNG"), "too many pixels to decode safely"),
        (lambda p: p.write_text("hello"), "Unsupported format: this app reads JPEG, PNG, GIF, WebP"),
        (lambda p: Image.new("RGB", (40, 40)).save(p, "EPS"), "Unsupported format"),
        (lambda p: Image.new("RGB", (40, 40)).save(p, "PPM"), "Unsupported format"),
        (lambda p: Image.new("RGB", (40, 40)).save(p, "ICO"), "Unsupported format"),
    ],
)
def test_bad_images_get_one_clear_message(tmp_path, make, message):
    path = tmp_path / "upload.png"
    make(path)
    with pytest.raises(common.photo.UserError, match=re.escape(message)):
        common.photo.load_photo(path, 32)


def test_every_format_the_page_names_is_read(tmp_path):
    for fmt in common.photo.FORMATS:
        path = tmp_path / f"red.{fmt.lower()}"
        Image.new("RGB", (40, 40), RED).save(path, fmt)
        assert near(read(path)[20, 20], RED, 20), fmt


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(common.photo.UserError, match="damaged or incomplete"):
        common.photo.load_photo(tmp_path / "cut.jpg", 32)


def test_a_deleted_file_has_expired_and_no_message_names_a_server_path(tmp_path):
    with pytest.raises(common.photo.UserError, match="This picture has expired") as expired:
        common.photo.load_photo(tmp_path / "deleted.png", 32)
    (tmp_path / "folder.png").mkdir()  # a file system's error, not a decoder's
    with pytest.raises(common.photo.UserError, match="damaged or incomplete") as unreadable:
        common.photo.load_photo(tmp_path / "folder.png", 32)
    assert str(tmp_path) not in str(expired.value) + str(unreadable.value)


def test_no_image_is_a_clear_error():
    with pytest.raises(common.photo.UserError, match="No image"):
        common.photo.load_photo(None, 32)


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def test_data_urls_meet_the_upload_limits(monkeypatch):
    assert near(read(common.photo.read_data_url(data_url(Image.new("RGB", (40, 40), BLUE))))[3, 3], BLUE)
    # 144 megapixels in a few kilobytes: refused from the header, before any decoding.
    bomb = common.photo.read_data_url(data_url(Image.new("1", (12000, 12000))))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(common.photo.UserError, match="12000x12000 .* more than the 25 megapixels"):
        common.photo.load_photo(bomb, 32)


def test_oversized_or_malformed_data_urls_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(base64, "b64decode", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(
        common.photo.UserError,
        match=r"about 2.1 MB; inline images up to 2 MB .* files "
        r"\(up to 20 MB\)",
    ):
        common.photo.read_data_url("data:image/png;base64," + "A" * 2_800_000)
    with pytest.raises(common.photo.UserError, match="must be a base64 `data:` URL"):
        common.photo.read_data_url("data:image/png,rawbytes")
    monkeypatch.undo()
    assert len(common.photo.read_data_url("data:image/png;base64," + "A" * 2_666_664).getvalue()) == 1_999_998
    with pytest.raises(common.photo.UserError, match="not valid base64"):
        common.photo.read_data_url("data:image/png;base64,@@@@")


def progressive_jpeg(size: tuple[int, int], repeat_last_scan: int = 0) -> io.BytesIO:
    """A progressive JPEG, its last scan repeated (a scan-count bomb's shape)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 140, 200)).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    last = data.rfind(b"\xff\xda")
    scan = data[last:-2]  # the last scan, up to the end-of-image marker
    return io.BytesIO(data[:-2] + scan * repeat_last_scan + data[-2:])


def test_a_progressive_jpeg_with_hundreds_of_scans_is_refused_before_decoding(monkeypatch):
    ordinary = progressive_jpeg((64, 48))
    assert Image.open(ordinary).info.get("progressive")
    assert near(read(ordinary)[0, 0], (90, 140, 200))
    bomb = progressive_jpeg((64, 48), repeat_last_scan=200)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or None)
    with pytest.raises(common.photo.UserError, match=r"has 2\d\d progressive scans, more than the 40 .*baseline"):
        common.photo.load_photo(bomb, 32)
    assert decoded == []


def test_a_progressive_jpeg_is_held_to_the_pixels_decoded_in_full():
    # 30 MP: a baseline JPEG of it decodes at 1/8 scale; a progressive one cannot.
    width, height = 6000, 5000
    baseline = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 200)).save(baseline, "JPEG")
    assert near(read(baseline)[5, 5], (90, 140, 200))
    with pytest.raises(common.photo.UserError, match=r"progressive JPEG of 30 megapixels.*up to 25 megapixels"):
        common.photo.load_photo(progressive_jpeg((width, height)), 32)


def test_an_empty_or_oversized_file_is_refused_by_its_size(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(common.photo.UserError, match=r"empty \(0 bytes\)"):
        common.photo.load_photo(empty, 32)
    big = tmp_path / "big.jpg"
    big.write_bytes(EXAMPLE.read_bytes() + b"\0" * common.photo.MAX_FILE_BYTES)
    with pytest.raises(common.photo.UserError, match=r"is 20.0 MB; images up to 20 MB are accepted"):
        common.photo.load_photo(big, 32)
    with pytest.raises(common.photo.UserError, match="images up to 20 MB are accepted"):
        common.photo.load_photo(io.BytesIO(big.read_bytes()), 32)


def test_a_phones_multi_picture_jpeg_is_decoded_at_reduced_scale_like_any_jpeg(tmp_path):
    # 30 MP: over the 25 MP decoded in full, fine for a JPEG decoded at 1/8.
    first, second = Image.new("RGB", (6000, 5000), RED), Image.new("RGB", (64, 64), BLUE)
    first.save(tmp_path / "phone.mpo", "MPO", save_all=True, append_images=[second])
    assert Image.open(tmp_path / "phone.mpo").format == "MPO"
    assert near(read(tmp_path / "phone.mpo")[5, 5], RED)


def test_a_32_bit_image_of_8_bit_values_keeps_them(tmp_path):
    levels = np.full((40, 40), 200, np.int32)
    Image.fromarray(levels, "I").save(tmp_path / "int32.tif")
    assert Image.open(tmp_path / "int32.tif").mode == "I"
    assert near(read(tmp_path / "int32.tif")[5, 5], (200, 200, 200), 1)


def test_a_sixteen_bit_pngs_transparent_level_becomes_white(tmp_path):
    levels = np.full((64, 64), 0, np.uint16)
    levels[:, 32:] = 1000  # transparent: the tRNS level
    Image.fromarray(levels).save(tmp_path / "gray16t.png", transparency=1000)
    assert Image.open(tmp_path / "gray16t.png").info["transparency"] == 1000
    image = read(tmp_path / "gray16t.png")
    assert near(image[5, 2], (0, 0, 0), 1) and near(image[5, 30], WHITE, 1)
