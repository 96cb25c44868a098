"""`vlalign negatives`: rule mode end to end on a COCO captions file, resuming (no id generated twice,
a torn last line repaired), the output read back by DeglaJson, and the LLM mode's plumbing with a
tiny randomly initialised causal LM built here (its answers are word salad: rejected, retried and
counted)."""

import argparse
import json
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from vlalign_jax.data.negatives_job import (
    NUM_NEGATIVES, NegativeRequest, add_arguments, kind_order, read_captions, run)
from vlalign_jax.data.negatives_rules import KINDS, validate_negative
from vlalign_jax.data.sources.degla_json import DeglaJson

CAPTIONS = [  # (image_id, caption): COCO-style, some with COCO's stray spaces and newlines
    (9, "A man riding a horse on a sandy beach. "),
    (9, "Two dogs playing with a red frisbee in the park."),
    (25, "A black and white cat sitting on a wooden chair.\n"),
    (25, "A large red bus parked next to a small white car."),
    (30, "An orange cat sleeping on a laptop keyboard."),
    (30, "A  woman holding an umbrella while walking down the street."),
    (42, "A kitchen with white cabinets and a steel refrigerator."),
    (42, "A tall giraffe eating leaves from a tree while a small zebra watches."),
    (57, "A bowl of soup next to a sandwich on a white plate."),
    (57, "A brown bear walking across a snowy field."),
    (61, "Someone waves hello."),  # no lexicon word: no rule applies, so it is skipped
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def coco(tmp_path):
    """(captions file, COCO root with train2014 images for every image id)."""
    annotations = [{"image_id": image_id, "id": 1000 + n, "caption": caption}
                   for n, (image_id, caption) in enumerate(CAPTIONS)]
    captions = tmp_path / "annotations" / "captions_train2014.json"
    captions.parent.mkdir()
    captions.write_text(json.dumps({"images": [], "annotations": annotations}))
    images = tmp_path / "coco" / "train2014"
    images.mkdir(parents=True)
    for image_id in {image_id for image_id, _ in CAPTIONS}:
        Image.fromarray(np.full((8, 8, 3), image_id, np.uint8)).save(images / f"COCO_train2014_{image_id:012d}.jpg")
    return captions, tmp_path / "coco"


def test_rule_mode_end_to_end_and_read_back_by_degla_json(coco, tmp_path, capsys):
    captions, coco_root = coco
    out = tmp_path / "negatives" / "degla.jsonl"
    from vlalign_jax.cli import main

    assert main(["negatives", "--captions", str(captions), "--out", str(out), "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "negatives" / "degla.jsonl.summary").read_text())
    records = read_lines(out)
    assert [r["id"] for r in records] == list(range(1000, 1010))  # all but the last, in input order
    for record, (image_id, caption) in zip(records, CAPTIONS):
        assert record["image_id"] == image_id and record["original"] == " ".join(caption.split())
        assert len(record["enhanced"]) == NUM_NEGATIVES and set(record["types"]) <= set(KINDS)
        assert len({text.lower() for text in record["enhanced"]}) == NUM_NEGATIVES
        for kind, text in zip(record["types"], record["enhanced"]):
            assert validate_negative(record["original"], text, kind) is None
    assert printed["written"] == 10 and printed["skipped_too_few_negatives"] == 1
    assert sum(printed["negatives_per_type"].values()) == NUM_NEGATIVES * 10
    assert printed["not_applicable"]["swap_nouns"] >= 1  # "Someone waves hello." at least
    assert [r["id"] for r in read_lines(tmp_path / "negatives" / "degla.jsonl.skipped")] == [1010]

    source = DeglaJson(out, coco_root)  # the format DeGLA trains on, JSON lines flavour
    assert len(source) == 10
    for index, record in enumerate(records):
        example = source[index]
        assert example["caption"] == record["original"] and example["negative_captions"] == record["enhanced"]
        assert example["image"].size == (8, 8)


def test_types_rotate_over_captions():
    assert [kind_order(n)[0] for n in range(6)] == list(KINDS) + [KINDS[0]]
    assert all(sorted(kind_order(n)[:5]) == sorted(KINDS) for n in range(5))


def test_resume_skips_finished_ids_and_repairs_a_torn_line(coco, tmp_path, capsys):
    captions, _ = coco
    out = tmp_path / "degla.jsonl"
    args = ["--captions", str(captions), "--out", str(out), "--no-progress", "--seed", "3"]
    run(parser().parse_args(args + ["--limit", "4"]))
    first = out.read_text()
    assert [r["id"] for r in read_lines(out)] == [1000, 1001, 1002, 1003]
    capsys.readouterr()
    run(parser().parse_args(args))
    summary = json.loads(capsys.readouterr().out)
    assert out.read_text().startswith(first)  # finished ids kept as they were, not regenerated
    assert summary["already_done"] == 4 and summary["written"] == 6 and summary["skipped_too_few_negatives"] == 1
    ids = [r["id"] for r in read_lines(out)]
    assert ids == sorted(set(ids)) and len(ids) == 10

    complete = out.read_text()
    with out.open("a") as f:  # a run killed mid-write leaves half a line
        f.write('{"id": 1011, "image_id": 61, "orig')
    run(parser().parse_args(args))
    summary = json.loads(capsys.readouterr().out)
    assert out.read_text() == complete and summary["written"] == 0 and summary["already_done"] == 11
    out.write_text(complete.rstrip("\n"))  # killed between a whole record and its newline
    run(parser().parse_args(args))
    assert out.read_text() == complete and json.loads(capsys.readouterr().out)["written"] == 0

    # Same seed, fresh file: the same negatives, whatever the batching or the resume.
    fresh = tmp_path / "fresh.jsonl"
    run(parser().parse_args(["--captions", str(captions), "--out", str(fresh), "--no-progress", "--seed", "3",
                             "--batch-size", "3"]))
    assert fresh.read_text() == complete


def test_reads_degla_json_and_json_lines_without_ids(tmp_path):
    array = tmp_path / "in.json"
    array.write_text(json.dumps([{"image_id": 5, "original": "a cat on a mat"},
                                 {"image_id": "7", "original": "a dog on a red rug"}]))
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"image_id": 5, "caption": "a cat", "id": "x"}\n{"image_id": 6, "caption": "two dogs"}\n')
    assert [(c.id, c.image_id, c.caption) for c in read_captions(array)] == [
        (0, 5, "a cat on a mat"), (1, 7, "a dog on a red rug")]
    assert [c.id for c in read_captions(lines)] == ["x", 1]
    lines.write_text('{"image_id": 5, "caption": "a cat", "id": 1}\n{"image_id": 6, "caption": "two dogs"}\n')
    with pytest.raises(ValueError, match="id 1 already used"):
        read_captions(lines)


# -- the LLM mode, with a tiny randomly initialised causal LM ----------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A 1-layer GPT-2 with a word-level tokenizer over the prompts' words (newlines kept as tokens)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from vlalign_jax.data.negatives_llm import build_prompt

    split = tokenizers.pre_tokenizers
    pre_tokenizer = split.Sequence([split.Split(tokenizers.Regex(" +"), behavior="removed"),
                                    split.Split("\n", behavior="isolated")])
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for kind in KINDS:
        for _, caption in CAPTIONS:
            for piece, _ in pre_tokenizer.pre_tokenize_str(build_prompt(kind, caption)):
                vocab.setdefault(piece, len(vocab))
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizer
    folder = tmp_path_factory.mktemp("tiny_lm")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>",
                                         unk_token="<unk>").save_pretrained(folder)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=512, vocab_size=len(vocab),
                                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
    import torch

    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_llm_mode_plumbing_rejects_retries_and_counts(coco, tiny_lm, tmp_path, capsys):
    captions, _ = coco
    out = tmp_path / "llm.jsonl"
    retries, limit = 1, 3
    status = run(parser().parse_args([
        "--captions", str(captions), "--out", str(out), "--mode", "llm", "--model", str(tiny_lm), "--limit",
        str(limit), "--batch-size", "4", "--max-new-tokens", "6", "--retries", str(retries), "--no-progress"]))
    summary = json.loads(capsys.readouterr().out)
    assert status == 0 and summary["mode"] == "llm" and summary["captions"] == limit
    # Random weights write word salad: every answer is rejected, so each caption tries each of the five
    # types once (then drops it), each with 1 + retries attempts, and is skipped.
    assert summary["written"] == 0 and summary["skipped_too_few_negatives"] == limit
    assert sum(summary["rejected"].values()) == limit * len(KINDS) * (1 + retries)
    assert set(summary["rejected"]) <= {"empty", "identical", "reshuffle_changed_words", "bad_start", "bad_end",
                                        "length", "unrelated", "prompt_leftover", "duplicate"}
    assert out.read_text() == "" and len(read_lines(tmp_path / "llm.jsonl.skipped")) == limit


def test_llm_generation_is_batched_left_padded_and_continuation_only(tiny_lm):
    from vlalign_jax.data.negatives_llm import CausalLmNegatives, GenerationSettings, build_prompt

    writer = CausalLmNegatives(tiny_lm, GenerationSettings(max_new_tokens=5), batch_size=3)
    assert writer.tokenizer.padding_side == "left"
    prompts = [build_prompt(kind, caption) for kind, (_, caption) in zip(KINDS, CAPTIONS)]  # of unequal lengths
    batched = writer.generate(prompts, sample=False)
    assert batched == [writer.generate([p], sample=False)[0] for p in prompts]
    for continuation in batched:
        assert len(writer.tokenizer(continuation)["input_ids"]) <= 5 and "Rule:" not in continuation


def test_llm_write_parses_validates_and_retries_sampled(tiny_lm, monkeypatch):
    from vlalign_jax.data.negatives_llm import CausalLmNegatives, GenerationSettings

    writer = CausalLmNegatives(tiny_lm, GenerationSettings(retries=2), batch_size=8)
    answers = {  # caption -> continuation per attempt
        "A cat on a mat.": [" A dog on a mat.\nInput: more"],
        "A dog chasing a small cat.": [" A small dog chasing the cat.", ' "A small cat chasing a dog."'],
        "A red car next to a blue truck.": ["\n\n", "Output: A blue car next to a red truck"],
        "A man on a horse.": ["(a horse on a man", "Input: A man", "A man on a horse."],
    }
    calls = []

    def fake_generate(prompts, sample):
        captions = [p.rsplit("Input: ", 1)[1].removesuffix("\nOutput:") for p in prompts]
        calls.append((sample, captions))
        return [answers[c][sum(c in cs for _, cs in calls) - 1] for c in captions]

    monkeypatch.setattr(writer, "generate", fake_generate)
    requests = [NegativeRequest("A cat on a mat.", "replace_nouns", "1"),
                NegativeRequest("A dog chasing a small cat.", "reshuffle", "2"),
                NegativeRequest("A red car next to a blue truck.", "swap_adjectives", "3", draw=1),
                NegativeRequest("A man on a horse.", "swap_nouns", "4")]
    assert writer.write(requests) == ["A dog on a mat.", "A small cat chasing a dog.",
                                      "A blue car next to a red truck", None]
    assert calls[0] == (False, ["A cat on a mat.", "A dog chasing a small cat.", "A man on a horse."])
    assert calls[1] == (True, ["A red car next to a blue truck."])  # asked again: sampled from the start
    assert all(sample for sample, _ in calls[2:])  # retries are sampled
    assert writer.rejected == Counter({"reshuffle_changed_words": 1, "empty": 1, "bad_start": 1,
                                       "prompt_leftover": 1, "identical": 1})


def test_llm_mode_needs_a_model_and_names_the_extra(tmp_path, monkeypatch):
    from vlalign_jax.data.negatives_llm import CausalLmNegatives

    with pytest.raises(ValueError, match="--model"):
        run(parser().parse_args(["--captions", "x", "--out", str(tmp_path / "o"), "--mode", "llm"]))
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"vlalign-jax\[text\]"):
        CausalLmNegatives(tmp_path)
