"""The `reasonclip` command: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _export(args: argparse.Namespace) -> int:
    from .encoder import export_encoder

    out = export_encoder(args.train_ckpt, args.out_dir, stage=args.stage, recipe=args.recipe, base_model=args.base_model, overwrite=args.overwrite)
    print(out)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .encoder import verify_export

    report = verify_export(args.out_dir, args.base, select_layer=args.layer)
    print(json.dumps(report, indent=2))
    for name in report["failed"]:
        print(f"verify: check failed: {name}", file=sys.stderr)
    return 0 if report["ok"] else 1


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.work_dir, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reasonclip", description="ReasonCLIP encoders: pretraining, export, LLaVA-NeXT, evaluation.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("export", help="training checkpoint -> drop-in CLIP/SigLIP checkpoint")
    p.add_argument("train_ckpt")
    p.add_argument("out_dir")
    p.add_argument("--stage", default=None, help="provenance: stage name (default: from the checkpoint)")
    p.add_argument("--recipe", default=None, help="provenance: recipe (default: from the checkpoint)")
    p.add_argument("--base-model", default=None, help="provenance: base model id (default: from the checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.set_defaults(handler=_export)

    p = commands.add_parser("verify", help="prove an export is a drop-in for its base model; prints a JSON report")
    p.add_argument("out_dir")
    p.add_argument("--base", required=True, help="base checkpoint id or path")
    p.add_argument("--layer", type=int, default=-2, help="vision feature layer compared bitwise (LLaVA's select layer)")
    p.set_defaults(handler=_verify)

    p = commands.add_parser("demo", help="tiny offline end-to-end run of the whole pipeline")
    p.add_argument("--work-dir", default="reasonclip_demo")
    p.add_argument("--quick", action="store_true", help="fewer steps (used by the tests)")
    p.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as error:
        # Bad input gets one line naming the problem, not a traceback.
        print(f"reasonclip {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
