"""Dense patch-text heatmaps: cosine maps against a brute-force loop, the colour map, the PNG overlay
(the image's size, the hottest cell where it was put), and `vlalign dense` with a tiny FG-CLIP 1."""


import numpy as np
import pytest
from PIL import Image
from test_fine_grained import make_tiny_fgclip

from vlalign_jax.eval.dense_maps import colormap, render_heatmap, similarity_heatmap
from vlalign_jax.eval.region_encoders import load_region_model, region_encoders


def luminance(rgb):
    rgb = np.asarray(rgb, np.float64)
    return rgb @ np.array([0.2126, 0.7152, 0.0722])


def constructed_dense(hot=(2, 4), shape=(4, 6), dim=8, seed=0):
    """Random patches nearly orthogonal to the text, except `hot`, which is the text direction scaled."""
    rng = np.random.default_rng(seed)
    text = np.zeros(dim)
    text[0] = 2.0
    dense = rng.normal(size=(*shape, dim))
    dense[..., 0] = 0.1 * rng.uniform(-1, 1, size=shape)
    dense[hot] = 5 * text + 0.01 * rng.normal(size=dim)
    return dense, text


def test_similarity_heatmap_is_the_cosine_of_each_patch():
    dense, text = constructed_dense()
    dense[0, 0] = 0  # a zero patch scores 0
    heat = similarity_heatmap(dense, text)
    assert heat.shape == (4, 6) and heat.dtype == np.float32
    for i in range(4):
        for j in range(6):
            norm = np.linalg.norm(dense[i, j]) * np.linalg.norm(text)
            expected = dense[i, j] @ text / norm if norm else 0.0
            assert heat[i, j] == pytest.approx(expected, abs=1e-6)
    assert np.unravel_index(np.argmax(heat), heat.shape) == (2, 4)
    with pytest.raises(ValueError, match=r"need dense \[h, w, D\] and text \[D\]"):
        similarity_heatmap(dense, text[:3])
    with pytest.raises(ValueError, match="zero or not finite"):
        similarity_heatmap(dense, np.zeros(8))


def test_colormap_brightens_monotonically():
    values = np.linspace(0, 1, 257)
    colours = colormap(values)
    assert colours.dtype == np.uint8 and colours.shape == (257, 3)
    assert np.all(np.diff(luminance(colours)) >= 0)
    assert tuple(colormap(np.array(0.0))) == (0, 0, 0) and tuple(colormap(np.array(1.0))) == (255, 255, 200)
    np.testing.assert_array_equal(colormap(np.array([-3.0, 7.0])), colormap(np.array([0.0, 1.0])))


@pytest.mark.parametrize("hot", [(2, 4), (0, 0), (3, 5)])
def test_png_has_the_image_size_and_the_hot_cell_where_it_was_put(tmp_path, hot):
    dense, text = constructed_dense(hot)
    width, height = 60, 40  # 10 x 10 pixels per cell of the 4 x 6 map
    path = tmp_path / "maps" / "heat.png"
    render_heatmap(Image.new("RGB", (width, height)), similarity_heatmap(dense, text), path, alpha=1.0)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (width, height) and png.mode == "RGB"
        pixels = np.asarray(png)
    row, col = np.unravel_index(np.argmax(luminance(pixels)), (height, width))
    assert (row // 10, col // 10) == hot
    # Bilinear upsampling samples between cell centres, so no pixel need take the top colour exactly;
    # the hot cell's centre is still brighter than everything outside that cell.
    bright = luminance(pixels)
    outside = np.ones((height, width), bool)
    outside[hot[0] * 10:(hot[0] + 1) * 10, hot[1] * 10:(hot[1] + 1) * 10] = False
    assert bright[hot[0] * 10 + 5, hot[1] * 10 + 5] > bright[outside].max()
    assert bright.max() > 0.8 * luminance(colormap(np.array(1.0)))


def test_overlay_blends_over_the_image(tmp_path):
    image = Image.new("RGB", (23, 17), (0, 128, 255))
    heat = np.array([[0.0, 1.0], [0.5, 0.25]])
    overlay = render_heatmap(image, heat, alpha=0.25)
    assert overlay.size == (23, 17)
    pixels = np.asarray(overlay, np.float64)
    assert np.abs(pixels[0, 0] - (0.75 * np.array([0, 128, 255]) + 0.25 * colormap(np.array(0.0)))).max() <= 0.5
    assert np.abs(pixels[0, -1] - (0.75 * np.array([0, 128, 255]) + 0.25 * colormap(np.array(1.0)))).max() <= 0.5
    # A constant map draws at the low end; a fixed range clips.
    np.testing.assert_array_equal(np.asarray(render_heatmap(image, np.ones((3, 3)), alpha=1.0)), 0)
    clipped = np.asarray(render_heatmap(image, np.full((2, 2), 5.0), alpha=1.0, value_range=(0.0, 1.0)))
    assert tuple(clipped[8, 11]) == (255, 255, 200)
    with pytest.raises(ValueError, match=r"finite \[h, w\] array"):
        render_heatmap(image, np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="alpha"):
        render_heatmap(image, heat, alpha=1.5)


def test_dense_command_writes_the_heatmap_over_the_image(tmp_path, capsys):
    checkpoint = make_tiny_fgclip(tmp_path / "fg-clip-tiny")
    image = Image.new("RGB", (48, 30))
    image.paste((255, 0, 0), (0, 0, 24, 30))
    image.save(tmp_path / "photo.png")
    from vlalign_jax.cli import main

    out = tmp_path / "out" / "heat.png"
    assert main(["dense", "--checkpoint", str(checkpoint), "--image", str(tmp_path / "photo.png"),
                 "--text", "a red square", "--out", str(out)]) == 0
    assert "4x4 patches, short walk" in capsys.readouterr().out  # FG-CLIP 1's dense map pairs with short text
    with Image.open(out) as png:
        assert png.size == (48, 30) and png.format == "PNG"
        written = np.asarray(png.convert("RGB"))
    # The same map by hand from the model's encoders, rendered the same way.
    encoders = region_encoders(*load_region_model(checkpoint))
    heat = similarity_heatmap(encoders.encode_dense(image), encoders.encode_texts(["a red square"], "short")[0])
    assert heat.shape == (4, 4)
    np.testing.assert_array_equal(written, np.asarray(render_heatmap(image, heat, alpha=0.6)))
