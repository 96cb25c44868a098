"""Agreement with open_clip: one open_clip checkpoint scored by our zero-shot and retrieval evaluation
(converted weights, our preprocessing and tokenizer) and by open_clip's own code gives the same
per-image predictions and ranks, so the same accuracy and recall.

The checkpoint is a tiny random open_clip model (ViT 32 px / patch 8, width 128, 2 layers; text width
128, 2 layers, context 77; QuickGELU) saved in open_clip's hub layout, `open_clip_config.json` +
`open_clip_pytorch_model.bin`, which `open_clip.create_model_and_transforms("local-dir:DIR")` loads
with its eval transform, and `open_clip.get_tokenizer("local-dir:DIR")` with its tokenizer. We load
the same folder with `eval.encoders.load_model` and score it with the library functions
(`evaluate_zeroshot`, `evaluate_retrieval` and their parts) and, where it has the suites, with
`vlalign eval` itself.

The open_clip side is open_clip's code where it is a library (`build_zero_shot_classifier`, the
transform, the tokenizer, `encode_image`/`encode_text`), and otherwise written out here from the
training package, which is not installed:
- zero-shot: `accuracy` and the non-FSDP loop of `run_zero_shot_classifier` in mlfoundations/open_clip
  `src/open_clip_train/zero_shot.py`, over torchvision's `ImageFolder` (how `open_clip_train/data.py`
  reads imagenet-val);
- retrieval, one caption per image: `get_clip_metrics` in `src/open_clip_train/train.py`;
- retrieval, several captions per image: `evaluate` / `recall_at_k` in LAION-AI/CLIP_benchmark
  `clip_benchmark/metrics/zeroshot_retrieval.py` (its "image_retrieval" is our t2i, "text_retrieval"
  our i2t).

Random weights give close scores. So each comparison first asserts that every decision its metric
depends on (best vs second-best class, the label vs every other class, the best correct item vs
every wrong one) is separated by more than MARGIN in open_clip's fp32 cosine scores, and that the
two sides' embeddings agree within EMBED_TOL, far below MARGIN: agreement is then not luck and a
disagreement not float noise. Recall is compared at every K, which fixes the whole rank histogram.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
tv_datasets = pytest.importorskip("torchvision.datasets")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "converters"))
from torch_models import randomize  # noqa: E402

from vlalign_jax.eval.encoders import clip_encoders, load_model  # noqa: E402
from vlalign_jax.eval.retrieval import evaluate_retrieval  # noqa: E402
from vlalign_jax.eval.retrieval_data import load_dataset  # noqa: E402
from vlalign_jax.eval.zeroshot import evaluate_zeroshot, label_ranks, zero_shot_classifier  # noqa: E402
from vlalign_jax.eval.zeroshot_data import image_folder  # noqa: E402

# Heads are width // 64 in both towers: the converter infers them that way from the tensor shapes
# (OpenAI's layout) and does not read `heads` / `head_width` from open_clip_config.json.
MODEL_CFG = {"embed_dim": 32, "quick_gelu": True,
             "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 128, "head_width": 64, "layers": 2,
                            "mlp_ratio": 2},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2,
                          "mlp_ratio": 2}}
SEED = 0
RETRIEVAL_SEED = 3
CLASSES = ("apple", "bicycle", "castle", "dolphin", "forest", "lighthouse", "tractor")  # > 5 for top-5
IMAGES_PER_CLASS = 3
TEMPLATES = ("a photo of a {}.", "a blurry picture of the {}.", "art of a {}.")
BATCH = 7  # images and prompts per encoder call on both sides (several calls; one shape per tower)
MARGIN = 1e-4  # smallest allowed gap between scores a decision compares (cosine, fp32)
EMBED_TOL = 1e-5  # ours vs open_clip, unit embeddings: fp32 accumulation order over 2 layers (~1e-6 seen)


# ----------------------------------------------------------------------------- checkpoint and data

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random open_clip model in the hub layout, written by open_clip and torch."""
    folder = tmp_path_factory.mktemp("open_clip_tiny")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG}))
    torch.manual_seed(SEED)
    model = randomize(open_clip.create_model(f"local-dir:{folder}"), SEED)  # no weights yet: initialised
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def theirs(checkpoint):
    """(model, eval transform, tokenizer) as open_clip loads the folder."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{checkpoint}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{checkpoint}")


@pytest.fixture(scope="module")
def ours(checkpoint):
    model, params = load_model(checkpoint, "open_clip")
    assert model.config.act == "quick_gelu"  # read from open_clip_config.json
    return clip_encoders(model, params)


def _write_image(path, rng):
    """A smooth random RGB picture of random size (up- and down-scaled, odd crop offsets)."""
    width, height = (int(v) for v in rng.integers(18, 80, 2))
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((width, height),
                                                                                     Image.Resampling.BILINEAR)
    noise = rng.integers(-20, 21, (height, width, 3))
    pixels = np.clip(np.asarray(coarse, np.int64) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")


@pytest.fixture(scope="module")
def class_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("zeroshot")
    rng = np.random.default_rng(SEED)
    for name in CLASSES:
        for n in range(IMAGES_PER_CLASS):
            _write_image(root / name / f"{n}.png", rng)
    return root


def _caption(rng):
    words = [("red", "green", "small", "large", "wooden", "shiny", "old", "striped"),
             ("dog", "car", "boat", "lamp", "chair", "kite", "horse", "clock"),
             ("beside", "under", "behind", "on top of"),
             ("a river", "a tree", "the stairs", "a window", "the beach", "a fence")]
    return "a {} {} {} {}.".format(*(w[int(rng.integers(len(w)))] for w in words))


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory):
    """dataset_flickr30k.json (Karpathy layout): 7 test images with 2 captions each, 1 train image."""
    root = tmp_path_factory.mktemp("flickr")
    rng = np.random.default_rng(RETRIEVAL_SEED)
    images, captions = [], set()
    for imgid in range(8):
        _write_image(root / f"{imgid}.png", rng)
        raws = []
        while len(raws) < 2:
            caption = _caption(rng)
            if caption not in captions:  # distinct captions, so no rank hinges on duplicates
                captions.add(caption)
                raws.append(caption)
        images.append({"filename": f"{imgid}.png", "imgid": imgid, "split": "train" if imgid == 3 else "test",
                       "sentids": [2 * imgid, 2 * imgid + 1],
                       "sentences": [{"raw": raw, "tokens": raw.split(), "imgid": imgid, "sentid": 2 * imgid + n}
                                     for n, raw in enumerate(raws)]})
    path = root / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path, root


# ----------------------------------------------------------------------------- open_clip's side

def accuracy(output, target, topk=(1,)):
    """open_clip_train/zero_shot.py `accuracy`."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() for k in topk]


def open_clip_zeroshot(model, preprocess, tokenizer, root):
    """open_clip_train `zero_shot_eval` on an ImageFolder with our class names and templates:
    (top1, top5, logits [n, classes], targets [n], ImageFolder samples, classifier [classes, dim])."""
    folder = tv_datasets.ImageFolder(str(root), transform=preprocess)
    classifier = open_clip.build_zero_shot_classifier(model, tokenizer, folder.classes, list(TEMPLATES),
                                                      num_classes_per_batch=3, device="cpu")
    loader = torch.utils.data.DataLoader(folder, batch_size=BATCH, num_workers=0)
    top1, top5, n, all_logits, all_targets = 0., 0., 0., [], []
    with torch.inference_mode():
        for images, target in loader:  # run_zero_shot_classifier, fp32, no FSDP
            output = model(image=images)
            image_features = output['image_features'] if isinstance(output, dict) else output[0]
            logits = 100. * image_features @ classifier
            acc1, acc5 = accuracy(logits, target, topk=(1, 5))
            top1 += acc1
            top5 += acc5
            n += images.size(0)
            all_logits.append(logits)
            all_targets.append(target)
    return (top1 / n, top5 / n, torch.cat(all_logits).numpy(), torch.cat(all_targets).numpy(), folder.samples,
            classifier.T.numpy())


def get_clip_metrics(image_features, text_features, logit_scale):
    """open_clip_train/train.py `get_clip_metrics` (paired rows), plus the ranks it computes."""
    metrics, ranks = {}, {}
    logits_per_image = (logit_scale * image_features @ text_features.t()).detach().cpu()
    logits_per_text = logits_per_image.t().detach().cpu()
    logits = {"image_to_text": logits_per_image, "text_to_image": logits_per_text}
    ground_truth = torch.arange(len(text_features)).view(-1, 1)
    for name, logit in logits.items():
        ranking = torch.argsort(logit, descending=True)
        preds = torch.where(ranking == ground_truth)[1]
        preds = preds.detach().cpu().numpy()
        ranks[name] = preds
        metrics[f"{name}_mean_rank"] = preds.mean() + 1
        metrics[f"{name}_median_rank"] = np.floor(np.median(preds)) + 1
        for k in [1, 5, 10]:
            metrics[f"{name}_R@{k}"] = np.mean(preds < k)
    return metrics, ranks


def recall_at_k(scores, positive_pairs, k):
    """CLIP_benchmark zeroshot_retrieval.py `recall_at_k`: per query, true positives in the top k
    over positives (> 0 is the CLIP-paper hit)."""
    nb_texts, nb_images = scores.shape
    topk_indices = torch.topk(scores, k, dim=1)[1]
    nb_positive = positive_pairs.sum(dim=1)
    topk_indices_onehot = torch.nn.functional.one_hot(topk_indices, num_classes=nb_images)
    positive_pairs_reshaped = positive_pairs.view(nb_texts, 1, nb_images)
    nb_true_positive = (topk_indices_onehot * positive_pairs_reshaped).sum(dim=(1, 2))
    return nb_true_positive / nb_positive


def open_clip_embeddings(model, preprocess, tokenizer, paths, texts):
    """Unit image and text embeddings as CLIP_benchmark computes them (images read as PIL RGB)."""
    normalize = torch.nn.functional.normalize
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
        images = torch.cat([normalize(model.encode_image(pixels[s:s + BATCH]), dim=-1)
                            for s in range(0, len(pixels), BATCH)])
        tokens = tokenizer(list(texts))
        text = torch.cat([normalize(model.encode_text(tokens[s:s + BATCH]), dim=-1)
                          for s in range(0, len(tokens), BATCH)])
    return images, text


def min_margin(scores, positive):
    """Smallest gap, over rows of scores [queries, items], between the best positive item's score
    and any negative item's score (the decisions every recall@K / top-k of the row depends on)."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    best = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)
    return float(np.min(np.where(positive, np.inf, np.abs(scores - best))))


def batched(encode, items):
    return np.concatenate([encode(items[s:s + BATCH]) for s in range(0, len(items), BATCH)])


# ----------------------------------------------------------------------------- open_clip's results

@pytest.fixture(scope="module")
def their_zeroshot(theirs, class_tree):
    """open_clip's zero-shot run, after checking that its decisions are clear of float noise (best vs
    second-best class, the label vs every other class) and that the result is informative (neither
    all right nor all wrong, more than one class predicted)."""
    top1, top5, logits, targets, samples, classifier = open_clip_zeroshot(*theirs, class_tree)
    scores = logits / 100.0  # cosine similarities
    ordered = np.sort(scores, axis=1)
    assert np.min(ordered[:, -1] - ordered[:, -2]) > MARGIN
    assert min_margin(scores, np.eye(len(CLASSES), dtype=bool)[targets]) > MARGIN
    assert 0 < top1 < 1 and 0 < top5 < 1 and len(set(logits.argmax(axis=1).tolist())) > 1
    return {"top1": top1, "top5": top5, "scores": scores, "targets": targets, "samples": samples,
            "classifier": classifier, "pred": logits.argmax(axis=1)}


@pytest.fixture(scope="module")
def their_retrieval(theirs, karpathy):
    """CLIP_benchmark's recall at every K (several captions per image) and open_clip_train's
    get_clip_metrics and ranks (the first caption of each image), with the same kind of checks."""
    model, preprocess, tokenizer = theirs
    annotations, root = karpathy
    entries = [e for e in json.loads(annotations.read_text())["images"] if e["split"] == "test"]
    paths = [root / e["filename"] for e in entries]
    texts = [s["raw"] for e in entries for s in e["sentences"]]
    texts_image_index = [i for i, e in enumerate(entries) for _ in e["sentences"]]
    images_emb, texts_emb = open_clip_embeddings(model, preprocess, tokenizer, paths, texts)
    num_images, num_texts = len(paths), len(texts)

    scores = texts_emb @ images_emb.t()  # CLIP_benchmark's evaluate from here
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), texts_image_index] = True
    assert min_margin(scores.numpy(), positive_pairs.numpy()) > MARGIN  # t2i decisions
    assert min_margin(scores.t().numpy(), positive_pairs.t().numpy()) > MARGIN  # i2t decisions
    t2i = {k: (recall_at_k(scores, positive_pairs, k) > 0).float().mean().item() for k in range(1, num_images + 1)}
    i2t = {k: (recall_at_k(scores.T, positive_pairs.T, k) > 0).float().mean().item()
           for k in range(1, num_texts + 1)}
    assert len(set(t2i.values())) > 2 and len(set(i2t.values())) > 2  # ranks vary

    first = [texts_image_index.index(i) for i in range(num_images)]
    paired = texts_emb[first]
    logits = (images_emb @ paired.t()).numpy()
    assert min_margin(logits, np.eye(num_images, dtype=bool)) > MARGIN
    assert min_margin(logits.T, np.eye(num_images, dtype=bool)) > MARGIN
    metrics, ranks = get_clip_metrics(images_emb, paired, model.logit_scale.exp())
    assert len(set(ranks["image_to_text"].tolist())) > 2 and len(set(ranks["text_to_image"].tolist())) > 2
    return {"paths": paths, "texts": texts, "texts_image_index": texts_image_index, "images_emb": images_emb.numpy(),
            "texts_emb": texts_emb.numpy(), "i2t": i2t, "t2i": t2i, "first": first, "metrics": metrics,
            "ranks": ranks}


# ----------------------------------------------------------------------------- tests

def test_zeroshot_predictions_and_accuracy_match_open_clip(ours, class_tree, their_zeroshot):
    encode_images, encode_texts = ours
    theirs = their_zeroshot
    targets = theirs["targets"]
    dataset = image_folder(class_tree)
    assert dataset.class_names == tuple(CLASSES)
    assert [(str(p), n) for p, n in dataset.source.samples] == [(str(p), n) for p, n in theirs["samples"]]

    result = evaluate_zeroshot(dataset, encode_images, encode_texts, templates=list(TEMPLATES), batch_size=BATCH,
                               text_batch_size=BATCH, ks=(1, 5), num_workers=2)
    assert result["num_examples"] == len(targets) and result["skipped"] == 0
    assert result["top1"] == pytest.approx(theirs["top1"], abs=1e-12)
    assert result["top5"] == pytest.approx(theirs["top5"], abs=1e-12)
    per_class = [float(np.mean(theirs["pred"][targets == c] == c)) for c in range(len(CLASSES))]
    assert list(result["per_class"].values()) == pytest.approx(per_class, abs=1e-12)

    # Per image, with the library functions evaluate_zeroshot is made of.
    classifier = zero_shot_classifier(encode_texts, dataset.class_names, list(TEMPLATES), batch_size=BATCH)
    image_embeds = batched(encode_images, [dataset.source[i]["image"] for i in range(len(dataset))])
    np.testing.assert_allclose(classifier, theirs["classifier"], rtol=0, atol=EMBED_TOL)
    scores = image_embeds @ classifier.T
    np.testing.assert_allclose(scores, theirs["scores"], rtol=0, atol=EMBED_TOL)
    np.testing.assert_array_equal(scores.argmax(axis=1), theirs["pred"])
    their_ranks = np.argsort(-theirs["scores"], axis=1, kind="stable").argsort(axis=1)[np.arange(len(targets)),
                                                                                        targets]
    np.testing.assert_array_equal(label_ranks(scores, targets), their_ranks)


def test_retrieval_ranks_and_recall_match_open_clip_and_clip_benchmark(ours, karpathy, their_retrieval):
    encode_images, encode_texts = ours
    theirs = their_retrieval
    annotations, root = karpathy
    texts, first = theirs["texts"], theirs["first"]
    num_images, num_texts = len(theirs["paths"]), len(texts)

    dataset = load_dataset("flickr30k", str(annotations), str(root))
    assert [Path(p) for p in dataset.images] == theirs["paths"] and list(dataset.texts) == texts
    np.testing.assert_array_equal(dataset.text_to_image, theirs["texts_image_index"])
    np.testing.assert_allclose(batched(encode_images, [Image.open(p).convert("RGB") for p in theirs["paths"]]),
                               theirs["images_emb"], rtol=0, atol=EMBED_TOL)
    np.testing.assert_allclose(batched(encode_texts, texts), theirs["texts_emb"], rtol=0, atol=EMBED_TOL)

    # Several captions per image: CLIP_benchmark at every K (t2i is 1 from K = number of images on).
    result = evaluate_retrieval(dataset, encode_images, encode_texts, batch_size=BATCH,
                                ks=tuple(range(1, num_texts + 1)), num_workers=2)
    for k in range(1, num_texts + 1):
        assert result[f"i2t_R@{k}"] == pytest.approx(theirs["i2t"][k], abs=1e-6), k  # torch float32 means
        assert result[f"t2i_R@{k}"] == pytest.approx(theirs["t2i"].get(k, 1.0), abs=1e-6), k

    # One caption per image (the first): open_clip_train's get_clip_metrics; recall at every K is the
    # histogram of its ranks.
    single = load_dataset("flickr30k", str(annotations), str(root), max_captions_per_image=1)
    assert list(single.texts) == [texts[j] for j in first]
    result = evaluate_retrieval(single, encode_images, encode_texts, batch_size=BATCH,
                                ks=tuple(range(1, num_images + 1)), num_workers=2)
    for k in range(1, num_images + 1):
        assert result[f"i2t_R@{k}"] == pytest.approx(np.mean(theirs["ranks"]["image_to_text"] < k), abs=1e-12), k
        assert result[f"t2i_R@{k}"] == pytest.approx(np.mean(theirs["ranks"]["text_to_image"] < k), abs=1e-12), k
    for k in (1, 5):
        assert result[f"i2t_R@{k}"] == pytest.approx(theirs["metrics"][f"image_to_text_R@{k}"], abs=1e-12)
        assert result[f"t2i_R@{k}"] == pytest.approx(theirs["metrics"][f"text_to_image_R@{k}"], abs=1e-12)


def test_vlalign_eval_command_agrees(checkpoint, class_tree, karpathy, their_zeroshot, their_retrieval, tmp_path):
    """`vlalign eval --suite zeroshot --suite retrieval:flickr30k` on the checkpoint folder."""
    suites = pytest.importorskip("vlalign_jax.eval.suites")  # the command's suites, added separately
    if not {"zeroshot", "retrieval"} <= set(suites.SUITES):
        pytest.skip("vlalign eval has no zeroshot/retrieval suite yet")
    from vlalign_jax.cli import main

    annotations, root = karpathy
    templates = tmp_path / "templates.txt"
    templates.write_text("\n".join(TEMPLATES) + "\n")
    out = tmp_path / "results.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--suite", "zeroshot", "--data", str(class_tree),
                 "--suite", "retrieval:flickr30k", "--data", str(annotations), "--images", str(root),
                 "--templates", str(templates), "--batch-size", str(BATCH), "--out", str(out)]) == 0
    results = json.loads(out.read_text())[str(checkpoint)]
    zeroshot = results["zeroshot"]
    assert zeroshot["num_examples"] == len(their_zeroshot["targets"]) and zeroshot["templates"] == len(TEMPLATES)
    for k in (1, 5):
        assert zeroshot[f"top{k}"] == pytest.approx(their_zeroshot[f"top{k}"], abs=1e-12)
    retrieval = results["retrieval:flickr30k"]
    assert retrieval["num_texts"] == len(their_retrieval["texts"])
    for k in (1, 5, 10):
        assert retrieval[f"i2t_R@{k}"] == pytest.approx(their_retrieval["i2t"][k], abs=1e-6)
        assert retrieval[f"t2i_R@{k}"] == pytest.approx(their_retrieval["t2i"].get(k, 1.0), abs=1e-6)
