"""GemmaTokenizer (FG-CLIP 2's text tokenizer) against transformers on a tiny Gemma-style tokenizer.

No download is possible, so a small BPE with byte fallback is trained here and saved as a Gemma
tokenizer folder laid out like SigLIP 2's (`<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, `<mask>` 4, the
256 byte pieces next, no BOS, EOS appended, right padding). Our ids and masks must equal what
FG-CLIP 2's call `tokenizer([t.lower() ...], padding="max_length", max_length=L, truncation=True)`
returns, and the rows must have the semantics spelled out independently of transformers.
"""

import json
import pickle
import random
import sys

import numpy as np
import pytest

pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from vlalign_jax.data.gemma_tokenizer import LONG_LENGTH, SHORT_LENGTH, GemmaTokenizer  # noqa: E402

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]
WORDS = ("a photo of the cat dog sitting on red blue wooden table man woman riding horse beach at "
         "sunset city street night close-up 一只 猫 坐在 桌子 上 红色 的 狗 海滩 café naïve").split()
LONG_TEXT = " ".join(WORDS * 12)  # well over 196 pieces
TEXTS = [
    "", " ", "a photo of a cat", "A PHOTO OF A CAT", "A Red Horse Riding On The Beach At Sunset.",
    "一只红色的猫坐在桌子上", "猫 and 狗 on the 桌子", "Über naïve café, résumé — crème brûlée",
    "emoji 👍🏽 and 🇫🇷 flags", "tabs\tand\nnewlines  and   spaces ", "ΑΘΗΝΑ İstanbul ǅ ß",
    "unseen zebra xylophone qwerty", "<eos> in the middle", LONG_TEXT, LONG_TEXT.upper(),
    " ".join(["猫"] * 150), "x" * 500,
]


def _train_pieces() -> dict:
    """A tokenizer.json dict: BPE with byte fallback trained on a few hundred seeded sentences."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")  # Gemma's: no prefix space, spaces become ▁
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                                        show_progress=False))
    spec = json.loads(tok.to_str())
    # Gemma's byte pieces are ordinary vocabulary entries right after the special tokens.
    learned = sorted((i, p) for p, i in spec["model"]["vocab"].items() if p not in SPECIALS)
    pieces = SPECIALS + BYTE_PIECES + [p for _, p in learned if p not in BYTE_PIECES]
    spec["model"]["vocab"] = {p: i for i, p in enumerate(pieces)}
    return spec


def _write_folder(path, spec: dict, **config) -> None:
    path.mkdir()
    (path / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    tokenizer_config = {  # the fields of SigLIP 2's tokenizer_config.json
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": True,
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "mask_token": "<mask>", "padding_side": "right", "model_max_length": 1000000,
        "clean_up_tokenization_spaces": False, **config,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")


@pytest.fixture(scope="module")
def spec():
    return _train_pieces()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, spec):
    path = tmp_path_factory.mktemp("gemma") / "tokenizer"
    _write_folder(path, spec)
    return path


@pytest.fixture(scope="module")
def reference(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


@pytest.mark.parametrize("length", [SHORT_LENGTH, LONG_LENGTH])
def test_matches_transformers_with_fgclip2_arguments(folder, reference, length):
    ids, mask = GemmaTokenizer(folder, context_length=length).encode(TEXTS)
    want = reference([t.lower() for t in TEXTS], padding="max_length", max_length=length, truncation=True)
    np.testing.assert_array_equal(ids, np.asarray(want["input_ids"]))
    np.testing.assert_array_equal(mask, np.asarray(want["attention_mask"]))
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == (len(TEXTS), length)


@pytest.mark.parametrize("length", [SHORT_LENGTH, LONG_LENGTH])
def test_row_semantics(folder, length):
    """Lower-cased pieces, no BOS, one EOS (kept on truncation), then <pad> on the right."""
    raw = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids, mask = GemmaTokenizer(folder).encode(TEXTS, context_length=length)
    truncated = 0
    for text, row, row_mask in zip(TEXTS, ids, mask):
        pieces = raw.encode(text.lower(), add_special_tokens=False).ids[: length - 1] + [1]
        truncated += len(pieces) == length
        want = np.zeros(length, dtype=np.int32)
        want[: len(pieces)] = pieces
        np.testing.assert_array_equal(row, want, err_msg=repr(text))
        np.testing.assert_array_equal(row_mask, (np.arange(length) < len(pieces)).astype(np.int32))
    assert truncated >= 3  # the long texts really were cut
    assert 2 not in ids[:, 0]  # no BOS


def test_interface(folder, spec):
    tok = GemmaTokenizer(folder)
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    assert tok.vocab_size == len(spec["model"]["vocab"])
    assert tok("a photo of a cat").shape == (1, SHORT_LENGTH)
    assert tok([]).shape == (0, SHORT_LENGTH)
    np.testing.assert_array_equal(tok(["A PHOTO Of A Cat"]), tok(["a photo of a cat"]))
    assert tok.decode(tok("A photo of a 猫 é")[0]) == "a photo of a 猫 é"
    clone = pickle.loads(pickle.dumps(tok))  # grain worker processes get a pickled copy
    np.testing.assert_array_equal(clone(TEXTS), tok(TEXTS))
    cased = GemmaTokenizer(folder, lowercase=False)
    assert not np.array_equal(cased(["A PHOTO"]), tok(["A PHOTO"]))


def test_pads_right_whatever_the_folder_says(tmp_path, spec):
    _write_folder(tmp_path / "left", spec, padding_side="left")
    right = GemmaTokenizer(tmp_path / "left")(["a cat"])[0]
    assert right[0] != 0 and right[-1] == 0
    kept = GemmaTokenizer(tmp_path / "left", padding_side=None)(["a cat"])[0]
    assert kept[0] == 0 and kept[-1] == 1


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not found"):
        GemmaTokenizer(tmp_path / "missing")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install .vlalign-jax\[text\]"):
        GemmaTokenizer(tmp_path)
