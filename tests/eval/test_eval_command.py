"""`vlalign eval --suite ...`: a checkpoint's encoders scored on benchmark files, written as JSON and a
markdown table; the accuracies equal a brute-force scoring with the model applied item by item."""

import json

import jax
import numpy as np
from PIL import Image

from test_compositional import make_sugarcrepe
from vlalign_jax import converters
from vlalign_jax.cli import main
from vlalign_jax.data.tokenizers import ClipTokenizer
from vlalign_jax.data.transforms import clip_eval_transform
from vlalign_jax.eval.compositional import load_suite
from vlalign_jax.models.clip import CLIP
from vlalign_jax.models.clip_configs import get_clip_config


def test_eval_command_scores_a_checkpoint(tmp_path):
    make_sugarcrepe(str(tmp_path / "data"))
    model = CLIP(get_clip_config("tiny"))
    config = model.config
    params = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32),
                        np.zeros((1, config.text.context_length), np.int32))["params"]
    converters.save(model, params, tmp_path / "tiny.pt", "open_clip")

    out = tmp_path / "results" / "sugarcrepe.json"
    assert main(["eval", "--suite", "sugarcrepe", "--data", str(tmp_path / "data"), "--checkpoint",
                 str(tmp_path / "tiny.pt"), "--out", str(out), "--batch-size", "2"]) == 0
    results = json.loads(out.read_text())
    assert out.with_suffix(".md").read_text().startswith("|")

    tokenizer = ClipTokenizer(context_length=config.text.context_length)
    model, params = converters.load(tmp_path / "tiny.pt")
    correct = {}
    for item in load_suite("sugarcrepe", str(tmp_path / "data")):
        with Image.open(item.image) as image:
            pixels = clip_eval_transform(image.convert("RGB"), config.vision.image_size)[None]
        image_embed, text_embeds, _ = model.apply({"params": params}, pixels,
                                                  tokenizer([item.positive, *item.negatives]))
        scores = np.asarray(text_embeds) @ np.asarray(image_embed)[0]
        correct.setdefault(item.subset, []).append(bool(scores[0] > scores[1:].max()))
    for subset, values in correct.items():
        assert results["subsets"][subset]["accuracy"] == np.mean(values), subset
