"""`vlalign eval` over several checkpoints and suites: the JSON equals the evaluation functions called
with the same encoders, the markdown has a row per checkpoint, the PNG is the bar chart of the
headline metrics; encoders sharded over the 8 test devices give the unsharded embeddings; every
family's encoders match the ones `vlalign fine-grained` builds; bad command lines exit with 2."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from PIL import Image
from random_weights import scaled_random_params
from test_fine_grained import make_tiny_fgclip

from vlalign_jax import converters
from vlalign_jax.cli import main
from vlalign_jax.eval import suites
from vlalign_jax.eval.bar_chart import bar_chart
from vlalign_jax.eval.encoders import device_mesh, dual_encoders, load_model, padded_rows
from vlalign_jax.eval.plots import PALETTE
from vlalign_jax.eval.retrieval import evaluate_retrieval
from vlalign_jax.eval.retrieval_data import load_dataset, read_urban1k
from vlalign_jax.eval.zeroshot import evaluate_zeroshot
from vlalign_jax.eval.zeroshot_data import image_folder
from vlalign_jax.models.clip import CLIP, abstract_params
from vlalign_jax.models.clip_configs import get_clip_config

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 230)}
BATCH = "4"  # every encoder call in the command and in the direct calls: the same compiled shapes


random_params = scaled_random_params


def solid(colour, size, seed):
    noise = np.random.default_rng(seed).integers(-20, 20, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))


def write_colours(root):
    """An image folder: 3 classes x 3 images of different sizes."""
    for c, (name, colour) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True)
        for i in range(3):
            solid(colour, (40 + 7 * i, 30 + 5 * c), 10 * c + i).save(root / name / f"{i}.png")
    return root


def write_karpathy(root):
    """A Karpathy-split COCO file: 5 test images with 2 captions each (one image has 3), one train image."""
    (root / "val2014").mkdir(parents=True)
    images = []
    for i in range(6):
        name = list(COLOURS)[i % 3]
        solid(COLOURS[name], (36 + 4 * i, 32), 100 + i).save(root / "val2014" / f"im{i}.png")
        captions = [f"a {name} square number {i}", f"the {name} picture {i}"] + (["one more caption"] if i == 2 else [])
        images.append({"filepath": "val2014", "filename": f"im{i}.png", "split": "train" if i == 5 else "test",
                       "sentences": [{"raw": c} for c in captions], "imgid": i})
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two tiny random CLIPs, an open_clip file and a training workdir, evaluated by one command."""
    from vlalign_jax.train.checkpoint import Checkpointer
    from vlalign_jax.train.export import save_model_config

    root = tmp_path_factory.mktemp("suites")
    model = CLIP(get_clip_config("tiny"))
    converters.save(model, random_params(abstract_params(model.config), 0), root / "tiny.pt", "open_clip")
    workdir = root / "run"
    save_model_config(model, workdir)
    checkpointer = Checkpointer(workdir, async_save=False)
    checkpointer.save(3, {"params": random_params(abstract_params(model.config), 1)}, None, {})
    checkpointer.wait()
    checkpointer.close()
    colours, coco = write_colours(root / "colours"), write_karpathy(root / "coco")
    (root / "templates.txt").write_text("a photo of a {}.\na {} thing\n")
    checkpoints = [str(root / "tiny.pt"), str(workdir)]
    out, plot = root / "out" / "results.json", root / "out" / "cmp.png"
    args = ["eval", "--checkpoint", checkpoints[0], "--checkpoint", checkpoints[1],
            "--suite", "zeroshot:colours", "--data", str(colours), "--templates", str(root / "templates.txt"),
            "--suite", "retrieval:coco", "--data", str(coco), "--batch-size", BATCH, "--out", str(out),
            "--plot", str(plot)]
    assert main(args) == 0
    return {"root": root, "checkpoints": checkpoints, "out": out, "plot": plot,
            "results": json.loads(out.read_text())}


def test_results_equal_the_evaluations_called_with_the_same_encoders(setup):
    root, results = setup["root"], setup["results"]
    assert list(results) == setup["checkpoints"]
    colours = dataclasses.replace(image_folder(root / "colours"), name="colours")
    coco = load_dataset("coco", str(root / "coco" / "dataset_coco.json"), str(root / "coco"))
    assert coco.num_images == 5 and coco.num_texts == 11
    for checkpoint in setup["checkpoints"]:
        assert list(results[checkpoint]) == ["zeroshot:colours", "retrieval:coco"]
        model, params = load_model(checkpoint)
        encoders = dual_encoders(model, params, checkpoint=checkpoint, batch_size=int(BATCH))
        expected = evaluate_zeroshot(colours, encoders.encode_images, encoders.encode_texts,
                                     str(root / "templates.txt"), batch_size=int(BATCH), text_batch_size=int(BATCH))
        assert results[checkpoint]["zeroshot:colours"] == json.loads(json.dumps(expected))
        assert expected["num_examples"] == 9 and expected["templates"] == 2
        expected = evaluate_retrieval(coco, encoders.encode_images, encoders.encode_texts, batch_size=int(BATCH))
        assert results[checkpoint]["retrieval:coco"] == expected
    # The two checkpoints are different models.
    first, second = (results[c]["retrieval:coco"] for c in setup["checkpoints"])
    assert any(first[k] != second[k] for k in first if k.startswith(("i2t", "t2i")))


def test_markdown_has_a_summary_row_per_checkpoint_and_every_table(setup):
    markdown = setup["out"].with_suffix(".md").read_text()
    results = setup["results"]
    lines = markdown.splitlines()
    header = lines[lines.index("## summary") + 2]
    assert header == ("| checkpoint | zeroshot:colours top-1 (%) | retrieval:coco i2t R@1 (%) | "
                      "retrieval:coco t2i R@1 (%) |")
    for checkpoint, name in zip(setup["checkpoints"], ("tiny.pt", "run")):
        row = next(line for line in lines if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        r = results[checkpoint]
        assert cells[1:] == [f"{100 * v:.1f}" for v in (r["zeroshot:colours"]["top1"],
                                                          r["retrieval:coco"]["i2t_R@1"],
                                                          r["retrieval:coco"]["t2i_R@1"])]
        assert f"### {name}" in lines
    assert "## zeroshot:colours" in lines and "## retrieval:coco" in lines
    assert sum(line.startswith("| zero-shot |") for line in lines) == 2  # zeroshot.markdown_table, per checkpoint
    assert sum(line.startswith("| retrieval (%) |") for line in lines) == 2


def test_plot_is_the_bar_chart_of_the_headline_metrics(setup):
    results, names = setup["results"], ["tiny.pt", "run"]
    metrics = [("zeroshot:colours", "top1", "top-1"), ("retrieval:coco", "i2t_R@1", "i2t R@1"),
               ("retrieval:coco", "t2i_R@1", "t2i R@1")]
    values = [[100 * results[c][suite][key] for suite, key, _ in metrics] for c in setup["checkpoints"]]
    expected, layout = bar_chart([f"{suite}\n{label}" for suite, _, label in metrics], names, values,
                                 title="vlalign eval: headline metrics", y_label="%")
    with Image.open(setup["plot"]) as image:
        drawn = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(drawn, np.asarray(expected))
    assert len(layout.bars) == 6 and {(b.group, b.series) for b in layout.bars} == {(g, s) for g in range(3)
                                                                                    for s in range(2)}
    for series, swatch in enumerate(layout.legend):
        x, y = (swatch[0] + swatch[2]) // 2, (swatch[1] + swatch[3]) // 2
        assert tuple(drawn[y, x]) == hex_rgb(PALETTE[series])


def hex_rgb(colour):
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def test_bar_chart_draws_a_bar_per_value_in_its_series_colour():
    values = [[50.0, 20.0, None], [80.0, 0.5, 10.0]]
    image, layout = bar_chart(["a\nm1", "b\nm2", "c"], ["one", "two"], values)
    pixels = np.asarray(image)
    assert len(layout.bars) == 5  # the None gets no bar
    heights = {}
    for bar in layout.bars:
        left, top, right, bottom = bar.box
        heights[(bar.group, bar.series)] = bottom - top
        if bottom - top >= 8:  # inside a bar: its series' colour
            colour = pixels[(top + bottom) // 2, (left + right) // 2]
            assert np.abs(colour.astype(int) - hex_rgb(PALETTE[bar.series])).max() <= 1
    assert heights[(0, 1)] > heights[(0, 0)] > heights[(1, 0)] > heights[(2, 1)] > heights[(1, 1)]
    with pytest.raises(ValueError, match=r"values must be \[2 series\]\[3 groups\]"):
        bar_chart(["a", "b", "c"], ["one", "two"], [[1.0, 2.0]])


def test_sharded_encoding_equals_unsharded(setup):
    assert len(jax.local_devices()) == 8
    model, params = load_model(setup["checkpoints"][0])
    images = [solid(colour, (30 + 9 * i, 40 - 3 * i), i) for i, colour in enumerate([*COLOURS.values()] * 2)][:5]
    texts = [f"a photo of thing number {i}" for i in range(11)]
    sharded = dual_encoders(model, params, batch_size=8)  # 5 images: one call padded to 8; 11 texts: 8 + 3->8
    single = dual_encoders(model, params, batch_size=3, mesh=device_mesh(jax.devices()[:1]))  # 3 + 2 rows
    got, want = sharded.encode_images(images), single.encode_images(images)
    assert got.shape == (5, model.config.embed_dim)
    np.testing.assert_allclose(got, want, atol=1e-5)  # fp32, different batch shapes: summation order only
    np.testing.assert_allclose(sharded.encode_texts(texts), single.encode_texts(texts), atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_padded_rows_are_a_multiple_of_the_devices():
    assert [padded_rows(n, 8, 256) for n in (1, 5, 8, 9, 17, 200, 256)] == [8, 8, 8, 16, 32, 256, 256]
    assert [padded_rows(n, 1, 3) for n in (1, 2, 3)] == [1, 2, 3]


@pytest.mark.parametrize("extra, message", [
    (["--suite", "zeroshot"], "--suite zeroshot needs --data"),
    (["--suite", "bogus", "--data", "x"], "unknown suite 'bogus'; known: zeroshot, retrieval"),
    (["--suite", "retrieval:nope", "--data", "x"], "unknown retrieval dataset 'nope'; known: coco, flickr30k"),
    (["--suite", "retrieval", "--data", "x"], "--suite retrieval needs a dataset: --suite retrieval:DATASET"),
    (["--suite", "sugarcrepe:x", "--data", "x"], "sugarcrepe takes no dataset part"),
    (["--suite", "aro", "--suite", "valse", "--suite", "sugarcrepe", "--data", "a", "--data", "b"],
     "3 --suite but 2 --data"),
    (["--suite", "aro", "--suite", "aro", "--data", "a"], "--suite aro given more than once"),
    (["--suite", "zeroshot:x", "--data", "/no/such/folder"], "--data /no/such/folder does not exist"),
    (["--suite", "retrieval:coco", "--data", "/"], "no /dataset_coco.json or /annotations/dataset_coco.json"),
    (["--suite", "aro", "--data", "a", "--dataset", "unc"], "--dataset is for --suite grounding"),
])
def test_bad_usage_is_a_clear_error_with_status_2(tmp_path, capsys, extra, message):
    out = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt"), *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlalign eval: error: ") and message in err, err
    assert not out.exists()


def test_grid_paths_are_distinct_when_several_grounding_runs_draw_one():
    request = suites.SuiteRequest("grounding", "unc", "split")
    assert suites.grid_path("out/grid.png", request, "a", many=False) == "out/grid.png"
    assert suites.grid_path("out/grid.png", request, "a", many=True) == "out/grid.unc.a.png"
    assert suites.grid_path("out/grid.png", request, "runs/a", many=True) == "out/grid.unc.runs_a.png"
    assert suites.short_names(["x/a.pt", "y/a.pt", "z/b"]) == {"x/a.pt": "x/a.pt", "y/a.pt": "y/a.pt", "z/b": "b"}


def test_retrieval_data_is_found_from_a_root_or_an_annotation_file(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2017.json").write_text("{}")
    annotations, images = str(tmp_path / "annotations" / "captions_val2017.json"), str(tmp_path / "val2017")
    assert suites.retrieval_paths("coco_val2017", str(tmp_path), None) == (annotations, images)
    assert suites.retrieval_paths("coco_val2017", annotations, None) == (annotations, images)
    assert suites.retrieval_paths("coco_val2017", annotations, "/imgs") == (annotations, "/imgs")
    with pytest.raises(FileNotFoundError, match="no .*dataset_flickr30k.json; pass the annotation file"):
        suites.retrieval_paths("flickr30k", str(tmp_path), None)
    with pytest.raises(ValueError, match="is the annotation folder; pass the images with --images"):
        suites.retrieval_paths("dci", str(tmp_path / "annotations"), None)


def write_urban1k(root):
    (root / "Urban1k" / "caption").mkdir(parents=True)
    (root / "Urban1k" / "image").mkdir(parents=True)
    for i, name in enumerate(["red", "green", "blue", "red"]):
        solid(COLOURS[name], (40, 30 + 6 * i), 200 + i).save(root / "Urban1k" / "image" / f"u{i}.jpg")
        text = f"a long caption about a {name} image, number {i}, with much detail on the left and the right"
        (root / "Urban1k" / "caption" / f"u{i}.txt").write_text(text + "\n")
    return root


def test_fgclip_runs_every_dual_suite_with_the_fine_grained_encoders(tmp_path):
    """FG-CLIP 1: the eval encoders equal `vlalign fine-grained`'s (square resize, short / long walks),
    and long-caption retrieval reads its captions on the long walk."""
    from vlalign_jax.eval.region_encoders import load_region_model, load_tokenizer, region_encoders

    checkpoint = make_tiny_fgclip(tmp_path / "fg-clip-tiny")
    model, params = load_region_model(checkpoint)
    reference = region_encoders(model, params, tokenizer=load_tokenizer(checkpoint, model))
    encoders = dual_encoders(model, params, checkpoint=checkpoint, batch_size=int(BATCH))
    assert encoders.kind == "fgclip" and set(encoders.walks) == {"short", "box", "long"}
    images = [solid(c, (33 + 5 * i, 29), i) for i, c in enumerate(COLOURS.values())]
    np.testing.assert_allclose(encoders.encode_images(images), reference.encode_images(images), atol=1e-5)
    texts = ["a red square", "a long caption about a green thing on the left"]
    for walk in ("short", "long"):
        np.testing.assert_allclose(encoders.encode_texts(texts, walk), reference.encode_texts(texts, walk), atol=1e-5)

    write_urban1k(tmp_path)
    out = tmp_path / "fg.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--suite", "long-retrieval:urban1k", "--data",
                 str(tmp_path), "--suite", "zeroshot", "--data", str(write_colours(tmp_path / "colours")),
                 "--templates", "imagenet_simple", "--batch-size", BATCH, "--out", str(out)]) == 0
    results = json.loads(out.read_text())[str(checkpoint)]
    urban = read_urban1k(str(tmp_path / "Urban1k" / "caption"), str(tmp_path / "Urban1k" / "image"))
    expected = evaluate_retrieval(dataclasses.replace(urban, name="urban1k"), encoders.encode_images,
                                  lambda texts: encoders.encode_texts(texts, "long"), batch_size=int(BATCH))
    assert results["long-retrieval:urban1k"] == {**expected, "walk": "long"}
    assert results["zeroshot"]["dataset"] == "colours" and results["zeroshot"]["templates"] == 7


def test_naflex_families_encode_as_their_references(tmp_path, write_word_tokenizer):
    """FG-CLIP 2 as `vlalign fine-grained` encodes (dynamic NaFlex budget, Gemma ids with their mask);
    SigLIP 2 at 256 patches with its folder's Gemma tokenizer and mask, applied one input at a time."""
    pytest.importorskip("transformers")
    from vlalign_jax.data.gemma_tokenizer import GemmaTokenizer
    from vlalign_jax.eval.region_encoders import load_region_model, load_tokenizer, naflex_inputs, region_encoders
    from vlalign_jax.models import fgclip2, siglip
    from vlalign_jax.models.siglip_configs import get_siglip_config

    # "<mask>" too: transformers' SigLIP tokenizer class adds it when the folder's config says siglip2.
    words = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "a", "photo", "of", "the", "red", "green", "blue", "square"]
    config = get_siglip_config("tiny")
    config = dataclasses.replace(config, text=dataclasses.replace(config.text, vocab_size=len(words)))
    images = [solid(c, (21 + 8 * i, 17 + 3 * i), i) for i, c in enumerate(COLOURS.values())]
    texts = ["a red square", "the photo of a blue square", "green"]

    fg_config = fgclip2.fgclip2_config_from_siglip(config, keep_len=4)
    fg_model = fgclip2.FGCLIP2(fg_config)
    converters.save(fg_model, random_params(fgclip2.abstract_params(fg_config), 2), tmp_path / "fg2", "hf")
    write_word_tokenizer(tmp_path / "fg2", words)
    model, params = load_region_model(tmp_path / "fg2")
    reference = region_encoders(model, params, tokenizer=load_tokenizer(tmp_path / "fg2", model))
    encoders = dual_encoders(model, params, checkpoint=tmp_path / "fg2")
    assert encoders.kind == "fgclip2"
    np.testing.assert_allclose(encoders.encode_images(images), reference.encode_images(images), atol=1e-5)
    for walk in ("short", "long"):
        np.testing.assert_allclose(encoders.encode_texts(texts, walk), reference.encode_texts(texts, walk), atol=1e-5)

    converters.save(siglip.SigLIP(config), random_params(siglip.abstract_params(config), 3), tmp_path / "sig", "hf")
    write_word_tokenizer(tmp_path / "sig", words)
    model, params = load_model(tmp_path / "sig")
    encoders = dual_encoders(model, params, checkpoint=tmp_path / "sig")
    assert encoders.kind == "siglip" and encoders.walks == ("short",)
    one_image = naflex_inputs(config.vision.patch_size, 256)
    tokenizer = GemmaTokenizer(tmp_path / "sig")
    got = encoders.encode_images(images)
    for n, image in enumerate(images):
        inputs = [x[None] for x in one_image(image)]
        want = np.asarray(model.apply({"params": params}, *inputs, method="encode_image"))[0]
        np.testing.assert_allclose(got[n], want / np.linalg.norm(want), atol=1e-5)
    ids, mask = tokenizer.encode(texts, config.text.context_length)
    want = np.asarray(model.apply({"params": params}, ids, mask, method="encode_text"))
    np.testing.assert_allclose(encoders.encode_texts(texts), want / np.linalg.norm(want, axis=1, keepdims=True),
                               atol=1e-5)


def test_grounding_runs_beside_other_checkpoints_with_a_grid_each(tmp_path):
    """`grounding:DATASET` for two CLIP-VG files: each gets the results `grounding_suite.evaluate` gives
    alone, its own grid file, and its Acc@0.5 per split in the summary."""
    from test_grounding_suite import random_params as grounding_params
    from test_grounding_suite import write_unc_splits

    from vlalign_jax.eval.grounding_suite import evaluate
    from vlalign_jax.models.grounding import CLIPVG, GROUNDING_CONFIGS

    write_unc_splits(tmp_path)
    model = CLIPVG(GROUNDING_CONFIGS["tiny"])
    checkpoints = [str(tmp_path / "a.pth"), str(tmp_path / "b.pth")]
    for seed, path in enumerate(checkpoints):
        converters.save(model, grounding_params(model.config, seed=seed), path, "clipvg")
    out, grid = tmp_path / "g.json", tmp_path / "grid.png"
    assert main(["eval", "--checkpoint", checkpoints[0], "--checkpoint", checkpoints[1], "--suite", "grounding:refcoco",
                 "--data", str(tmp_path / "split"), "--images", str(tmp_path / "images"), "--splits", "val", "testA",
                 "--batch-size", "8", "--grid", str(grid), "--grid-samples", "2", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    for checkpoint, name in zip(checkpoints, ("a.pth", "b.pth")):
        got = results[checkpoint]["grounding:refcoco"]
        assert got["grid"] == str(tmp_path / f"grid.refcoco.{name}.png") and (tmp_path / got.pop("grid")).exists()
        assert got == evaluate(checkpoint, "refcoco", tmp_path / "split", image_root=tmp_path / "images",
                               splits=["val", "testA"], batch_size=8)
    header = out.with_suffix(".md").read_text().splitlines()[2]
    assert header == "| checkpoint | grounding:refcoco val acc@0.5 (%) | grounding:refcoco testA acc@0.5 (%) |"


def test_zeroshot_data_format_is_detected(tmp_path):
    """A folder of class folders, a .tsv of image paths and class names, or a file of neither kind."""
    prepare = suites.SUITES["zeroshot"].prepare
    options = suites.SuiteOptions(templates="imagenet_simple")
    colours = write_colours(tmp_path / "colours")
    dataset, templates = prepare(suites.SuiteRequest("zeroshot", None, str(colours)), options)
    assert dataset.name == "colours" and dataset.class_names == ("blue", "green", "red") and len(templates) == 7
    (tmp_path / "pets.tsv").write_text("filepath\tlabel\nred/0.png\tcat\ngreen/1.png\tdog\n")
    dataset, _ = prepare(suites.SuiteRequest("zeroshot", "pets", str(tmp_path / "pets.tsv"), str(colours)), options)
    assert dataset.name == "pets" and dataset.class_names == ("cat", "dog") and len(dataset) == 2
    assert dataset.source[1]["label"] == 1 and dataset.source[1]["image"].size == (47, 35)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="cannot tell the format of .*x.txt.*pass --zeroshot-format"):
        prepare(suites.SuiteRequest("zeroshot", None, str(tmp_path / "x.txt")), options)
    with pytest.raises(ValueError, match="TFDS data needs a name and a split"):
        prepare(suites.SuiteRequest("zeroshot", None, "tfds:imagenet2012"), options)
