import numpy as np
import pytest
from PIL import Image

from simvg.data.images import ImageReadError, load_image


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # white band on the left of the stored image
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    loaded = load_image(path)
    assert (loaded.width, loaded.height) == (20, 40)
    assert loaded.pixels.shape == (40, 20, 3)
    assert loaded.pixels[:10].mean() > 200  # the band is now at the top


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "1"])
def test_modes_become_rgb_uint8(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.full((16, 24), 40000, np.uint16))
    elif mode == "I":
        image = Image.fromarray(np.full((16, 24), 65535, np.int32))
    else:
        image = base.convert(mode)
    loaded = load_image(image)
    assert loaded.pixels.dtype == np.uint8 and loaded.pixels.shape == (16, 24, 3)
    if mode in ("I;16", "I"):
        expected = round(40000 / 257) if mode == "I;16" else 255
        assert abs(int(loaded.pixels[0, 0, 0]) - expected) <= 1


def test_transparent_pixels_are_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    loaded = load_image(Image.fromarray(rgba, "RGBA"))
    assert (loaded.pixels == 255).all()


def test_arrays_of_several_dtypes():
    assert load_image(np.full((5, 6), 65535, np.uint16)).pixels.max() == 255
    assert load_image(np.ones((5, 6, 3), np.float32)).pixels.max() == 255
    assert load_image(np.zeros((5, 6, 4), np.uint8)).pixels.shape == (5, 6, 3)
    with pytest.raises(ImageReadError, match="shape"):
        load_image(np.zeros((5, 6, 2), np.uint8))
    with pytest.raises(ImageReadError, match="zero size"):
        load_image(np.zeros((0, 6, 3), np.uint8))
    with pytest.raises(ImageReadError, match=r"values in \[0, 1\]; this one holds 0 to 255"):
        load_image(np.linspace(0, 255, 30, dtype=np.float32).reshape(5, 6))  # 0-255 floats, not 0-1


def test_dark_16_bit_images_stay_dark(tmp_path):
    # A 16-bit PNG whose values all lie below 256 is nearly black, not an 8-bit image.
    Image.fromarray(np.full((8, 8), 200, np.uint16)).save(tmp_path / "dark16.png")
    assert load_image(tmp_path / "dark16.png").pixels.max() <= 1


def test_huge_images_are_downscaled_before_rotation(tmp_path, monkeypatch):
    from PIL import ImageOps

    image = Image.new("RGB", (3000, 1000), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "huge.png", exif=exif)
    rotated_sizes = []
    transpose = ImageOps.exif_transpose

    def recording(image, **kwargs):
        rotated_sizes.append(image.size)
        return transpose(image, **kwargs)

    monkeypatch.setattr(ImageOps, "exif_transpose", recording)
    loaded = load_image(tmp_path / "huge.png", max_side=600)
    assert rotated_sizes == [(600, 200)]  # the full-size image is never copied by the rotation
    assert (loaded.width, loaded.height) == (1000, 3000) and loaded.pixels.shape == (600, 200, 3)


def test_bad_files_name_their_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        load_image(tmp_path / "nothing.png")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty \(0 bytes\).*empty.jpg"):
        load_image(empty)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageReadError, match="junk.png"):
        load_image(junk)
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        load_image(truncated)
    with pytest.raises(ImageReadError, match="directory"):
        load_image(tmp_path)


def test_large_images_are_downscaled_but_keep_original_size(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (5000, 2500), (10, 200, 30)).save(path)
    loaded = load_image(path, max_side=1024)
    assert (loaded.width, loaded.height) == (5000, 2500)
    assert max(loaded.pixels.shape[:2]) <= 1024
    assert abs(loaded.pixels.shape[1] / loaded.pixels.shape[0] - 2.0) < 0.02


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # PIL refuses > 2x this at open
    with pytest.raises(ImageReadError, match="too large.*bomb.png"):
        load_image(path)


def test_the_callers_image_is_left_as_it_was():
    image = Image.new("RGB", (3000, 1000), (0, 0, 255))
    loaded = load_image(image, max_side=600)
    assert image.size == (3000, 1000) and loaded.pixels.shape == (200, 600, 3)


def test_16_bit_png_read_as_32_bit_by_older_pillow_is_scaled_as_16_bit():
    image = Image.fromarray(np.full((4, 4), 200, np.int32))  # mode "I", as Pillow < 10.3 opens 16-bit PNGs
    image.format = "PNG"
    assert load_image(image).pixels.max() <= 1


def test_float_arrays_with_nan_are_refused_by_name():
    array = np.full((4, 4), 0.5, np.float32)
    array[0, 0] = np.nan
    with pytest.raises(ImageReadError, match="NaN or inf"):
        load_image(array)
