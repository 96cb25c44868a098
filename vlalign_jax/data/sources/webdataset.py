"""webdataset tar shards: samples are the tar members that share a key, read as a stream.

A member `dir/000123.jpg` belongs to sample `dir/000123` with field `jpg`; the key is the member path
up to the first dot of its file name, so `a.seg.png` is field `seg.png` of sample `a`. Members of one
sample are consecutive in a well-formed shard. Shard lists take brace expansion:
`shards/{000..099}.tar` (zero padding kept) and `{train,extra}-0.tar`.

`iterate_samples` streams shards front to back (any tar, compressed or not). For training,
`WebDatasetImageText` indexes local uncompressed shards once (member headers only, data is skipped by
seeking) and then reads any sample by offset, so the grain pipeline can shuffle globally, split
samples over hosts and resume at exactly the next example.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

from PIL import Image

from vlalign_jax.data.records import RecordError

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_shards(pattern: str) -> list[str]:
    """Expand the first `{a..b}` range or `{x,y}` list in `pattern`, recursively."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end():]
    if ".." in body:
        lo, hi = body.split("..", 1)
        if not (lo.isdigit() and hi.isdigit()):
            raise ValueError(f"bad range {{{body}}} in shard pattern {pattern!r}")
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [shard for option in options for shard in expand_shards(head + option + tail)]


def _split_key(member: str) -> tuple[str, str]:
    directory, _, name = member.rpartition("/")
    stem, dot, field = name.partition(".")
    if not dot:
        return "", ""
    return (f"{directory}/{stem}" if directory else stem), field.lower()


def iterate_samples(shards: str | Sequence[str]) -> Iterator[dict[str, Any]]:
    """Yield `{"__key__", "__url__", <field>: bytes}` for every sample of every shard, in order."""
    urls = expand_shards(shards) if isinstance(shards, str) else [u for s in shards for u in expand_shards(s)]
    for url in urls:
        try:
            with tarfile.open(url, "r|*") as tar:
                sample: dict[str, Any] | None = None
                for member in tar:
                    if not member.isfile():
                        continue
                    key, field = _split_key(member.name)
                    if not key:
                        continue
                    if sample is not None and sample["__key__"] != key:
                        yield sample
                        sample = None
                    if sample is None:
                        sample = {"__key__": key, "__url__": url}
                    sample[field] = tar.extractfile(member).read()
                if sample is not None:
                    yield sample
        except (tarfile.TarError, OSError) as e:
            raise RecordError(f"{url}: cannot read tar shard: {type(e).__name__}: {e}") from e


def decode_image_text(sample: dict[str, Any], caption_field: str = "txt",
                      json_caption_key: str = "caption") -> dict[str, Any]:
    """A sample's image (PIL RGB) and caption, from `txt` or a `json` field's `caption` entry."""
    where = f"{sample['__url__']} sample {sample['__key__']}"
    image_field = next((f for f in IMAGE_FIELDS if f in sample), None)
    if image_field is None:
        raise RecordError(f"{where}: no image field (has {sorted(k for k in sample if not k.startswith('__'))})")
    try:
        with Image.open(io.BytesIO(sample[image_field])) as image:
            image.load()
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RecordError(f"{where}: cannot decode {image_field}: {type(e).__name__}: {e}") from e
    if caption_field in sample:
        try:
            caption = sample[caption_field].decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(f"{where}: {caption_field} field is not UTF-8 text: {e}") from e
    elif "json" in sample:
        try:
            caption = json.loads(sample["json"]).get(json_caption_key)
        except (ValueError, AttributeError) as e:  # ValueError: bad JSON or bad UTF-8
            raise RecordError(f"{where}: malformed json field: {type(e).__name__}: {e}") from e
    else:
        caption = None
    if caption is not None and not isinstance(caption, str):
        raise RecordError(f"{where}: json {json_caption_key!r} is {type(caption).__name__}, not a string")
    if not caption or not caption.strip():
        raise RecordError(f"{where}: no caption ({caption_field!r} or json {json_caption_key!r})")
    return {"image": rgb, "caption": caption, "key": sample["__key__"]}


def shard_paths(pattern: str) -> list[Path]:
    """The expanded shard list as paths, checking that each exists (a typo fails before training)."""
    paths = [Path(p) for p in expand_shards(pattern)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} shards of {pattern!r} do not exist, "
                                f"e.g. {missing[:3]}")
    return paths


class _Member(NamedTuple):
    field: str
    offset: int  # of the member's data in the shard file
    size: int


def index_shard(path: str | Path) -> list[tuple[str, list[_Member]]]:
    """`(key, members)` for every sample of one uncompressed tar shard, in file order."""
    samples: list[tuple[str, list[_Member]]] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                key, field = _split_key(member.name) if member.isfile() else ("", "")
                if not key:
                    continue
                if not samples or samples[-1][0] != key:
                    samples.append((key, []))
                samples[-1][1].append(_Member(field, member.offset_data, member.size))
    except (tarfile.TarError, OSError) as e:
        raise RecordError(f"{path}: cannot index tar shard (random access needs an uncompressed .tar): "
                          f"{type(e).__name__}: {e}") from e
    return samples


class WebDatasetImageText:
    """Random-access `{"image", "caption", "key", "index"}` over local webdataset shards."""

    def __init__(self, shards: str | Sequence[str], caption_field: str = "txt", json_caption_key: str = "caption"):
        patterns = [shards] if isinstance(shards, str) else list(shards)
        self.urls = [str(p) for pattern in patterns for p in shard_paths(pattern)]
        self.caption_field, self.json_caption_key = caption_field, json_caption_key
        self.samples = [(shard, key, members) for shard, url in enumerate(self.urls)
                        for key, members in index_shard(url)]
        if not self.samples:
            raise ValueError(f"no samples in shards {patterns}")

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self, index: int) -> str:
        shard, key, _ = self.samples[index]
        return f"{self.urls[shard]} sample {key}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        shard, key, members = self.samples[index]
        sample: dict[str, Any] = {"__key__": key, "__url__": self.urls[shard]}
        with open(self.urls[shard], "rb") as f:
            for member in members:
                f.seek(member.offset)
                sample[member.field] = f.read(member.size)
        return {**decode_image_text(sample, self.caption_field, self.json_caption_key), "index": index}
