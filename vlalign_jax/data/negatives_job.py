"""`vlalign negatives`: four DeGLA hard-negative captions per caption, written as DeGLA JSON lines.

DeGLA (research/degla.md sections 2.1-2.2) trains on `{"image_id", "original", "enhanced"}` records
whose `enhanced[0..3]` are LLM-written negatives of five types. This job makes them, with a local
causal LM (`--mode llm`, `negatives_llm.py`) or with the built-in rules (`--mode rules`,
`negatives_rules.py`), from a COCO captions file (`annotations/captions_train2014.json`: one record
per caption, keyed by the annotation id) or from JSON / JSON lines records of `{image_id, original}`
(or `caption`), keyed by their `id` field or else by their position in the file.

How types are assigned: caption number n of the input takes the five types in turn starting at type
n mod 5 (reshuffle, swap_nouns, swap_adjectives, replace_adjectives, replace_nouns), so over a file
each type leads equally often and a caption's four negatives are four different types. A type that
cannot give a negative (a rule that does not apply, an LLM answer still invalid after its retries) is
dropped for that caption and the next type fills the slot. When fewer than four types give one, the
types that did are asked again for different negatives, up to four times each. A caption still short
of four is skipped: counted and listed in `<out>.skipped` (no record, since DeGLA needs four).

Output: one JSON line per caption, `{"id", "image_id", "original", "enhanced": [4], "types": [4]}`,
appended and flushed as each batch finishes, so a crash loses at most the batch in flight (a torn last
line is cut off on the next run). Re-running skips every id already in the output or in `<out>.skipped`.
The run's summary (counts per type, rejected outputs per reason, skipped captions) is printed as JSON
and written to `<out>.summary`. The two side files do not end in .json or .jsonl, so a folder of
outputs can be handed to `DeglaJson`, which reads the records back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Protocol, Sequence

from tqdm import tqdm

from vlalign_jax.data.negatives_rules import KINDS, RULE_EDITS, caption_words, validate_negative
from vlalign_jax.data.sources.degla_json import DEGLA_NUM_NEGATIVES, coco_image_id
from vlalign_jax.data.sources.json_records import JsonRecordFiles, required_text

log = logging.getLogger(__name__)
NUM_NEGATIVES = DEGLA_NUM_NEGATIVES


@dataclasses.dataclass(frozen=True)
class CaptionRecord:
    id: int | str  # the COCO annotation id, a record's own "id", or its position in the file
    image_id: int
    caption: str  # whitespace collapsed


def read_captions(path: str | os.PathLike) -> list[CaptionRecord]:
    """Captions in file order, from a COCO captions JSON or JSON / JSON lines records."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None  # JSON lines
    if isinstance(whole, dict) and "annotations" in whole:
        items = [(f"{path} annotation {n}", a) for n, a in enumerate(whole["annotations"])]
        caption_key = "caption"
    else:
        files = JsonRecordFiles(path)
        items = [(files.describe(n), files.record(n)) for n in range(len(files))]
        caption_key = "original" if items and "original" in items[0][1] else "caption"
    captions, seen = [], {}
    for n, (where, item) in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(item).__name__}")
        caption_id = item.get("id", n)
        if caption_id in seen:
            raise ValueError(f"{where}: id {caption_id!r} already used by {seen[caption_id]}")
        seen[caption_id] = where
        caption = " ".join(required_text(item, caption_key, where).split())
        captions.append(CaptionRecord(caption_id, coco_image_id(item, where), caption))
    return captions


@dataclasses.dataclass(frozen=True)
class NegativeRequest:
    """One negative asked of a writer: `kind` of `caption` (id `key`, which seeds the rule mode's draws).
    `draw` > 0 asks the same kind again for another answer; `avoid` holds the negatives kept so far."""
    caption: str
    kind: str
    key: str
    draw: int = 0
    avoid: tuple[str, ...] = ()


def kind_order(ordinal: int) -> list[str]:
    """The types caption number `ordinal` asks for, in order: a rotation of the five, then again."""
    start = ordinal % len(KINDS)
    return list(KINDS[start:] + KINDS[:start]) * NUM_NEGATIVES


class NegativeWriter(Protocol):
    rejected: Counter[str]

    def write(self, requests: Sequence[NegativeRequest]) -> list[str | None]: ...


class RuleNegatives:
    """The rule mode's writer. Each attempt draws from its own `random.Random` seeded by (seed, caption
    id, type, draw, attempt), so a caption's negatives do not depend on the batch or on a resume."""

    def __init__(self, seed: int = 0, retries: int = 2):
        self.seed, self.retries = seed, retries
        self.rejected: Counter[str] = Counter()
        self.not_applicable: Counter[str] = Counter()

    def write(self, requests: Sequence[NegativeRequest]) -> list[str | None]:
        return [self._write_one(request) for request in requests]

    def _write_one(self, request: NegativeRequest) -> str | None:
        for attempt in range(1 + self.retries):
            rng = random.Random(f"{self.seed}:{request.key}:{request.kind}:{request.draw}:{attempt}")
            text = RULE_EDITS[request.kind](request.caption, rng)
            if text is None:  # the caption has nothing this rule can edit; another draw would not help
                self.not_applicable[request.kind] += 1
                return None
            reason = validate_negative(request.caption, text, request.kind, request.avoid)
            if reason is None:
                return text
            self.rejected[reason] += 1
        return None


def pick_negatives(captions: Sequence[CaptionRecord], ordinals: Sequence[int],
                   writer: NegativeWriter) -> list[list[tuple[str, str]]]:
    """Up to four (type, negative) per caption, asked of `writer` in rounds (one batch per round):
    each round asks every caption still short for its next types in `kind_order`."""
    chosen: list[list[tuple[str, str]]] = [[] for _ in captions]
    pending = [kind_order(ordinal) for ordinal in ordinals]
    draws = [Counter() for _ in captions]
    while True:
        requests, owners = [], []
        for i, caption in enumerate(captions):
            this_round: list[str] = []  # each type at most once a round: a second draw waits for the first
            later: list[str] = []
            for kind in pending[i]:
                fits = len(this_round) < NUM_NEGATIVES - len(chosen[i]) and kind not in this_round
                (this_round if fits else later).append(kind)
            pending[i] = later
            avoid = tuple(text for _, text in chosen[i])
            for kind in this_round:
                requests.append(NegativeRequest(caption.caption, kind, str(caption.id), draws[i][kind], avoid))
                draws[i][kind] += 1
                owners.append(i)
        if not requests:
            return chosen
        for i, request, text in zip(owners, requests, writer.write(requests)):
            if text is None:  # this type has nothing (more) to give this caption
                pending[i] = [kind for kind in pending[i] if kind != request.kind]
            elif any(caption_words(text) == caption_words(kept) for _, kept in chosen[i]):
                writer.rejected["duplicate"] += 1  # two answers of one round agree
            else:
                chosen[i].append((request.kind, text))


def side_path(out: Path, what: str) -> Path:
    """`<out>.summary` or `<out>.skipped`, beside the output."""
    return out.with_name(f"{out.name}.{what}")


def finished_ids(path: Path) -> set[Any]:
    """Ids already in a JSON lines file (none if it does not exist). A torn last line, the trace of a
    crash mid-write, is cut off (or, if whole but for its newline, ended); a bad line elsewhere is an error."""
    if not path.exists():
        return set()
    lines = path.read_bytes().split(b"\n")  # the last piece is b"" unless the last write was torn
    ids = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ids.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            if number != len(lines):
                raise ValueError(f"{path} line {number}: not a record with an 'id' ({e}); "
                                 f"fix or remove the line to resume") from e
            log.warning("%s: cutting off a torn last line (%d bytes) left by an interrupted run", path, len(line))
            with path.open("r+b") as f:
                f.truncate(sum(len(previous) + 1 for previous in lines[:-1]))
            return ids
    if lines[-1].strip():
        with path.open("ab") as f:
            f.write(b"\n")
    return ids


def make_negatives(captions_path: str | os.PathLike, out_path: str | os.PathLike, writer: NegativeWriter,
                   batch_size: int = 16, limit: int | None = None, progress: bool = True,
                   mode: str = "") -> dict[str, Any]:
    """Write negatives for the first `limit` captions (all if None) not yet done; the run's summary."""
    started = time.perf_counter()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    captions = read_captions(captions_path)[:limit]
    done = finished_ids(out) | finished_ids(side_path(out, "skipped"))
    todo = [(ordinal, caption) for ordinal, caption in enumerate(captions) if caption.id not in done]
    per_type: Counter[str] = Counter()
    written = skipped = 0
    with out.open("a", encoding="utf-8") as records, side_path(out, "skipped").open("a", encoding="utf-8") as \
            skips, tqdm(total=len(todo), unit="caption", disable=not progress, desc="negatives") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            picked = pick_negatives([c for _, c in batch], [o for o, _ in batch], writer)
            for (_, caption), negatives in zip(batch, picked):
                record = {"id": caption.id, "image_id": caption.image_id, "original": caption.caption,
                          "enhanced": [text for _, text in negatives], "types": [kind for kind, _ in negatives]}
                if len(negatives) == NUM_NEGATIVES:
                    records.write(json.dumps(record, ensure_ascii=False) + "\n")
                    per_type.update(record["types"])
                    written += 1
                else:
                    skips.write(json.dumps(record, ensure_ascii=False) + "\n")
                    skipped += 1
            records.flush()
            skips.flush()
            bar.update(len(batch))
    summary = {"mode": mode, "captions": len(captions), "already_done": len(captions) - len(todo),
               "written": written, "skipped_too_few_negatives": skipped,
               "negatives_per_type": {kind: per_type[kind] for kind in KINDS},
               "rejected": dict(sorted(writer.rejected.items())),
               "seconds": round(time.perf_counter() - started, 3)}
    if hasattr(writer, "not_applicable"):
        summary["not_applicable"] = {kind: writer.not_applicable[kind] for kind in KINDS}
    side_path(out, "summary").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


# -- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `vlalign negatives`."""
    parser.add_argument("--captions", required=True,
                        help="COCO captions JSON (annotations/captions_train2014.json) or JSON / JSON lines "
                             "records with image_id and original (or caption)")
    parser.add_argument("--out", required=True, help="output DeGLA JSON lines file; re-running resumes it")
    parser.add_argument("--mode", choices=("rules", "llm"), default="rules",
                        help="built-in lexicon rules (default) or a local causal language model")
    parser.add_argument("--model", default=None, help="local model folder for --mode llm (transformers format)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="captions per batch, and prompts per generate call in --mode llm (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rule draws and of LLM sampling")
    parser.add_argument("--limit", type=int, default=None, help="only the first N captions of the input")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--retries", type=int, default=2,
                        help="further (sampled) attempts after an invalid output (default 2)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="--mode llm: tokens per answer (default 48)")
    parser.add_argument("--temperature", type=float, default=0.8, help="--mode llm: sampling temperature")
    parser.add_argument("--top-p", type=float, default=0.95, help="--mode llm: nucleus sampling mass")
    parser.add_argument("--sample", action="store_true", help="--mode llm: sample the first attempt too "
                                                              "(default greedy)")
    parser.add_argument("--chat-template", action="store_true",
                        help="--mode llm: wrap prompts in the tokenizer's chat template (instruct models)")
    parser.add_argument("--device", default=None, help="--mode llm: torch device (default cuda if available)")


def run(args: argparse.Namespace) -> int:
    """Run `vlalign negatives` and print its summary as JSON."""
    if args.batch_size < 1 or args.retries < 0 or (args.limit is not None and args.limit < 0):
        raise ValueError("--batch-size must be at least 1, --retries and --limit at least 0")
    if args.mode == "llm":
        if not args.model:
            raise ValueError("--mode llm needs --model PATH, a local causal language model folder")
        from vlalign_jax.data.negatives_llm import CausalLmNegatives, GenerationSettings

        settings = GenerationSettings(max_new_tokens=args.max_new_tokens, retries=args.retries,
                                      temperature=args.temperature, top_p=args.top_p, sample_first=args.sample,
                                      chat_template=args.chat_template)
        writer: NegativeWriter = CausalLmNegatives(args.model, settings, args.batch_size, args.seed, args.device)
    else:
        writer = RuleNegatives(args.seed, args.retries)
    summary = make_negatives(args.captions, args.out, writer, args.batch_size, args.limit,
                             progress=not args.no_progress, mode=args.mode)
    print(json.dumps(summary, indent=2))
    return 0
