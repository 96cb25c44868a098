"""Rule-based DeGLA negatives on real COCO-style captions: each edit changes what it says it changes
(read back token by token against the lexicon), keeps the caption valid, answers None where it has
nothing to edit, and is deterministic given the rng."""

import random
from collections import Counter

import pytest

from vlalign_jax.data.negatives_rules import (
    ADJECTIVE_CLASS_OF, KINDS, NOUN_FORMS, NOUN_GROUP_OF, NOUN_GROUPS, RULE_EDITS, TOKEN, caption_words, noun_form,
    parse, plural, replace_adjectives, replace_nouns, reshuffle, swap_adjectives, swap_nouns, validate_negative)

CAPTIONS = [
    "A man riding a horse on a sandy beach.",
    "Two dogs playing with a red frisbee in the park.",
    "A black and white cat sitting on a wooden chair.",
    "A large red bus parked next to a small white car.",
    "An orange cat sleeping on a laptop keyboard.",
    "A woman holding an umbrella while walking down the street.",
    "A plate of food with broccoli and a fork.",
    "A man and a woman standing in a kitchen.",
    "A kitchen with white cabinets and a stainless steel refrigerator.",
    "A giraffe standing next to a tall tree.",
    "Hot dogs on a plate next to a glass of beer.",
    "A teddy bear sitting on a bed.",
    "Three zebras grazing in a grassy field.",
    "A young boy swinging a baseball bat at a ball.",
    "A pizza with cheese and tomatoes on a wooden table.",
    "A bathroom with a toilet and a sink under a mirror.",
    "people walking on a busy city street",
    "A glass vase with flowers on a table.",
    "A tall giraffe eating leaves from a tree while a small zebra watches.",
    "A surfer riding a big wave in the ocean.",
    "A yellow fire hydrant on the side of a road.",
    "An elephant walking through tall grass near a river.",
    "A little girl eating a slice of chocolate cake.",
    "A brown bear walking across a snowy field.",
    "Several sheep grazing on a green hill.",
    "A cat laying on top of a blue suitcase.",
    "A train traveling down the tracks past a brick building.",
    "A skateboarder doing a trick on a metal rail.",
    "A bowl of soup next to a sandwich on a white plate.",
    "Two men playing tennis on a clay court , with a net behind them",
    "A red stop sign on a street corner.",
    "A cat.",
]
ARTICLES = {"a", "an"}


def changed_positions(original: str, negative: str) -> list[int]:
    """Token positions whose words differ (an article changed to agree with its noun is not a change)."""
    before, after = TOKEN.findall(original.lower()), TOKEN.findall(negative.lower())
    assert len(before) == len(after), (original, negative)
    return [i for i, (a, b) in enumerate(zip(before, after)) if a != b and not {a, b} <= ARTICLES]


def edits(kind, seeds=range(3)):
    """(caption, negative) for every caption and seed where the edit applies."""
    out = [(c, RULE_EDITS[kind](c, random.Random(seed))) for c in CAPTIONS for seed in seeds]
    return [(c, n) for c, n in out if n is not None]


def test_lexicon_is_consistent():
    nouns = [n for group in NOUN_GROUPS.values() for n in group]
    assert len(nouns) >= 150 and len(nouns) == len(set(nouns)), "each noun in exactly one group"
    assert NOUN_FORMS["dogs"] == ("dog", True) and NOUN_FORMS["men"] == ("man", True)
    assert NOUN_FORMS["knives"] == ("knife", True)
    assert noun_form(parse("a sheep"), 1) == ("sheep", False) and noun_form(parse("two sheep"), 1) == ("sheep", True)
    assert [plural(n) for n in ("bus", "bench", "strawberry", "toy", "person", "box")] == [
        "buses", "benches", "strawberries", "toys", "people", "boxes"]
    assert {ADJECTIVE_CLASS_OF[w] for w in ("red", "small", "wooden", "empty")} == {
        "color", "size", "material", "state"}


def test_parts_of_speech_by_lookup_and_context():
    parsed = parse("An orange cat and a glass of wine on a dog bed")
    roles = dict(zip(parsed.lowers, parsed.roles))
    assert roles["orange"] == "adjective" and roles["glass"] == "noun" and roles["cat"] == "noun"
    assert roles["dog"] == "modifier" and roles["bed"] == "noun"  # in a run of nouns the last is the head
    assert parse("A glass vase").roles[1] == "adjective"
    assert parse("Hot dogs on a plate").roles[:2] == ["locked", "fixed_noun"]


def test_every_negative_is_valid_and_each_kind_applies_often():
    applies = Counter()
    for kind in KINDS:
        for caption, negative in edits(kind, seeds=[0]):
            assert validate_negative(caption, negative, kind) is None, (kind, caption, negative)
            assert negative[0].isupper() == caption[0].isupper()  # sentence case kept
            applies[kind] += 1
    # Out of 32 captions; swap_adjectives needs adjectives on two different nouns, which is rarer.
    assert applies["replace_nouns"] >= 28 and applies["reshuffle"] >= 22 and applies["swap_nouns"] >= 20
    assert applies["replace_adjectives"] >= 18 and applies["swap_adjectives"] >= 4, applies


def test_reshuffle_keeps_the_word_multiset_and_moves_whole_phrases():
    for caption, negative in edits("reshuffle"):
        assert Counter(caption_words(caption)) == Counter(caption_words(negative)), (caption, negative)
        assert caption_words(caption) != caption_words(negative)
    for seed in range(5):  # one pair of phrases: one answer, with sentence case moved along
        assert reshuffle("A dog chasing a small cat.", random.Random(seed)) == "A small cat chasing a dog."
        assert reshuffle("The man riding a horse", random.Random(seed)) == "A horse riding the man"


def test_swap_nouns_exchanges_two_lexicon_nouns_inflected_for_their_slots():
    for caption, negative in edits("swap_nouns"):
        first, second = changed_positions(caption, negative)
        before, after = parse(caption), parse(negative)
        lemma = {i: noun_form(before, i) for i in (first, second)}  # (lemma, is plural)
        assert lemma[first][0] != lemma[second][0]
        assert noun_form(after, first) == (lemma[second][0], lemma[first][1]), (caption, negative)
        assert noun_form(after, second) == (lemma[first][0], lemma[second][1]), (caption, negative)
    assert swap_nouns("Two dogs and a cat.", random.Random(0)) == "Two cats and a dog."
    assert swap_nouns("An apple next to a banana.", random.Random(0)) == "A banana next to an apple."


def test_swap_adjectives_exchanges_two_adjectives_of_different_nouns():
    for caption, negative in edits("swap_adjectives"):
        first, second = changed_positions(caption, negative)
        before, after = TOKEN.findall(caption.lower()), TOKEN.findall(negative.lower())
        assert before[first] in ADJECTIVE_CLASS_OF and before[second] in ADJECTIVE_CLASS_OF
        assert (after[first], after[second]) == (before[second], before[first])
    assert swap_adjectives("A red car next to a blue truck.", random.Random(1)) == "A blue car next to a red truck."


def test_replacements_come_from_the_same_class_and_differ():
    for caption, negative in edits("replace_adjectives"):
        (position,) = changed_positions(caption, negative)
        old, new = TOKEN.findall(caption.lower())[position], TOKEN.findall(negative.lower())[position]
        assert old != new and ADJECTIVE_CLASS_OF[old] == ADJECTIVE_CLASS_OF[new], (caption, negative)
        assert new not in caption_words(caption)
    for caption, negative in edits("replace_nouns"):
        (position,) = changed_positions(caption, negative)
        (old_lemma, old_plural), (new_lemma, new_plural) = noun_form(parse(caption), position), noun_form(
            parse(negative), position)
        assert old_lemma != new_lemma and NOUN_GROUP_OF[old_lemma] == NOUN_GROUP_OF[new_lemma], (caption, negative)
        assert old_plural == new_plural, (caption, negative)  # in the number of the word it replaces
    assert {replace_adjectives("A small dog", random.Random(s)) for s in range(20)} <= {
        "A large dog", "A big dog", "A huge dog"}  # a size's opposite, never a synonym ("little")
    for seed in range(10):  # the article follows the new word
        assert replace_nouns("An elephant.", random.Random(seed)).startswith("A ")
        assert replace_adjectives("An orange cat.", random.Random(seed)).startswith("A ")


@pytest.mark.parametrize("caption, kinds_without_answer", [
    ("A cat.", {"reshuffle", "swap_nouns", "swap_adjectives", "replace_adjectives"}),
    ("A man and a woman.", {"reshuffle", "swap_nouns", "swap_adjectives", "replace_adjectives"}),
    ("A teddy bear sitting on a bed.", {"swap_nouns", "swap_adjectives", "replace_adjectives"}),
    ("A yellow fire hydrant on the side of a road.", {"reshuffle", "swap_nouns", "swap_adjectives"}),
    ("Someone waves hello", set(KINDS)),
    ("", set(KINDS)),
])
def test_none_when_there_is_nothing_to_edit(caption, kinds_without_answer):
    for kind in KINDS:
        answer = RULE_EDITS[kind](caption, random.Random(0))
        assert (answer is None) == (kind in kinds_without_answer), (kind, answer)


def test_deterministic_given_the_rng():
    for kind in KINDS:
        first = [RULE_EDITS[kind](c, random.Random(7)) for c in CAPTIONS]
        assert first == [RULE_EDITS[kind](c, random.Random(7)) for c in CAPTIONS]
        others = [RULE_EDITS[kind](c, random.Random(8)) for c in CAPTIONS]
        if kind in ("replace_nouns", "replace_adjectives", "swap_nouns"):
            assert first != others  # the seed matters where there are choices


@pytest.mark.parametrize("negative, kind, reason", [
    ("  ", "replace_nouns", "empty"),
    ("a CAT on a mat", "replace_nouns", "identical"),  # case and punctuation do not count
    ("A mat on a cat", "reshuffle", None),
    ("A mat on the cat.", "reshuffle", "reshuffle_changed_words"),
    ("- A dog on a mat.", "replace_nouns", "bad_start"),
    ("A dog on a mat,", "replace_nouns", "bad_end"),
    ("A dog", "replace_nouns", "length"),
    ("A dog on a mat and a cat on a mat and a dog on a mat again", "replace_nouns", "length"),
    ("Two birds fly over the sea", "replace_nouns", "unrelated"),  # word salad or a new caption
    ("Output: A dog on a mat.", "replace_nouns", "prompt_leftover"),
    ("A dog on a mat.\nInput", "replace_nouns", "prompt_leftover"),
    ("A dog on a mat!", "replace_nouns", None),
    ("A cat on a rug.", "replace_nouns", "duplicate"),
])
def test_validate_negative(negative, kind, reason):
    assert validate_negative("A cat on a mat.", negative, kind, avoid=("a cat on a RUG",)) == reason
