"""The `vlalign` command line: one subcommand per job (train, export, convert, eval, fine-grained,
dense, negatives, curriculum, plot, data)."""

from __future__ import annotations

import argparse
import logging
import sys
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
    p.set_defaults(run=_run_convert)


def _towers(config) -> str:
    """"vision 768w x12, text 512w x12" of any model config (CLIP-VG: its CLIP's)."""
    config = getattr(config, "clip", config)
    return (f"vision {config.vision.width}w x{config.vision.layers}, "
            f"text {config.text.width}w x{config.text.layers}")


def _run_convert(args: argparse.Namespace) -> int:
    from vlalign_jax import converters

    ckpt = converters.convert(args.src, args.dst, args.src_family, args.dst_family, args.dtype, args.act,
                              args.overwrite)
    n = sum(v.size for v in ckpt.params.values())
    print(f"wrote {args.dst} ({args.dst_family}, {args.dtype}, {n / 1e6:.1f}M parameters, {_towers(ckpt.config)})")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from vlalign_jax.data.sources.grounding_splits import ALIASES, LAYOUTS  # light: no jax at parser build

    p = sub.add_parser(
        "eval", help="compositional benchmarks (SugarCrepe, ARO, VALSE) or visual grounding of a checkpoint or run",
        description="sugarcrepe/aro/valse: score each benchmark item's positive caption against its negatives "
                    "(cosine similarity; a tie is wrong) and report accuracy per subset and their average; the data "
                    "root holds the public files (see vlalign_jax/eval/compositional_formats.py). grounding: Acc@0.5 "
                    "and mIoU per split of a CLIP-VG checkpoint or run on CLIP-VG / TransVG split files (--data is "
                    "the split root), or on a synthetic-shapes run's held-out expressions, with an optional PNG of "
                    "predicted (red) and ground-truth (green) boxes. Results print as a markdown table and, with "
                    "--out, are written as JSON and .md.",
        epilog="examples: vlalign eval --suite sugarcrepe --data /data/bench --checkpoint degla_b32.pt; "
               "vlalign eval --suite grounding --dataset unc --data /data/split --data-root /data/ln_data "
               "--checkpoint best_checkpoint.pth --grid unc.png")
    p.add_argument("--suite", required=True, choices=("sugarcrepe", "aro", "valse", "grounding"))
    p.add_argument("--data", default=None, help="data root (e.g. DIR/sugarcrepe/*.json, DIR/coco/val2017/); "
                   "grounding: the split root (DIR/<dataset>/<dataset>_<split>.jsonl|.pth)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint (any converter family) or a training workdir")
    p.add_argument("--family", default=None, help="checkpoint family (default: guessed)")
    p.add_argument("--subsets", nargs="*", default=None, help="only these subsets")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None, help="write the results here as JSON (and a .md table beside it)")
    grounding = p.add_argument_group("grounding")
    grounding.add_argument("--dataset", choices=(*LAYOUTS, *ALIASES, "synthetic_shapes"), default=None,
                           metavar="DATASET",
                           help=f"split-file dataset ({', '.join(LAYOUTS)}, or an alias: {', '.join(ALIASES)}), "
                                f"or synthetic_shapes for a run trained on the synthetic shapes")
    grounding.add_argument("--image-root", default=None, help="the folder holding the dataset's images")
    grounding.add_argument("--data-root", default=None,
                           help="the reference's data root; images under its folder for the dataset")
    grounding.add_argument("--splits", nargs="*", default=None,
                           help="splits to evaluate (default: the ones the paper reports for the dataset)")
    grounding.add_argument("--released-code", action="store_true",
                           help="truncate ground-truth boxes to integers as the released loader does")
    grounding.add_argument("--grid", default=None, help="write a PNG of predicted vs ground-truth boxes here")
    grounding.add_argument("--grid-samples", type=int, default=16, help="examples in the grid (default 16)")
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from vlalign_jax.eval.reports import report

    if args.suite == "grounding":
        from vlalign_jax.eval import grounding_suite

        if args.dataset is None:
            raise ValueError(f"--suite grounding needs --dataset (one of {', '.join(grounding_suite.DATASETS)})")
        results = grounding_suite.evaluate(
            args.checkpoint, args.dataset, args.data, family=args.family, image_root=args.image_root,
            data_root=args.data_root, splits=args.splits, batch_size=args.batch_size,
            released_code=args.released_code, grid=args.grid, grid_samples=args.grid_samples)
        report(results, grounding_suite.markdown_table(results), args.out)
        if results.get("grid"):
            print(f"wrote {results['grid']}")
        return 0
    from vlalign_jax.eval.compositional import evaluate_suite, markdown_table
    from vlalign_jax.eval.encoders import clip_encoders, load_model

    if args.data is None:
        raise ValueError(f"--suite {args.suite} needs --data (the benchmark's data root)")
    encode_images, encode_texts = clip_encoders(*load_model(args.checkpoint, args.family))
    results = evaluate_suite(args.suite, args.data, encode_images, encode_texts, batch_size=args.batch_size,
                             subsets=args.subsets)
    report(results, markdown_table(results), args.out)
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
    p = sub.add_parser(
        "train", help="train (or resume) a run from a config file",
        description="Train a model from a Python config file. Any field can be overridden with "
                    "--config.a.b=VALUE (Python literals; unknown fields are errors). Re-running the same "
                    "command on the same workdir resumes from its newest checkpoint.",
        epilog="example: vlalign train --config configs/demo/clip_shapes.py --workdir runs/demo "
               "--config.train.steps=100")
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

    try:
        return args.run(args)
    except Preempted as e:  # a checkpoint was written: the scheduler may requeue the same command
        print(f"vlalign {args.command}: {e}", file=sys.stderr)
        return PREEMPTED_EXIT_STATUS
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        # User-facing errors (bad checkpoint, wrong family, missing extra) print without a traceback.
        print(f"vlalign {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
