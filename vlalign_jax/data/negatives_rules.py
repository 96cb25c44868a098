"""Rule-based hard-negative captions of DeGLA's five types, and the checks every negative must pass.

DeGLA (research/degla.md section 2.2) has an LLM rewrite each COCO caption into five kinds of false
caption: reshuffle order, swap nouns, swap adjectives, replace adjectives, replace nouns. The release
has no rule-based fallback. This module is one, for use without a language model: a small built-in
lexicon (colours, sizes, materials, states, about 150 common COCO nouns in semantic groups,
relations, a few verbs) gives a part of speech by lookup, and each edit is a pure function
`(caption, rng) -> str | None` that answers None when the caption has nothing to edit (one noun
cannot be swapped). `validate_negative` is shared with the LLM mode (`negatives_llm.py`).

Parts of speech, by lookup: a word in both the noun and the adjective lists ("orange", "glass") is
an adjective when a noun or adjective follows it ("a glass vase") and a noun otherwise ("a glass
of wine"). In a run of nouns only the last is the head ("a pizza box"); a few compounds ("hot dog",
"teddy bear") are never edited. A noun phrase is a head noun with what precedes it back to a
determiner ("a fluffy white cat"); without a determiner, only lexicon words are taken in.

Edits keep a caption's spacing and case, inflect a noun like the slot it lands in ("two dogs and a
cat" -> "two cats and a dog"), fix "a"/"an" before an edited word, and never merely reorder a
symmetric list ("a man and a woman" -> "a woman and a man" is no negative).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from itertools import combinations
from typing import Callable, Sequence

KINDS = ("reshuffle", "swap_nouns", "swap_adjectives", "replace_adjectives", "replace_nouns")

# -- lexicon -----------------------------------------------------------------------------------
COLORS = tuple("red orange yellow green blue purple pink brown black white gray grey silver golden tan".split())
COLOR_SYNONYMS = ({"gray", "grey"},)
SIZE_OPPOSITES = {"small": ("large", "big", "huge"), "little": ("big", "large"), "tiny": ("huge", "large"),
                  "large": ("small", "tiny", "little"), "big": ("small", "little", "tiny"), "huge": ("tiny", "small"),
                  "giant": ("tiny", "small"), "tall": ("short",), "short": ("tall", "long"), "long": ("short",),
                  "wide": ("narrow",), "narrow": ("wide",), "thick": ("thin",), "thin": ("thick",)}
MATERIALS = tuple("wooden metal plastic glass stone brick leather paper concrete ceramic steel wicker marble "
                  "cardboard".split())
STATE_OPPOSITES = {"old": ("new", "young"), "new": ("old",), "young": ("old",), "empty": ("full", "crowded"),
                   "full": ("empty",), "open": ("closed",), "closed": ("open",), "wet": ("dry",), "dry": ("wet",),
                   "clean": ("dirty", "messy"), "dirty": ("clean",), "messy": ("clean", "neat"), "neat": ("messy",),
                   "hot": ("cold",), "cold": ("hot",), "sunny": ("cloudy", "snowy"), "cloudy": ("sunny",),
                   "snowy": ("sunny",), "bright": ("dark",), "dark": ("bright",), "busy": ("quiet", "empty"),
                   "quiet": ("busy",), "crowded": ("empty",)}
ADJECTIVE_CLASSES = {"color": COLORS, "size": tuple(SIZE_OPPOSITES), "material": MATERIALS,
                     "state": tuple(STATE_OPPOSITES)}
# Semantic groups: a replaced noun stays in its group ("dog" -> "cat", not "dog" -> "pizza").
NOUN_GROUPS: dict[str, tuple[str, ...]] = {name: tuple(words.split()) for name, words in {
    "person": "man woman boy girl child kid person guy lady baby player skier surfer skateboarder snowboarder "
              "officer chef rider",
    "animal": "dog cat horse sheep cow elephant bear zebra giraffe bird duck pigeon goat puppy kitten bull pony "
              "deer lamb",
    "vehicle": "car truck bus train motorcycle bicycle bike boat airplane plane jet van taxi scooter tractor "
               "trolley ship kayak canoe helicopter",
    "food": "pizza sandwich cake donut banana apple orange broccoli carrot hamburger salad bread cheese egg soup "
            "cookie pie tomato potato lemon strawberry steak",
    "furniture": "chair couch sofa bed table desk bench shelf cabinet dresser toilet sink mirror lamp clock vase "
                 "pillow blanket rug curtain window door counter refrigerator oven microwave stove",
    "tableware": "plate bowl cup mug glass bottle fork knife spoon pan pot tray jar box basket bag",
    "electronics": "laptop computer keyboard mouse phone television tv monitor screen remote camera",
    "gear": "ball frisbee kite skateboard surfboard snowboard ski racket bat glove helmet net",
    "clothing": "hat shirt jacket coat dress tie suitcase backpack purse umbrella scarf cap shoe",
    "place": "street road field beach park room kitchen bathroom yard sidewalk ocean lake river hill mountain city "
             "highway station airport runway",
    "nature": "grass water snow sand sky tree bush dirt",
    "structure": "building house fence wall sign pole bridge tower track",
}.items()}
# Never replaced by one another: a replacement must make the caption false, not say it again.
NOUN_SYNONYMS = ({"bike", "bicycle"}, {"plane", "airplane", "jet"}, {"couch", "sofa"}, {"boat", "ship"},
                 {"tv", "television", "monitor", "screen"}, {"kid", "child", "baby"}, {"man", "guy"},
                 {"woman", "lady"}, {"cap", "hat"}, {"cup", "mug"}, {"dog", "puppy"}, {"cat", "kitten"},
                 {"horse", "pony"}, {"cow", "bull"}, {"sheep", "lamb"}, {"car", "taxi"}, {"computer", "laptop"},
                 {"road", "street", "highway"}, {"room", "kitchen", "bathroom"}, {"coat", "jacket"})
GENERIC_NOUNS = frozenset(("person", "rider", "player"))  # true of too much to replace or be a replacement
IRREGULAR_PLURALS = {"man": "men", "woman": "women", "child": "children", "person": "people", "mouse": "mice",
                     "sheep": "sheep", "deer": "deer", "knife": "knives", "shelf": "shelves",
                     "tomato": "tomatoes", "potato": "potatoes"}
RELATIONS = frozenset(("to up down out off for on in under above below behind beside near inside over next across "
                       "along through with by at into onto outside against beneath between around atop underneath "
                       "front top side toward towards from of").split())
VERBS = frozenset(("is are sits sit sitting stands stand standing holds holding rides riding eats eating plays "
                   "playing walks walking looks looking flies flying lays laying lies lying parked wearing "
                   "carrying has have watching waiting covered filled topped made").split())
DETERMINERS = frozenset(("a an the this that these those his her their its some several many two three four "
                         "five one few other another each every").split())
PLURAL_DETERMINERS = frozenset("these those some several many two three four five few".split())
SYMMETRIC_CONNECTORS = frozenset(("and", "or", "&", ","))  # "A and B" says the same as "B and A"
LOCKED_COMPOUNDS = frozenset({("hot", "dog"), ("teddy", "bear"), ("polar", "bear"), ("cell", "phone"),
                              ("living", "room"), ("stop", "sign"), ("fire", "truck")})
AN_EXCEPTIONS = {"a": ("uni", "use", "one", "euro"), "an": ("hour", "honest", "heir")}


def plural(noun: str) -> str:
    """English plural of a lexicon noun."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


NOUN_GROUP_OF = {noun: group for group, nouns in NOUN_GROUPS.items() for noun in nouns}
# word -> (lemma, is plural); a word that is its own plural ("sheep") reads as singular.
NOUN_FORMS = {**{plural(n): (n, True) for n in NOUN_GROUP_OF}, **{n: (n, False) for n in NOUN_GROUP_OF}}
ADJECTIVE_CLASS_OF = {word: name for name, words in ADJECTIVE_CLASSES.items() for word in words}
ROLE_OF = {**{w: "verb" for w in VERBS}, **{w: "adjective" for w in ADJECTIVE_CLASS_OF},
           **{w: "ambiguous" if w in ADJECTIVE_CLASS_OF else "noun" for w in NOUN_FORMS},
           **{w: "relation" for w in RELATIONS}, **{w: "determiner" for w in DETERMINERS}}

# -- parsing -----------------------------------------------------------------------------------
TOKEN = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*|\S")
WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


@dataclasses.dataclass
class ParsedCaption:
    """A caption as tokens, the whitespace before each (`spaces`) and after the last, and roles:
    noun (an editable head), fixed_noun (head of a locked compound), modifier (a noun before a noun),
    locked, adjective, determiner, relation, verb, punct, or None for a word not in the lexicon."""
    tokens: list[str]
    spaces: list[str]
    trailing: str
    roles: list[str | None]

    @property
    def lowers(self) -> list[str]:
        return [t.lower() for t in self.tokens]

    def text(self) -> str:
        return "".join(s + t for s, t in zip(self.spaces, self.tokens)) + self.trailing


def parse(caption: str) -> ParsedCaption:
    """Tokens and their roles (see ParsedCaption), by lexicon lookup and the context rules above."""
    matches = list(TOKEN.finditer(caption))
    tokens = [m.group() for m in matches]
    ends = [0] + [m.end() for m in matches]
    spaces = [caption[ends[i]:m.start()] for i, m in enumerate(matches)]
    lowers = [t.lower() for t in tokens]
    roles = [ROLE_OF.get(w, "punct" if not w[0].isalnum() else "verb" if w.endswith("ing") else None)
             for w in lowers]
    for i in range(len(roles)):  # an adjective when a noun or adjective follows ("orange and white cat")
        if roles[i] == "ambiguous":
            after = i + 2 if i + 2 < len(roles) and lowers[i + 1] in ("and", ",") else i + 1
            following = roles[after] if after < len(roles) else None
            roles[i] = "adjective" if following in ("noun", "adjective", "ambiguous") else "noun"
    for i in range(len(roles) - 2, -1, -1):  # in a run of nouns only the last is the head
        if roles[i] == "noun" and roles[i + 1] in ("noun", "modifier"):
            roles[i] = "modifier"
    for i in range(len(roles) - 1):
        second = NOUN_FORMS.get(lowers[i + 1], (lowers[i + 1], False))[0]
        if (lowers[i], second) in LOCKED_COMPOUNDS:
            roles[i], roles[i + 1] = "locked", "fixed_noun"
    return ParsedCaption(tokens, spaces, caption[ends[-1]:], roles)


def _joins_adjectives(parsed: ParsedCaption, index: int) -> bool:
    """An "and" or comma between two adjectives ("a black and white cat")."""
    roles = parsed.roles
    return (parsed.tokens[index].lower() in ("and", ",") and 0 < index < len(roles) - 1
            and roles[index - 1] == "adjective" and roles[index + 1] == "adjective")


def noun_phrases(parsed: ParsedCaption) -> list[tuple[int, int]]:
    """[start, end) of each head noun's phrase, in order: back to a determiner, or over lexicon words."""
    roles, spans = parsed.roles, []
    for head in (i for i, role in enumerate(roles) if role in ("noun", "fixed_noun")):
        start, all_known, index = head, True, head - 1  # start: the phrase if no determiner turns up
        while index >= 0 and roles[index] != "determiner":
            if roles[index] in ("adjective", "modifier", "locked") or _joins_adjectives(parsed, index):
                start = index if all_known else start
            elif roles[index] is None:  # an unknown word: part of the phrase only if a determiner leads it
                all_known = False
            else:  # a verb, relation, punctuation or another noun ends the phrase
                break
            index -= 1
        spans.append((index if index >= 0 and roles[index] == "determiner" else start, head + 1))
    return spans


def _phrase_key(tokens: Sequence[str]) -> str:  # "an apple" and "a apple" are one phrase
    return " ".join("a" if t.lower() == "an" else t.lower() for t in tokens)


def _is_symmetric_swap(parsed: ParsedCaption, edited: ParsedCaption, first: tuple[int, int] | None,
                       second: tuple[int, int] | None) -> bool:
    """True when two phrases joined only by and/or/commas come out as the same pair, reordered
    (`edited` has the tokens of `parsed` exchanged in place, so the phrases keep their positions)."""
    if first is None or second is None or first == second:
        return False
    if any(word not in SYMMETRIC_CONNECTORS for word in parsed.lowers[first[1]:second[0]]):
        return False
    before = sorted(_phrase_key(parsed.tokens[a:b]) for a, b in (first, second))
    return before == sorted(_phrase_key(edited.tokens[a:b]) for a, b in (first, second))


# -- editing helpers ---------------------------------------------------------------------------

def match_case(word: str, like: str) -> str:
    """`word` cased like `like`: UPPER, Capitalised or as is."""
    upper = len(like) > 1 and like.isupper()
    return word.upper() if upper else word[:1].upper() + word[1:] if like[:1].isupper() else word


def _fix_articles(parsed: ParsedCaption, edited_positions: Sequence[int]) -> None:
    """Set the article before each edited word to "a" or "an", as that word needs."""
    for position in (p for p in edited_positions if p > 0 and parsed.lowers[p - 1] in ("a", "an")):
        word = parsed.lowers[position]
        vowel = (word[:1] in "aeiou" and not word.startswith(AN_EXCEPTIONS["a"])
                 or word.startswith(AN_EXCEPTIONS["an"]))
        parsed.tokens[position - 1] = match_case("an" if vowel else "a", parsed.tokens[position - 1])


def noun_form(parsed: ParsedCaption, position: int) -> tuple[str, bool]:
    """(lemma, is plural) of a noun token; "sheep" is plural after "two", "several", ..."""
    lemma, is_plural = NOUN_FORMS[parsed.lowers[position]]
    if plural(lemma) == lemma and position > 0:
        is_plural = parsed.lowers[position - 1] in PLURAL_DETERMINERS
    return lemma, is_plural


def _phrase_of(spans: Sequence[tuple[int, int]], position: int) -> tuple[int, int] | None:
    return next((span for span in spans if span[0] <= position < span[1]), None)  # None: in no phrase


# -- the five edits ----------------------------------------------------------------------------

def reshuffle(caption: str, rng: random.Random) -> str | None:
    """Swap two noun phrases with everything they carry: "a dog chasing a small cat" -> "a small cat
    chasing a dog". Same words, new order, new meaning. None with fewer than two distinct phrases."""
    parsed = parse(caption)
    first_upper = bool(parsed.tokens) and parsed.tokens[0][:1].isupper()
    if first_upper and parsed.roles[0] not in (None, "punct") and not parsed.tokens[0][1:].isupper():
        parsed.tokens[0] = parsed.tokens[0].lower()  # sentence case, not a name: lower it wherever it lands
    spans = noun_phrases(parsed)
    options = [(a, b) for a, b in combinations(spans, 2)  # not two equal phrases, nor "A and B" -> "B and A"
               if _phrase_key(parsed.tokens[a[0]:a[1]]) != _phrase_key(parsed.tokens[b[0]:b[1]])
               and any(word not in SYMMETRIC_CONNECTORS for word in parsed.lowers[a[1]:b[0]])]
    if not options:
        return None
    (a0, a1), (b0, b1) = rng.choice(options)
    tokens, spaces = parsed.tokens, parsed.spaces
    parsed.tokens = tokens[:a0] + tokens[b0:b1] + tokens[a1:b0] + tokens[a0:a1] + tokens[b1:]
    parsed.spaces = (spaces[:a0] + [spaces[a0]] + spaces[b0 + 1:b1] + spaces[a1:b0] + [spaces[b0]]
                     + spaces[a0 + 1:a1] + spaces[b1:])
    if first_upper:
        parsed.tokens[0] = parsed.tokens[0][:1].upper() + parsed.tokens[0][1:]
    return parsed.text()


def _swap(caption: str, rng: random.Random, pick: Callable[[ParsedCaption, list[tuple[int, int]]], list],
          exchange: Callable[[ParsedCaption, int, int], None]) -> str | None:
    parsed = parse(caption)
    spans = noun_phrases(parsed)
    options = []
    for i, j in pick(parsed, spans):
        edited = dataclasses.replace(parsed, tokens=list(parsed.tokens))
        exchange(edited, i, j)
        _fix_articles(edited, (i, j))
        if not _is_symmetric_swap(parsed, edited, _phrase_of(spans, i), _phrase_of(spans, j)):
            options.append(edited.text())
    return rng.choice(options) if options else None


def _noun_pairs(parsed: ParsedCaption, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    lemmas = {i: NOUN_FORMS[parsed.lowers[i]][0] for i, role in enumerate(parsed.roles) if role == "noun"}
    return [(i, j) for i, j in combinations(lemmas, 2) if lemmas[i] != lemmas[j]]


def _exchange_nouns(parsed: ParsedCaption, i: int, j: int) -> None:
    (lemma_i, plural_i), (lemma_j, plural_j) = noun_form(parsed, i), noun_form(parsed, j)
    parsed.tokens[i], parsed.tokens[j] = (match_case(plural(lemma_j) if plural_i else lemma_j, parsed.tokens[i]),
                                          match_case(plural(lemma_i) if plural_j else lemma_i, parsed.tokens[j]))


def swap_nouns(caption: str, rng: random.Random) -> str | None:
    """Exchange two different head nouns, each inflected like its new slot: "a man on a horse" ->
    "a horse on a man". None without two different lexicon nouns."""
    return _swap(caption, rng, _noun_pairs, _exchange_nouns)


def _adjective_pairs(parsed: ParsedCaption, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    inside = [(i, _phrase_of(spans, i)) for i, role in enumerate(parsed.roles) if role == "adjective"]
    return [(i, j) for (i, a), (j, b) in combinations(inside, 2)
            if a is not None and b is not None and a != b and parsed.lowers[i] != parsed.lowers[j]]


def _exchange_words(parsed: ParsedCaption, i: int, j: int) -> None:
    parsed.tokens[i], parsed.tokens[j] = (match_case(parsed.tokens[j].lower(), parsed.tokens[i]),
                                          match_case(parsed.tokens[i].lower(), parsed.tokens[j]))


def swap_adjectives(caption: str, rng: random.Random) -> str | None:
    """Exchange two different adjectives that describe different nouns: "a red car next to a blue
    truck" -> "a blue car next to a red truck". None without two such adjectives."""
    return _swap(caption, rng, _adjective_pairs, _exchange_words)


def adjective_replacements(word: str, caption_words: set[str]) -> list[str]:
    """Words of the adjective's class that say something else: an opposite size or state, another
    colour or material; never a synonym or a word the caption already has."""
    name = ADJECTIVE_CLASS_OF[word]
    if name == "size":
        choices = SIZE_OPPOSITES[word]
    elif name == "state":
        choices = STATE_OPPOSITES[word]
    else:
        synonyms = set().union(*(group for group in COLOR_SYNONYMS if word in group))
        choices = tuple(w for w in ADJECTIVE_CLASSES[name] if w != word and w not in synonyms)
    return [w for w in choices if w not in caption_words]


def replace_adjectives(caption: str, rng: random.Random) -> str | None:
    """Replace one adjective by another of its class ("a red bus" -> "a green bus"). None without one."""
    parsed = parse(caption)
    choices_at = {i: adjective_replacements(parsed.lowers[i], set(parsed.lowers))
                  for i, role in enumerate(parsed.roles) if role == "adjective"}
    options = [(i, choices) for i, choices in choices_at.items() if choices]
    if not options:
        return None
    position, choices = rng.choice(options)
    parsed.tokens[position] = match_case(rng.choice(choices), parsed.tokens[position])
    _fix_articles(parsed, (position,))
    return parsed.text()


def replace_nouns(caption: str, rng: random.Random) -> str | None:
    """Replace one head noun by another of its group, in the same number ("two dogs" -> "two cats"),
    never by a synonym ("bike" -> "bicycle") and never to or from a generic noun ("person"). None
    without such a noun."""
    parsed = parse(caption)
    present = {NOUN_FORMS[w][0] for w in parsed.lowers if w in NOUN_FORMS}
    options = []
    for i, role in enumerate(parsed.roles):
        if role == "noun":
            lemma, is_plural = noun_form(parsed, i)
            if lemma in GENERIC_NOUNS:
                continue
            excluded = present | GENERIC_NOUNS | set().union(*(group for group in NOUN_SYNONYMS if lemma in group))
            choices = [n for n in NOUN_GROUPS[NOUN_GROUP_OF[lemma]] if n not in excluded]
            if choices:
                options.append((i, is_plural, choices))
    if not options:
        return None
    position, is_plural, choices = rng.choice(options)
    noun = rng.choice(choices)
    parsed.tokens[position] = match_case(plural(noun) if is_plural else noun, parsed.tokens[position])
    _fix_articles(parsed, (position,))
    return parsed.text()


RULE_EDITS: dict[str, Callable[[str, random.Random], str | None]] = dict(zip(
    KINDS, (reshuffle, swap_nouns, swap_adjectives, replace_adjectives, replace_nouns)))

# -- validation, shared with the LLM mode ------------------------------------------------------
PROMPT_MARKERS = re.compile(r"\b(?:input|output|rewrite|rewritten|rules?|examples?)\b|\b(?:caption|sentence)\s*:"
                            r"|###|<\||\n", re.IGNORECASE)


def caption_words(text: str) -> list[str]:
    """Lower-cased words, punctuation dropped: what "the same caption" compares."""
    return [w.lower() for w in WORD.findall(text)]


def validate_negative(original: str, negative: str, kind: str, avoid: Sequence[str] = ()) -> str | None:
    """Why `negative` is not a usable negative of `original` of this kind, or None when it is.

    Reasons, checked in this order: empty; prompt_leftover (a newline or prompt words: input, output,
    rewrite, rule, example); identical (same words, case and punctuation aside); reshuffle_changed_words
    (not the same multiset of words); bad_start (not a letter or digit); bad_end (not a word or .!?"');
    length (under half or over twice the words, plus 4); unrelated (shares under half the original's
    words); duplicate (same words as one of `avoid`, those kept so far)."""
    text = negative.strip()
    if not text:
        return "empty"
    if PROMPT_MARKERS.search(negative.strip(" ")):
        return "prompt_leftover"
    words, original_words = caption_words(text), caption_words(original)
    if words == original_words:
        return "identical"
    if kind == "reshuffle" and Counter(words) != Counter(original_words):
        return "reshuffle_changed_words"
    if not text[0].isalnum():
        return "bad_start"
    if not (text[-1].isalnum() or text[-1] in ".!?\"'"):
        return "bad_end"
    if not max(2, (len(original_words) + 1) // 2) <= len(words) <= 2 * len(original_words) + 4:
        return "length"
    kept = Counter(_phrase_key(words).split()) & Counter(_phrase_key(original_words).split())  # "an" is "a"
    if 2 * sum(kept.values()) < len(original_words):
        return "unrelated"  # an edit of these kinds keeps most words; word salad and new captions do not
    if any(words == caption_words(other) for other in avoid):
        return "duplicate"
    return None
