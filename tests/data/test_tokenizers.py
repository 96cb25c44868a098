"""ClipTokenizer: id-for-id parity with open_clip on a varied seeded corpus, plus API checks."""

import gzip
import importlib.util
import string
from pathlib import Path

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")

from vlalign_jax.data import tokenizers  # noqa: E402
from vlalign_jax.data.tokenizers import ClipTokenizer, clean_text  # noqa: E402

NUM_TEXTS = 2000
CONTEXT_LENGTHS = (77, 248)  # CLIP's, and Long-CLIP / FG-CLIP's longer one

ENGLISH = (
    "a photo of the cat dog on table red blue small large man woman riding horse beach sunset city "
    "street night two three people playing football in park close-up view with background tree "
    "Running JUMPED quickly Über naïve café résumé coöperate don't".split()
)
CONTRACTIONS = [
    "it's", "we'll", "I'M", "they've", "you'd", "can't", "She's", "WE'RE", "o'clock", "'s", "''ll"
]
# (first, last) code points of the scripts random characters are drawn from.
SCRIPTS = {
    "cjk": (0x4E00, 0x9FFF),
    "arabic": (0x0600, 0x06FF),
    "cyrillic": (0x0400, 0x04FF),
    "latin_accented": (0x00C0, 0x024F),
    "devanagari": (0x0900, 0x097F),
    "greek": (0x0370, 0x03FF),
    "hangul": (0xAC00, 0xD7A3),
    "emoji": (0x1F300, 0x1FAFF),
    "bmp": (0x0020, 0xD7FF),
}
ODD_SPACE = [
    " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", "\x1c", "\u200b", "\ufeff",
    " \t \n ",
]
PUNCTUATION = list(string.punctuation) + ["…", "—", "“", "”", "«", "»", "¿", "¡", "·", "※"]
ENTITIES = [
    "&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&amp;amp;", "&amp;lt;b&amp;gt;", "&nbsp;",
    "&eacute;", "&#x1F600;",
]
SPECIALS = [
    "<start_of_text>", "<end_of_text>", "<START_OF_TEXT>", "<end_of_text", "x<end_of_text>y"
]
# Multi-code-point emoji, combining marks (U+0345 is one CLIP drops), compatibility characters.
ODD_SEQUENCES = ["👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "🙂🙂🙂", "\u0345", "e\u0301", "ﬁ", "Ⅻ", "①②"]
MOJIBAKE_SOURCES = [
    "café", "naïve", "it’s “quoted”", "Übergrößenträger", "crème brûlée", "日本語", "—dash"
]


def _words(rng: np.random.Generator, count: int) -> str:
    return " ".join(rng.choice(ENGLISH, size=count))


def _script_run(rng: np.random.Generator) -> str:
    first, last = SCRIPTS[rng.choice(list(SCRIPTS))]
    return "".join(chr(c) for c in rng.integers(first, last + 1, size=rng.integers(1, 25)))


def _number(rng: np.random.Generator) -> str:
    forms = [
        str(rng.integers(0, 10**6)),
        f"{rng.uniform(0, 100):.{rng.integers(1, 5)}f}",
        f"{rng.integers(0, 10**7):,}",
        *["3.14", "1,000", "2nd", "100%", "-7", "1e-3", "٣٤", "४२"],
    ]
    return forms[rng.integers(len(forms))]


def _ascii(rng: np.random.Generator, max_length: int) -> str:
    """Random printable ASCII, spaces included."""
    return "".join(chr(c) for c in rng.integers(32, 127, size=rng.integers(1, max_length)))


def _mojibake(rng: np.random.Generator) -> str:
    source = MOJIBAKE_SOURCES[rng.integers(len(MOJIBAKE_SOURCES))]
    codec = ["latin-1", "cp1252"][rng.integers(2)]
    return source.encode("utf-8").decode(codec, errors="replace")


def _fragment(rng: np.random.Generator) -> str:
    kind = rng.integers(11)
    if kind == 0:
        return _words(rng, rng.integers(1, 15)) + rng.choice([".", "!", "?", ""])
    if kind == 1:
        return _script_run(rng)
    if kind == 2:
        return "".join(rng.choice(PUNCTUATION, size=rng.integers(1, 8)))
    if kind == 3:
        return _number(rng)
    if kind == 4:
        return CONTRACTIONS[rng.integers(len(CONTRACTIONS))]
    if kind == 5:
        return ODD_SPACE[rng.integers(len(ODD_SPACE))]
    if kind == 6:
        return ENTITIES[rng.integers(len(ENTITIES))]
    if kind == 7:
        return SPECIALS[rng.integers(len(SPECIALS))]
    if kind == 8:
        return ODD_SEQUENCES[rng.integers(len(ODD_SEQUENCES))]
    if kind == 9:
        return _mojibake(rng)
    return _ascii(rng, max_length=30)


def _text(rng: np.random.Generator) -> str:
    kind = rng.integers(20)
    if kind == 0:
        return ["", " ", "\t\n", "\u00a0"][rng.integers(4)]
    if kind == 1:  # over-long: several hundred words, past both context lengths
        return _words(rng, rng.integers(200, 500))
    pieces = [_fragment(rng) for _ in range(rng.integers(1, 6))]
    separators = rng.choice(ODD_SPACE + [""] * 4, size=len(pieces))
    trailing = ODD_SPACE[rng.integers(len(ODD_SPACE))] if kind == 2 else ""
    return "".join(s + p for s, p in zip(separators, pieces)) + trailing


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    rng = np.random.default_rng(20240611)
    return [_text(rng) for _ in range(NUM_TEXTS)]


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


@pytest.fixture(scope="module")
def reference():
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def corpus_ids(tokenizer, corpus) -> dict[int, np.ndarray]:
    return {length: tokenizer(corpus, context_length=length) for length in CONTEXT_LENGTHS}


@pytest.mark.parametrize("context_length", CONTEXT_LENGTHS)
def test_ids_match_open_clip(reference, corpus, corpus_ids, context_length):
    ours = corpus_ids[context_length]
    assert ours.dtype == np.int32 and ours.shape == (NUM_TEXTS, context_length)
    expected = open_clip.tokenize(corpus, context_length=context_length).numpy()
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(ours, reference(corpus, context_length=context_length).numpy())


def test_corpus_covers_the_hard_cases(corpus, corpus_ids):
    # Guards against the generator drifting into only easy strings.
    lengths = (corpus_ids[248] != 0).sum(axis=1)
    assert (lengths == 248).sum() > 20 and (lengths == 2).sum() > 20
    assert sum(clean_text(t) != t for t in corpus) > NUM_TEXTS // 2
    assert sum("<start_of_text>" in t.lower() for t in corpus) > 20


def test_clean_text_repairs_and_unescapes():
    mojibake = "Caf\u00c3\u00a9 It\u00e2\u20ac\u2122s"  # "Café It’s" as UTF-8 read as cp1252
    assert clean_text(f"  {mojibake} &amp;amp;\t\u00a0 X  ") == "café it's & x"


def test_vocabulary_matches_open_clip(tokenizer, reference):
    ours = (tokenizer.vocab_size, tokenizer.sot_token_id, tokenizer.eot_token_id)
    theirs = (reference.vocab_size, reference.sot_token_id, reference.eot_token_id)
    assert ours == theirs == (49408, 49406, 49407)
    # Decoding each id alone pins the full vocabulary order.
    assert all(tokenizer.decode([i]) == reference.decode([i]) for i in range(tokenizer.vocab_size))


def test_decode_round_trips_clean_ascii(tokenizer):
    text = "  A Photo of\tTHE   cat  on a mat "
    assert tokenizer.decode(tokenizer.encode(text)) == clean_text(text) + " "
    # Punctuation and digits come back as separate words, so compare with spaces removed.
    rng = np.random.default_rng(1)
    for _ in range(200):
        text = _ascii(rng, max_length=80)
        decoded = tokenizer.decode(tokenizer.encode(text))
        assert "".join(decoded.split()) == "".join(clean_text(text).split()), text


def test_single_string_and_context_length_override():
    short = ClipTokenizer(context_length=16)
    ids = short("a photo of a cat")
    assert ids.shape == (1, 16) and ids.dtype == np.int32
    assert ids[0, 0] == short.sot_token_id and ids[0, 6] == short.eot_token_id
    assert not ids[0, 7:].any()
    assert short("a photo of a cat", context_length=248).shape == (1, 248)
    with pytest.raises(ValueError, match="context_length"):
        short("a cat", context_length=1)


def test_truncation_keeps_end_token_last(tokenizer):
    ids = tokenizer(["word " * 300, "one two"], context_length=77)
    assert ids[0, 0] == tokenizer.sot_token_id and ids[0, -1] == tokenizer.eot_token_id
    assert (ids[0, 1:-1] == tokenizer.encode("word")[0]).all()
    assert ids[1, 3] == tokenizer.eot_token_id and not ids[1, 4:].any()


def test_special_tokens_in_text_map_to_special_ids(tokenizer):
    ids = tokenizer.encode("x <END_OF_TEXT>")
    assert ids == tokenizer.encode("x") + [tokenizer.eot_token_id]


def test_uncompressed_vocab_file(tokenizer, tmp_path):
    plain = tmp_path / "bpe_simple_vocab_16e6.txt"
    package_dir = Path(importlib.util.find_spec("open_clip").submodule_search_locations[0])
    plain.write_bytes(gzip.decompress((package_dir / tokenizers.VOCAB_FILENAME).read_bytes()))
    texts = ["a photo of a cat", "日本語のテキスト", "it's 3.14 &amp; more"]
    np.testing.assert_array_equal(ClipTokenizer(plain)(texts), tokenizer(texts))


def test_missing_vocab_errors(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "bpe.txt.gz"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ClipTokenizer(missing)
    monkeypatch.setattr(tokenizers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="vocab_path.*open_clip_torch"):
        ClipTokenizer()


def test_pickles_for_worker_processes(tokenizer):
    import pickle

    texts = ["a photo of a cat", "two dogs on a sofa"]
    tokenizer(texts)  # fill the word cache, which is not pickled
    copy = pickle.loads(pickle.dumps(tokenizer))
    np.testing.assert_array_equal(copy(texts), tokenizer(texts))
