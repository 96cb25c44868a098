"""The `vlalign` command line: one subcommand per job (train, export, convert, eval, fine-grained,
dense, negatives, curriculum, plot, data)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from typing import Sequence


def _add_convert(sub: argparse._SubParsersAction) -> None:
    from vlalign_jax.converters.families import DTYPES, FAMILIES

    p = sub.add_parser(
        "convert", help="convert weights between checkpoint families",
        description="Convert CLIP weights between PyTorch checkpoint families and vlalign_jax's own format. "
                    "The architecture is read from the source; nothing is written unless the whole "
                    "conversion succeeds.",
        epilog="example: vlalign convert ViT-B-32.pt clip_b32 --to flax")
    p.add_argument("src", help="source file or folder")
    p.add_argument("dst", help="destination file or folder")
    p.add_argument("--from", dest="src_family", choices=FAMILIES, default=None,
                   help="source family (default: guessed from the contents)")
    p.add_argument("--to", dest="dst_family", choices=FAMILIES, required=True, help="destination family")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="parameter dtype written (default fp32)")
    p.add_argument("--act", choices=("quick_gelu", "gelu"), default=None,
                   help="activation, for open_clip files that do not record it (default: the family's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.add_argument("--trust-pickle", action="store_true",
                   help="CLIP-VG .pth files: unpickle any object the file holds (runs its code; trusted files "
                        "only). Without it, only tensors and the argparse args are read")
    p.set_defaults(run=_run_convert)


def _towers(config) -> str:
    """"vision 768w x12, text 512w x12" of any model config (CLIP-VG: its CLIP's)."""
    config = getattr(config, "clip", config)
    return (f"vision {config.vision.width}w x{config.vision.layers}, "
            f"text {config.text.width}w x{config.text.layers}")


def _run_convert(args: argparse.Namespace) -> int:
    from vlalign_jax import converters

    ckpt = converters.convert(args.src, args.dst, args.src_family, args.dst_family, args.dtype, args.act,
                              args.overwrite, args.trust_pickle)
    n = sum(v.size for v in ckpt.params.values())
    print(f"wrote {args.dst} ({args.dst_family}, {args.dtype}, {n / 1e6:.1f}M parameters, {_towers(ckpt.config)})")
    return 0


def _patch_budget(text: str) -> int | str:
    """--max-num-patches: a positive integer or 'dynamic'."""
    if text == "dynamic":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--max-num-patches must be a positive integer or 'dynamic', got {text!r}")
    return int(text)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from vlalign_jax.eval import suites  # light: no jax at parser build

    p = sub.add_parser(
        "eval", help="zero-shot, retrieval, compositional, FG-OVD and grounding benchmarks of checkpoints or runs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Score one or more checkpoints (a file of any family the converters read: OpenAI, open_clip, Hugging\n"
            "Face, DeGLA, FG-CLIP 1/2, SigLIP 2, CLIP-VG; or a `vlalign train` workdir) on one or more suites.\n"
            "Each model loads once; images and texts are encoded in batches split over all local devices.\n\n"
            "suites (--suite NAME[:DATASET], each with its --data):\n"
            "  zeroshot[:NAME]         top-1/5 classification; --data a folder of class folders, a .csv/.tsv\n"
            "                          (image path, label) or tfds:NAME[:SPLIT]; NAME names it in the results\n"
            "  retrieval:DATASET       R@1/5/10 image<->text, DATASET one of\n"
            f"                          {', '.join(suites.RETRIEVAL_DATASETS)};\n"
            "                          --data the annotation file, or the set's root in its usual layout\n"
            f"  long-retrieval:DATASET  the same on {', '.join(suites.LONG_DATASETS)} with the long text walk\n"
            "  sugarcrepe, aro, valse  compositional accuracy (a tie is wrong); --data the benchmark root\n"
            "  fg-ovd                  FG-OVD top-1 per subset (FG-CLIP 1/2); --data the *_llava.jsonl folder,\n"
            "                          --images the COCO root\n"
            "  grounding:DATASET       CLIP-VG Acc@0.5 and mIoU per split; --data the split root\n\n"
            "--data and --images pair with the --suite flags in order, or one value serves every suite. All\n"
            "data is checked before any model loads; each table prints as its result comes. --out writes JSON\n"
            "and a .md beside it: for one checkpoint and one suite that suite's results, otherwise\n"
            "{checkpoint: {suite: results}} and a summary table of the headline metrics. --plot draws those\n"
            "metrics as a PNG bar chart, one bar per checkpoint."),
        epilog="examples:\n"
               "  vlalign eval --checkpoint ViT-B-32.pt --checkpoint runs/degla \\\n"
               "      --suite zeroshot:imagenet --data /data/imagenet/val --classnames imagenet \\\n"
               "      --suite retrieval:coco --data /data/coco --out results.json --plot results.png\n"
               "  vlalign eval --suite sugarcrepe --data /data/bench --checkpoint degla_b32.pt\n"
               "  vlalign eval --suite grounding --dataset unc --data /data/split --data-root /data/ln_data \\\n"
               "      --checkpoint best_checkpoint.pth --grid unc.png")
    p.add_argument("--checkpoint", action="append", required=True, metavar="PATH_OR_WORKDIR",
                   help="a checkpoint (any converter family) or a training workdir; repeat to compare several")
    p.add_argument("--suite", action="append", required=True, metavar="NAME[:DATASET]",
                   help=f"a suite ({', '.join(suites.SUITES)}); repeatable")
    p.add_argument("--data", action="append", default=None, metavar="PATH",
                   help="the suite's data (see above); one per --suite in order, or one for all")
    p.add_argument("--images", action="append", default=None, metavar="DIR",
                   help="image root (zeroshot csv, retrieval when --data is a file, fg-ovd, grounding); one per "
                        "--suite in order, or one for all")
    p.add_argument("--family", default=None, help="checkpoint family (default: guessed)")
    p.add_argument("--tokenizer", default="auto",
                   help="auto (default: a workdir's data.tokenizer; SigLIP 2 / FG-CLIP 2: the Gemma tokenizer in the "
                        "checkpoint folder; else CLIP BPE) | clip | words | gemma:PATH")
    p.add_argument("--max-num-patches", type=_patch_budget, default=None,
                   help="NaFlex patch budget per image (SigLIP 2, FG-CLIP 2): N or 'dynamic' (FG-CLIP 2's eval rule). "
                        "Default: a workdir's data.max_num_patches, else dynamic for FG-CLIP 2 and 256 for SigLIP 2")
    p.add_argument("--batch-size", type=int, default=256, help="images or texts per encoder call, split over all "
                   "devices (default 256)")
    p.add_argument("--subsets", nargs="*", default=None, help="compositional, fg-ovd: only these subsets")
    p.add_argument("--split", default=None, help="retrieval: the Karpathy split (default test); zeroshot: the TFDS split")
    p.add_argument("--out", default=None, help="write the results here as JSON (and a .md table beside it)")
    p.add_argument("--plot", default=None, metavar="PNG", help="write a bar chart of the headline metrics here")
    zeroshot = p.add_argument_group("zeroshot")
    zeroshot.add_argument("--templates", default=None, help="prompt templates: imagenet (OpenAI's 80, default), "
                          "imagenet_simple (their 7) or a file with one template per line, {} for the class name")
    zeroshot.add_argument("--classnames", default=None,
                          help="class names replacing the data's: a file (one per line, label order) or imagenet "
                               "(OpenAI's names for the 1000 WordNet-id folders)")
    zeroshot.add_argument("--zeroshot-format", choices=suites.ZEROSHOT_FORMATS, default=None,
                          help="how --data is read (default: detected); tfds with --data TFDS_DIR reads the TFDS "
                               "dataset named by zeroshot:NAME")
    zeroshot.add_argument("--image-column", default="filepath", help="csv: the image path column (default filepath)")
    zeroshot.add_argument("--label-column", default="label",
                          help="csv / tfds: the label column or feature (default label)")
    grounding = p.add_argument_group("grounding")
    grounding.add_argument("--dataset", choices=suites.GROUNDING_DATASETS, default=None, metavar="DATASET",
                           help="the dataset of a bare --suite grounding (the same as grounding:DATASET): "
                                f"{', '.join(suites.LAYOUTS)}, an alias ({', '.join(suites.ALIASES)}) or "
                                "synthetic_shapes for a run trained on the synthetic shapes")
    grounding.add_argument("--image-root", default=None, help="the folder holding the dataset's images")
    grounding.add_argument("--data-root", default=None,
                           help="the reference's data root; images under its folder for the dataset")
    grounding.add_argument("--splits", nargs="*", default=None,
                           help="splits to evaluate (default: the ones the paper reports for the dataset)")
    grounding.add_argument("--released-code", action="store_true",
                           help="truncate ground-truth boxes to integers as the released loader does")
    grounding.add_argument("--grid", default=None, help="write a PNG of predicted vs ground-truth boxes here "
                           "(several grounding runs: STEM.DATASET.CHECKPOINT.png)")
    grounding.add_argument("--grid-samples", type=int, default=16, help="examples in the grid (default 16)")
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    from pathlib import Path

    from vlalign_jax.eval import suites
    from vlalign_jax.eval.reports import report

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    repeated = sorted({c for c in args.checkpoint if args.checkpoint.count(c) > 1})
    if repeated:
        raise ValueError(f"--checkpoint {', '.join(repeated)} given more than once")
    requests = [dataclasses.replace(r, images=r.images or args.image_root) if r.name == "grounding" else r
                for r in suites.parse_requests(args.suite, args.data, args.images, args.dataset)]
    options = suites.SuiteOptions(
        batch_size=args.batch_size, subsets=None if args.subsets is None else tuple(args.subsets),
        templates=args.templates, classnames=args.classnames, zeroshot_format=args.zeroshot_format,
        image_column=args.image_column, label_column=args.label_column, split=args.split, data_root=args.data_root,
        splits=None if args.splits is None else tuple(args.splits), released_code=args.released_code,
        grid=args.grid, grid_samples=args.grid_samples)
    names = suites.short_names(args.checkpoint)
    single = len(args.checkpoint) == 1 and len(requests) == 1

    def show(checkpoint: str, request: suites.SuiteRequest, results: dict) -> None:
        print(f"## {request.label}: {names[checkpoint]}\n\n{suites.suite_table(request.label, results)}\n", flush=True)
        if results.get("grid"):
            print(f"wrote {results['grid']}")

    load = lambda path: suites.LoadedCheckpoint(path, args.family, args.tokenizer, args.max_num_patches,
                                                args.batch_size)
    results = suites.evaluate(args.checkpoint, requests, options, load, on_result=None if single else show)
    if single:
        only = results[args.checkpoint[0]][requests[0].label]
        report(only, suites.suite_table(requests[0].label, only), args.out)
        if only.get("grid"):
            print(f"wrote {only['grid']}")
    else:
        print(f"## summary\n\n{suites.summary_table(suites.headline_metrics(results), names)}\n")
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2))
            out.with_suffix(".md").write_text(suites.markdown_report(results, names) + "\n")
            print(f"wrote {out} and {out.with_suffix('.md')}")
    if args.plot:
        from vlalign_jax.eval.bar_chart import write_bar_chart

        headlines = suites.headline_metrics(results)
        metrics = list(dict.fromkeys(m for by_metric in headlines.values() for m in by_metric))
        values = [[None if by_metric.get(m) is None else 100 * by_metric[m] for m in metrics]
                  for by_metric in headlines.values()]
        write_bar_chart(args.plot, [f"{label}\n{metric}" for label, metric in metrics],
                        [names[c] for c in headlines], values, title="vlalign eval: headline metrics", y_label="%")
        print(f"wrote {args.plot}")
    return 0


def _add_fine_grained(sub: argparse._SubParsersAction) -> None:
    from vlalign_jax.eval import dense_maps, fine_grained

    p = sub.add_parser(
        "fine-grained", help="FG-OVD, long-caption retrieval (ShareGPT4V-1k, DCI), box classification",
        description="Fine-grained evaluations of an FG-CLIP checkpoint or run: FG-OVD top-1 (a box against its "
                    "positive and negative descriptions), long-caption retrieval R@1, COCO-style box "
                    "classification. Ties count as wrong.",
        epilog="example: vlalign fine-grained --task fgovd --data fgovd/ --images coco/val2017 --checkpoint fg-clip-base")
    fine_grained.add_arguments(p)
    p.set_defaults(run=fine_grained.run)
    p = sub.add_parser("dense", help="patch-text similarity heatmap of an image, as a PNG",
                       epilog='example: vlalign dense --checkpoint fg-clip-base --image dog.jpg --text "a dog" --out heat.png')
    dense_maps.add_arguments(p)
    p.set_defaults(run=dense_maps.run)


def _add_negatives(sub: argparse._SubParsersAction) -> None:
    from vlalign_jax.data import negatives_job

    p = sub.add_parser(
        "negatives", help="write DeGLA hard-negative captions (rule-based, or a local causal LM)",
        description="Make 4 hard negatives per caption across 5 types (reshuffle, swap nouns, swap adjectives, "
                    "replace adjectives, replace nouns) and write DeGLA JSON lines. Re-running resumes: finished "
                    "ids are skipped. A summary of counts per type and rejected outputs is printed and saved.",
        epilog="example: vlalign negatives --captions annotations/captions_train2014.json --out DeGLA.jsonl")
    negatives_job.add_arguments(p)
    p.set_defaults(run=negatives_job.run)


def _add_export(sub: argparse._SubParsersAction) -> None:
    from vlalign_jax.converters.families import DTYPES, FAMILIES

    p = sub.add_parser(
        "export", help="write a training run's weights as a PyTorch (or flax) checkpoint",
        description="Export the params of a run's newest (or --step) checkpoint to a checkpoint family. "
                    "Method state (DeGLA's EMA teacher, optimizer moments) is not exported.",
        epilog="example: vlalign export runs/degla degla_b32.pt --to degla")
    p.add_argument("workdir", help="training run directory")
    p.add_argument("dst", help="destination file or folder")
    p.add_argument("--to", dest="dst_family", choices=FAMILIES, required=True, help="destination family")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="parameter dtype (default: as trained)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from vlalign_jax.train.export import export_run

    config = export_run(args.workdir, args.dst, args.dst_family, args.step, args.dtype, args.overwrite)
    print(f"wrote {args.dst} ({args.dst_family}; {_towers(config)})")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    paragraphs = (
        "Train a model from a Python config file. Any field can be overridden with --config.a.b=VALUE "
        "(Python literals; unknown fields are errors). Re-running the same command on the same workdir "
        "resumes from its newest checkpoint.",
        "example: vlalign train --config configs/demo/clip_shapes.py --workdir runs/demo --config.train.steps=100",
        "exit status: 0 done; 2 an error named on stderr (config field, data record, checkpoint, unwritable "
        "workdir, failed save); 69 a peer process died or hung (rerun to resume); 75 preempted by SIGTERM "
        "after checkpointing (requeue the same command). See docs/RELIABILITY.md.")
    description, example, statuses = (textwrap.fill(text, 100) for text in paragraphs)
    p = sub.add_parser("train", help="train (or resume) a run from a config file", description=description,
                       epilog=f"{example}\n\n{statuses}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="config file defining get_config()")
    p.add_argument("--workdir", required=True, help="run directory: config, checkpoints, metrics")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from vlalign_jax.train.config import build_config

    config = build_config(args.config, args.overrides)  # config errors surface before heavy imports
    from vlalign_jax.train.loop import train

    metrics = train(config, args.workdir)
    evals = {k: v for k, v in metrics.items() if k.startswith("eval/")}
    summary = ", ".join(f"{k}={v:.4f}" for k, v in sorted(evals.items()))
    print(f"done: step {config.train.steps}, loss {metrics.get('loss', float('nan')):.4f}"
          + (f", {summary}" if summary else ""))
    return 0


def _add_curriculum(sub: argparse._SubParsersAction) -> None:
    from vlalign_jax.curriculum import command

    p = sub.add_parser(
        "curriculum", help="CLIP-VG's self-paced curriculum (SSA / MSA) over pseudo-label sources, resumable",
        description="Train a reliability measurer per pseudo-label source, score every label's reliability "
                    "(IoU of the measurer's box with the pseudo box), write 1,000-bin histograms, select subsets "
                    "by threshold on the annotated val split's Acc@0.5, retrain; every stage is a training "
                    "run in WORKDIR and a rerun resumes where it stopped.",
        epilog="example: vlalign curriculum --config configs/clipvg/curriculum_shapes.py --workdir runs/ssa")
    command.add_arguments(p)
    p.set_defaults(run=command.run)


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw PNG curves of a run's logged metrics",
                       description="Read WORKDIR/metrics.jsonl and write one PNG per metric group.")
    p.add_argument("workdir")
    p.add_argument("--out", default=None, help="output folder (default WORKDIR/plots)")
    p.set_defaults(run=_run_plot)


def _run_plot(args: argparse.Namespace) -> int:
    from vlalign_jax.eval.plots import plot_metrics

    for path in plot_metrics(args.workdir, args.out):
        print(path)
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    from vlalign_jax.data.sources.grounding_splits import add_convert_splits_arguments, run_convert_splits

    p = sub.add_parser("data", help="prepare datasets (format conversions)")
    tools = p.add_subparsers(dest="data_command", required=True)
    convert = tools.add_parser(
        "convert-splits", help="CLIP-VG / TransVG .pth split files -> JSON lines (read without torch)",
        description="Convert CLIP-VG / TransVG split files (.pth; needs torch) into JSON lines with boxes as "
                    "x1y1x2y2 pixels, which GroundingSplit reads without torch.")
    add_convert_splits_arguments(convert)
    convert.set_defaults(run=run_convert_splits)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlalign", description="Train, evaluate and convert vision-language "
                                     "alignment models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_convert(sub)
    _add_export(sub)
    _add_eval(sub)
    _add_negatives(sub)
    _add_fine_grained(sub)
    _add_curriculum(sub)
    _add_plot(sub)
    _add_data(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("jax", "absl"):  # backend probing and orbax's per-save chatter are noise to a user
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from vlalign_jax.train.config import ConfigError, split_overrides

    try:
        rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        print(f"vlalign: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(rest)
    args.overrides = overrides
    from vlalign_jax.train.preemption import PREEMPTED_EXIT_STATUS, Preempted
    from vlalign_jax.train.watchdog import HUNG_EXIT_STATUS, PeerFailedError

    try:
        return args.run(args)
    except Preempted as e:  # a checkpoint was written: the scheduler may requeue the same command
        print(f"vlalign {args.command}: {e}", file=sys.stderr)
        return PREEMPTED_EXIT_STATUS
    except PeerFailedError as e:
        # The distributed runtime cannot shut down cleanly without the lost peer (it would abort and
        # replace this status with 134), so leave at once; checkpoints were committed or abandoned.
        print(f"vlalign {args.command}: error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(HUNG_EXIT_STATUS)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        # User-facing errors (bad checkpoint, wrong family, missing extra) print without a traceback.
        print(f"vlalign {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
