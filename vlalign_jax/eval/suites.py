"""The suites of `vlalign eval`, by name: how a suite's data is read and checked (once, before any
model loads), how one checkpoint is scored on it, its markdown table and its headline metrics (the
summary table and the `--plot` bar chart).

A suite is asked for as `NAME[:DATASET]`:
- `zeroshot[:NAME]`: zero-shot classification (`zeroshot.evaluate_zeroshot`); data: a folder of class
  folders, a .csv/.tsv table of image paths and labels, or `tfds:NAME[:SPLIT]` (`zeroshot_data`);
  DATASET names the set in the results (default: the data's own name).
- `retrieval:DATASET`: image-text retrieval R@1/5/10 (`retrieval.evaluate_retrieval`) on a set of
  `retrieval_data.DATASETS`, short captions; `long-retrieval:DATASET` the same on a long-caption set
  (sharegpt4v, dci, urban1k) with the model's long text walk (FG-CLIP), or its only walk (CLIP,
  SigLIP: captions truncated to its context, as FG-CLIP's baselines).
- `sugarcrepe`, `aro`, `valse`: compositional accuracy (`compositional`); data: the benchmark root.
- `fg-ovd`: FG-OVD top-1 per subset (`fine_grained.fgovd_accuracy`; FG-CLIP 1 and 2 only); data: the
  folder of `*_llava.jsonl` files, images: the COCO root.
- `grounding:DATASET`: CLIP-VG Acc@0.5 / mIoU per split (`grounding_suite.evaluate`).

A checkpoint (`LoadedCheckpoint`) is loaded on first use and its encoders are built once, then shared
by every suite. Evaluation modules are imported when used, so building the command line stays light.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlalign_jax.data.sources.grounding_splits import ALIASES, LAYOUTS
from vlalign_jax.eval.retrieval_data import DATASETS as RETRIEVAL_DATASETS

logger = logging.getLogger(__name__)
LONG_DATASETS = ("sharegpt4v", "dci", "urban1k")
COMPOSITIONAL = ("sugarcrepe", "aro", "valse")
GROUNDING_DATASETS = (*LAYOUTS, *ALIASES, "synthetic_shapes")
ZEROSHOT_FORMATS = ("folder", "csv", "tfds")
KARPATHY = ("coco", "flickr30k")
# Where each retrieval set lies under a data root: (annotations, images) relative paths, first found wins.
RETRIEVAL_LAYOUTS = {
    "coco": [("dataset_coco.json", "."), ("annotations/dataset_coco.json", ".")],
    "flickr30k": [("dataset_flickr30k.json", "flickr30k-images"), ("dataset_flickr30k.json", ".")],
    "coco_val2017": [("annotations/captions_val2017.json", "val2017"), ("captions_val2017.json", "val2017")],
    "sharegpt4v": [("share-captioner_coco_lcs_sam_1246k_1107.json", ".")],
    "dci": [("densely_captioned_images/annotations", "densely_captioned_images/photos"),
            ("annotations", "photos")],
    "urban1k": [("Urban1k/caption", "Urban1k/image"), ("caption", "image")],
}


@dataclasses.dataclass(frozen=True)
class SuiteOptions:
    """Settings shared by all suites of a run (the command's flags); each suite reads its own."""

    batch_size: int = 256
    subsets: tuple[str, ...] | None = None  # compositional, fg-ovd
    templates: str | None = None  # zeroshot: a built-in set or a file (None: OpenAI's 80)
    classnames: str | None = None  # zeroshot: a file or "imagenet"
    zeroshot_format: str | None = None  # folder | csv | tfds (None: detected)
    image_column: str = "filepath"
    label_column: str = "label"
    split: str | None = None  # retrieval: Karpathy split (default test); zeroshot: TFDS split
    data_root: str | None = None  # grounding
    splits: tuple[str, ...] | None = None  # grounding
    released_code: bool = False  # grounding
    grid: str | None = None  # grounding
    grid_samples: int = 16  # grounding


@dataclasses.dataclass(frozen=True)
class SuiteRequest:
    """One `--suite NAME[:DATASET]` with its `--data` and `--images`."""

    name: str
    dataset: str | None
    data: str | None
    images: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.dataset}" if self.dataset else self.name


class LoadedCheckpoint:
    """A checkpoint or workdir, loaded on first use; its encoders are built once for every suite."""

    def __init__(self, path: str, family: str | None = None, tokenizer: str = "auto",
                 max_num_patches: int | str | None = None, batch_size: int = 256):
        self.path, self.family, self.tokenizer = path, family, tokenizer
        self.max_num_patches, self.batch_size = max_num_patches, batch_size

    @functools.cached_property
    def model_and_params(self) -> tuple[Any, Any]:
        from vlalign_jax.eval.encoders import load_model

        return load_model(self.path, self.family)

    @functools.cached_property
    def patch_budget(self) -> int | str | None:
        """--max-num-patches where it applies (NaFlex models); square-input models are told and skip it,
        so one budget can be set for a run comparing SigLIP 2 with CLIP."""
        from vlalign_jax.eval.encoders import model_kind

        model = self.model_and_params[0]
        if self.max_num_patches is not None and model_kind(model) not in ("siglip", "fgclip2"):
            logger.warning("--max-num-patches does not apply to %s: a %s takes square images", self.path,
                           type(model).__name__)
            return None
        return self.max_num_patches

    @functools.cached_property
    def encoders(self) -> Any:
        """`encoders.DualEncoders`, sharded over all local devices."""
        from vlalign_jax.eval.encoders import dual_encoders

        model, params = self.model_and_params
        return dual_encoders(model, params, checkpoint=self.path, family=self.family, tokenizer=self.tokenizer,
                             max_num_patches=self.patch_budget, batch_size=self.batch_size)

    @functools.cached_property
    def region_encoders(self) -> Any:
        """`region_encoders.RegionEncoders` as `vlalign fine-grained` builds them (FG-CLIP 1 and 2)."""
        from vlalign_jax.eval.encoders import model_kind, naflex_budget, text_tokenizer
        from vlalign_jax.eval.region_encoders import region_encoders

        model, params = self.model_and_params
        if model_kind(model) not in ("fgclip", "fgclip2"):
            raise ValueError(f"{self.path} holds a {type(model).__name__}, which has no region features; fg-ovd "
                             "needs FG-CLIP 1 or 2")
        tokenizer = text_tokenizer(self.path, model, self.tokenizer, self.family)
        budget = naflex_budget(self.path, model, self.patch_budget, self.family)
        return region_encoders(model, params, batch_size=self.batch_size, tokenizer=tokenizer, max_num_patches=budget)


# ----------------------------------------------------------------------------- data of each suite

def _zeroshot_data(request: SuiteRequest, options: SuiteOptions) -> Any:
    from vlalign_jax.eval import zeroshot_data

    data = request.data
    fmt = options.zeroshot_format
    if fmt is None:
        if data.startswith("tfds:"):
            fmt = "tfds"
        elif os.path.isdir(data):
            fmt = "folder"
        elif data.lower().endswith((".csv", ".tsv")):
            fmt = "csv"
        elif not os.path.exists(data):
            raise FileNotFoundError(f"{request.label}: --data {data} does not exist")
        else:
            raise ValueError(f"{request.label}: cannot tell the format of {data} (not a folder of class folders, "
                             "a .csv/.tsv file or tfds:NAME[:SPLIT]); pass --zeroshot-format")
    if fmt == "folder":
        dataset = zeroshot_data.image_folder(data, options.classnames)
    elif fmt == "csv":
        dataset = zeroshot_data.csv_dataset(data, request.images, options.image_column, options.label_column,
                                            "\t" if data.lower().endswith(".tsv") else ",", options.classnames)
    else:  # tfds:NAME[:SPLIT], or a TFDS data dir with the DATASET part as the name
        name, _, split = data[len("tfds:"):].partition(":") if data.startswith("tfds:") else (request.dataset, "", "")
        data_dir = None if data.startswith("tfds:") else data
        split = split or options.split
        if not name or not split:
            raise ValueError(f"{request.label}: TFDS data needs a name and a split: --data tfds:NAME:SPLIT, or "
                             "--suite zeroshot:NAME --data TFDS_DIR --split SPLIT")
        dataset = zeroshot_data.tfds_dataset(name, split, data_dir, label_key=options.label_column,
                                             class_names=options.classnames)
    if request.dataset:
        dataset = dataclasses.replace(dataset, name=request.dataset)
    return dataset, zeroshot_data.load_templates(options.templates)


def retrieval_paths(name: str, data: str, images: str | None) -> tuple[str, str]:
    """(annotations, image root) of retrieval set `name` from `--data` (its annotation file or folder,
    or a root holding the set in its usual layout, `RETRIEVAL_LAYOUTS`) and `--images`."""
    if not os.path.exists(data):
        raise FileNotFoundError(f"retrieval:{name}: --data {data} does not exist")
    if os.path.isdir(data):
        for annotation_path, image_dir in RETRIEVAL_LAYOUTS[name]:
            if os.path.exists(os.path.join(data, annotation_path)):
                return (os.path.join(data, annotation_path),
                        images or os.path.normpath(os.path.join(data, image_dir)))
        if name not in ("dci", "urban1k"):  # their annotations are a folder: `data` may be it
            expected = " or ".join(os.path.join(data, a) for a, _ in RETRIEVAL_LAYOUTS[name])
            raise FileNotFoundError(f"retrieval:{name}: no {expected}; pass the annotation file as --data")
    if images is None:
        if os.path.isdir(data):
            raise ValueError(f"retrieval:{name}: --data {data} is the annotation folder; pass the images with --images")
        images = os.path.dirname(os.path.abspath(data))
        for annotation_path, image_dir in RETRIEVAL_LAYOUTS[name]:  # ROOT/annotations/x.json -> ROOT/images
            if Path(data).absolute().as_posix().endswith("/" + annotation_path):
                root = Path(data).absolute().parents[annotation_path.count("/")]
                return data, os.path.normpath(root / image_dir)
    return data, images


def _retrieval_data(request: SuiteRequest, options: SuiteOptions) -> Any:
    from vlalign_jax.eval.retrieval_data import load_dataset

    annotations, images = retrieval_paths(request.dataset, request.data, request.images)
    extra = {"split": options.split or "test"} if request.dataset in KARPATHY else {}
    return load_dataset(request.dataset, annotations, images, **extra)


def _compositional_data(request: SuiteRequest, options: SuiteOptions) -> Any:
    from vlalign_jax.data.records import RecordError
    from vlalign_jax.eval.compositional import load_suite

    items = load_suite(request.name, request.data, options.subsets)
    if not items:
        raise RecordError(f"no {request.name} items found under {request.data}")
    return items


def _fgovd_data(request: SuiteRequest, options: SuiteOptions) -> Any:
    from vlalign_jax.eval.fine_grained_formats import find_fgovd_files

    if request.images is None:
        raise ValueError("fg-ovd needs the COCO image root: --images")
    return find_fgovd_files(request.data, options.subsets)


def _grounding_data(request: SuiteRequest, options: SuiteOptions) -> Any:
    from vlalign_jax.eval.grounding_suite import SYNTHETIC, canonical_dataset, split_sources

    dataset = canonical_dataset(request.dataset)
    if dataset != SYNTHETIC:  # a missing split file fails before any model loads
        if request.data is None:
            raise ValueError(f"grounding:{dataset} needs the split root (--data)")
        split_sources(request.data, dataset, options.splits, image_root=request.images, data_root=options.data_root,
                      released_code=options.released_code)
    return dataset


# ----------------------------------------------------------------------------- scoring one checkpoint

def _zeroshot(checkpoint: LoadedCheckpoint, prepared: Any, request: SuiteRequest, options: SuiteOptions) -> dict:
    from vlalign_jax.eval.zeroshot import evaluate_zeroshot

    dataset, templates = prepared
    encoders = checkpoint.encoders
    return evaluate_zeroshot(dataset, encoders.encode_images, encoders.encode_texts, templates,
                             batch_size=options.batch_size, text_batch_size=options.batch_size)


def _retrieval(checkpoint: LoadedCheckpoint, prepared: Any, request: SuiteRequest, options: SuiteOptions) -> dict:
    from vlalign_jax.eval.retrieval import evaluate_retrieval

    encoders = checkpoint.encoders
    if request.name == "retrieval":
        return evaluate_retrieval(prepared, encoders.encode_images, encoders.encode_texts, options.batch_size)
    walk = "long" if "long" in encoders.walks else "short"
    results = evaluate_retrieval(prepared, encoders.encode_images, lambda texts: encoders.encode_texts(texts, walk),
                                 options.batch_size)
    return {**results, "walk": walk}


def _compositional(checkpoint: LoadedCheckpoint, prepared: Any, request: SuiteRequest, options: SuiteOptions) -> dict:
    from vlalign_jax.eval.compositional import score_items, summarize

    encoders = checkpoint.encoders
    return summarize(request.name, prepared,
                     score_items(prepared, encoders.encode_images, encoders.encode_texts, options.batch_size))


def _fgovd(checkpoint: LoadedCheckpoint, prepared: Any, request: SuiteRequest, options: SuiteOptions) -> dict:
    from vlalign_jax.eval.fine_grained import fgovd_accuracy

    encoders = checkpoint.region_encoders
    return fgovd_accuracy(list(prepared.values()), request.images, encoders.encode_regions, encoders.encode_texts,
                          batch_size=options.batch_size)


def _grounding(checkpoint: LoadedCheckpoint, prepared: Any, request: SuiteRequest, options: SuiteOptions) -> dict:
    from vlalign_jax.eval.grounding_suite import evaluate

    return evaluate(checkpoint.path, prepared, request.data, family=checkpoint.family, image_root=request.images,
                    data_root=options.data_root, splits=options.splits, batch_size=options.batch_size,
                    released_code=options.released_code, grid=options.grid, grid_samples=options.grid_samples)


# ----------------------------------------------------------------------------- tables and headline metrics

def _table(module: str) -> Callable[[dict], str]:
    def table(results: dict) -> str:
        import importlib

        return importlib.import_module(f"vlalign_jax.eval.{module}").markdown_table(results)
    return table


def _recall_headline(results: dict) -> dict[str, float | None]:
    return {"i2t R@1": results.get("i2t_R@1"), "t2i R@1": results.get("t2i_R@1")}


@dataclasses.dataclass(frozen=True)
class Suite:
    """How a suite reads its data, scores a checkpoint, tabulates and summarises its results.

    `datasets`: the DATASET parts it takes (None: any name; (): none); `needs_data`: --data is required."""

    prepare: Callable[[SuiteRequest, SuiteOptions], Any]
    run: Callable[[LoadedCheckpoint, Any, SuiteRequest, SuiteOptions], dict]
    table: Callable[[dict], str]
    headline: Callable[[dict], dict[str, float | None]]  # metric -> value in [0, 1]
    datasets: tuple[str, ...] | None
    needs_data: bool = True
    needs_dataset: bool = False


SUITES: dict[str, Suite] = {
    "zeroshot": Suite(_zeroshot_data, _zeroshot, _table("zeroshot"), lambda r: {"top-1": r["top1"]}, None),
    "retrieval": Suite(_retrieval_data, _retrieval, _table("retrieval"), _recall_headline,
                       tuple(RETRIEVAL_DATASETS), needs_dataset=True),
    "long-retrieval": Suite(_retrieval_data, _retrieval, _table("retrieval"), _recall_headline, LONG_DATASETS,
                            needs_dataset=True),
    **{name: Suite(_compositional_data, _compositional, _table("compositional"), lambda r: {"avg": r["average"]}, ())
       for name in COMPOSITIONAL},
    "fg-ovd": Suite(_fgovd_data, _fgovd, _table("fine_grained"), lambda r: {"avg": r["average"]}, ()),
    "grounding": Suite(_grounding_data, _grounding, _table("grounding_suite"),
                       lambda r: {f"{split} acc@0.5": m["acc@0.5"] for split, m in r["splits"].items()},
                       GROUNDING_DATASETS, needs_data=False, needs_dataset=True),
}


def parse_requests(suites: Sequence[str], data: Sequence[str] | None, images: Sequence[str] | None,
                   grounding_dataset: str | None = None) -> list[SuiteRequest]:
    """`--suite NAME[:DATASET]` values with their `--data` / `--images`: one value serves every suite,
    or one per suite in order. `grounding_dataset` (the legacy `--dataset`) fills `grounding`'s DATASET."""
    def paired(values: Sequence[str] | None, flag: str) -> list[str | None]:
        values = list(values or ())
        if len(values) in (0, 1):
            return (values or [None]) * len(suites)
        if len(values) != len(suites):
            raise ValueError(f"{len(suites)} --suite but {len(values)} {flag}: give one {flag} for every suite, or "
                             "one per suite in the order of the --suite flags")
        return values

    requests = []
    for text, data_path, image_root in zip(suites, paired(data, "--data"), paired(images, "--images")):
        name, _, dataset = text.partition(":")
        if name not in SUITES:
            raise ValueError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
        suite = SUITES[name]
        if name == "grounding" and grounding_dataset:
            if dataset and dataset != grounding_dataset:
                raise ValueError(f"--suite {text} and --dataset {grounding_dataset} name different datasets")
            dataset = grounding_dataset
        if dataset and suite.datasets == ():
            raise ValueError(f"--suite {text}: {name} takes no dataset part")
        if suite.needs_dataset and not dataset:
            raise ValueError(f"--suite {name} needs a dataset: --suite {name}:DATASET"
                             + (" (or --dataset)" if name == "grounding" else "") +
                             f", DATASET one of {', '.join(suite.datasets)}")
        if dataset and suite.datasets and dataset not in suite.datasets:
            raise ValueError(f"--suite {text}: unknown {name} dataset {dataset!r}; known: {', '.join(suite.datasets)}")
        if suite.needs_data and data_path is None:
            raise ValueError(f"--suite {text} needs --data (its data root or file)")
        requests.append(SuiteRequest(name, dataset or None, data_path, image_root))
    labels = [r.label for r in requests]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"--suite {', '.join(repeated)} given more than once")
    if grounding_dataset and "grounding" not in (r.name for r in requests):
        raise ValueError("--dataset is for --suite grounding")
    return requests


def headline_metrics(results: dict[str, dict[str, dict]]) -> dict[str, dict[tuple[str, str], float | None]]:
    """{checkpoint: {(suite label, metric): value}} from {checkpoint: {suite label: results}}."""
    return {checkpoint: {(label, metric): value for label, suite_results in by_suite.items()
                         for metric, value in SUITES[label.partition(":")[0]].headline(suite_results).items()}
            for checkpoint, by_suite in results.items()}


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def summary_table(headlines: dict[str, dict[tuple[str, str], float | None]], names: dict[str, str]) -> str:
    """One row per checkpoint (by its short name), one column per headline metric, in %."""
    metrics = list(dict.fromkeys(m for by_metric in headlines.values() for m in by_metric))
    lines = ["| checkpoint | " + " | ".join(f"{label} {metric} (%)" for label, metric in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    lines += [f"| {names[c]} | " + " | ".join(_percent(h.get(m)) for m in metrics) + " |" for c, h in headlines.items()]
    return "\n".join(lines)


def short_names(checkpoints: Sequence[str]) -> dict[str, str]:
    """Each checkpoint's last path component, or the path as given where those would repeat."""
    names = {c: Path(c).name or c for c in checkpoints}
    counts = list(names.values())
    return {c: name if counts.count(name) == 1 else c for c, name in names.items()}


def grid_path(grid: str, request: SuiteRequest, name: str, many: bool) -> str:
    """`grid` itself for one grounding evaluation; with several, `STEM.DATASET.NAME.png` (NAME: the
    checkpoint's `short_names` entry)."""
    if not many:
        return grid
    path = Path(grid)
    tag = f"{request.dataset}.{name}".replace("/", "_").replace(os.sep, "_")
    return str(path.with_name(f"{path.stem}.{tag}{path.suffix or '.png'}"))


# ----------------------------------------------------------------------------- a whole run

def evaluate(checkpoints: Sequence[str], requests: Sequence[SuiteRequest], options: SuiteOptions,
             load: Callable[[str], LoadedCheckpoint],
             on_result: Callable[[str, SuiteRequest, dict], None] | None = None) -> dict[str, dict[str, dict]]:
    """{checkpoint: {suite label: results}}: every suite's data is read and checked first, then each
    checkpoint is loaded (`load`) once, scored on every suite and let go before the next one.
    `on_result(checkpoint, request, results)` is called as each result comes."""
    prepared = [SUITES[request.name].prepare(request, options) for request in requests]
    grids = sum(request.name == "grounding" for request in requests) * len(checkpoints)
    names = short_names(checkpoints)
    results: dict[str, dict[str, dict]] = {}
    for path in checkpoints:
        checkpoint = load(path)
        results[path] = {}
        for request, data in zip(requests, prepared):
            logger.info("%s on %s", path, request.label)
            suite_options = options
            if request.name == "grounding" and options.grid:
                suite_options = dataclasses.replace(options, grid=grid_path(options.grid, request, names[path],
                                                                            grids > 1))
            results[path][request.label] = SUITES[request.name].run(checkpoint, data, request, suite_options)
            if on_result is not None:
                on_result(path, request, results[path][request.label])
        del checkpoint  # its params and compiled encoders go before the next checkpoint loads
    return results


def suite_table(label: str, results: dict) -> str:
    """The markdown table of one suite's results."""
    return SUITES[label.partition(":")[0]].table(results)


def markdown_report(results: dict[str, dict[str, dict]], names: dict[str, str]) -> str:
    """The summary table (headline metrics, a row per checkpoint), then per suite each checkpoint's table."""
    sections = ["## summary", summary_table(headline_metrics(results), names)]
    labels = list(dict.fromkeys(label for by_suite in results.values() for label in by_suite))
    for label in labels:
        sections.append(f"## {label}")
        for checkpoint, by_suite in results.items():
            if label in by_suite:
                sections += [f"### {names[checkpoint]}", suite_table(label, by_suite[label])]
    return "\n\n".join(sections)
