"""The `vlalign` command line: one subcommand per job (`convert` now; `train`, `eval`, ... as they land)."""

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


def _run_convert(args: argparse.Namespace) -> int:
    from vlalign_jax import converters

    ckpt = converters.convert(args.src, args.dst, args.src_family, args.dst_family, args.dtype, args.act,
                              args.overwrite)
    n = sum(v.size for v in ckpt.params.values())
    print(f"wrote {args.dst} ({args.dst_family}, {args.dtype}, {n / 1e6:.1f}M parameters, "
          f"vision {ckpt.config.vision.width}w x{ckpt.config.vision.layers}, "
          f"text {ckpt.config.text.width}w x{ckpt.config.text.layers})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlalign", description="Train, evaluate and convert vision-language "
                                     "alignment models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_convert(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("jax", "absl"):  # backend probing and orbax's per-save chatter are noise to a user
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        # User-facing errors (bad checkpoint, wrong family, missing extra) print without a traceback.
        print(f"vlalign {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
