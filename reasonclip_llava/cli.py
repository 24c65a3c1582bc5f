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


def _convert_open_clip(args: argparse.Namespace) -> int:
    from .encoder.convert_open_clip import convert_open_clip

    print(convert_open_clip(args.checkpoint, args.model, args.out, overwrite=args.overwrite))
    return 0


def _verify(args: argparse.Namespace) -> int:
    if (args.base is None) == (args.encoder is None):
        raise ValueError("give --base (an encoder export against its base) or --encoder (a LLaVA checkpoint's tower against an encoder)")
    if args.encoder is not None:
        from .vlm.tower_check import verify_llava_tower

        report = verify_llava_tower(args.out_dir, args.encoder, require_equal=args.require_equal)
    else:
        from .encoder import verify_export

        report = verify_export(args.out_dir, args.base, select_layer=args.layer)
    print(json.dumps(report, indent=2))
    for name in report["failed"]:
        print(f"verify: check failed: {name}", file=sys.stderr)
    for name, finding in report.get("findings", {}).items():
        print(f"verify: finding: {name}: {finding['detail']}", file=sys.stderr)
    return 0 if report["ok"] else 1


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare_encoders, comparison_markdown, reading

    record = compare_encoders(args.encoders, args.lm, args.recipe, args.data_root, args.out, benchmarks=args.benchmarks,
                              layout=args.layout, names=args.names, seeds=args.seeds, arch=args.arch, limit=args.limit,
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, overwrite=args.overwrite)
    if record:  # rank 0 prints; the other ranks of a torchrun launch return quietly
        print(comparison_markdown(record) + "\n" + reading(record))
        print(f"written: {os.path.join(args.out, 'comparison.md')}, comparison.json, comparison.png, recipes/")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.work_dir, quick=args.quick)
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from .data import generate_synthetic

    paths = generate_synthetic(args.out, num_images=args.num_images, seed=args.seed, image_size=args.image_size, eval_fraction=args.eval_fraction, write_jsonl=args.jsonl)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def _data_shards(args: argparse.Namespace) -> int:
    from .data import write_wds_shards

    shards = write_wds_shards(args.source, args.out, image_root=args.image_root, samples_per_shard=args.samples_per_shard, prefix=args.prefix)
    print("\n".join(map(str, shards)))
    return 0


def _data_negatives(args: argparse.Namespace) -> int:
    from .data import write_negatives

    print(write_negatives(args.source, args.out, caption_columns=tuple(args.caption_columns), k=args.k, seed=args.seed))
    return 0


def _eval_score(args: argparse.Namespace) -> int:
    from .evaluation.scoring import score_answers

    summary = score_answers(args.benchmark, args.answers, args.annotations, questions=args.questions, mode=args.mode, out_dir=args.out)
    print(json.dumps(summary, indent=2))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    if args.dry_run:
        from .pretrain.plan import plan_from_yaml

        print(json.dumps(plan_from_yaml(args.config, args.overrides, world_size=args.world_size, params=args.param), indent=2))
        return 0
    from .pretrain.trainer import pretrain_from_yaml

    print(pretrain_from_yaml(args.config, args.overrides))
    return 0


def _llava_build(args: argparse.Namespace) -> int:
    from .vlm.build import build_and_save

    pinpoints = json.loads(args.grid_pinpoints) if args.grid_pinpoints else None
    print(build_and_save(args.lm, args.encoder, args.out, arch=args.arch, image_aspect_ratio=args.image_aspect_ratio, image_grid_pinpoints=pinpoints, vision_feature_layer=args.select_layer, vision_feature_select_strategy=args.strategy, torch_dtype=args.dtype, overwrite=args.overwrite))
    return 0


def _swap(args: argparse.Namespace) -> int:
    from .vlm.swap import swap_vision_tower

    print(swap_vision_tower(args.llava, args.encoder, args.out, reinit_projector=args.reinit_projector, seed=args.seed, overwrite=args.overwrite))
    return 0


def _llava_train(args: argparse.Namespace) -> int:
    from .mllm_train.train import load_train_config, train_llava

    print(train_llava(load_train_config(args.config, args.overrides)))
    return 0


def _llava_merge(args: argparse.Namespace) -> int:
    from .mllm_train.merge import merge_and_export

    print(merge_and_export(args.ckpt, args.out, base=args.base, overwrite=args.overwrite))
    return 0


def _default_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _device_map(value: str | None) -> str | dict | None:
    if value is None or value == "auto":
        return value
    try:
        mapping = json.loads(value)
    except json.JSONDecodeError:
        mapping = None
    if not isinstance(mapping, dict):
        raise ValueError(f"--device-map must be 'auto' or a JSON object {{module: device}}, got {value!r}")
    return mapping


def _eval_vqa(args: argparse.Namespace) -> int:
    from .evaluation.generate import run_vqa

    out = run_vqa(
        args.model, args.benchmark, args.data, args.images, args.out, limit=args.limit, batch_size=args.batch_size,
        device=_default_device(args.device), dtype=args.dtype, device_map=_device_map(args.device_map),
        conv_template=args.conv_template, num_workers=args.num_workers, progress=not args.no_progress,
        prompts=args.prompts, max_new_tokens=args.max_new_tokens, overwrite=args.overwrite,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per data-parallel rank
        print(out)
    return 0


def _eval_suite(args: argparse.Namespace) -> int:
    from .evaluation.suite import run_encoder_suite, run_vqa_suite

    common = dict(benchmarks=args.benchmarks, layout=args.layout)
    if args.kind == "encoder":
        summary = run_encoder_suite(args.model, args.data_root, args.out, batch_size=args.batch_size, device=_default_device(args.device), **common)
    else:
        summary = run_vqa_suite(args.model, args.data_root, args.out, limit=args.limit, mode=args.mode, batch_size=args.batch_size, device=_default_device(args.device), max_new_tokens=args.max_new_tokens, overwrite=args.overwrite, **common)
    print(json.dumps(summary, indent=2))
    return 0


def _eval_clip(args: argparse.Namespace) -> int:
    from .evaluation.encoder import evaluate_encoder

    result = evaluate_encoder(args.model, args.benchmark, args.data, args.images, out_dir=args.out, batch_size=args.batch_size, device=args.device, model_name=args.name)
    print(json.dumps({k: result.get(k) for k in ("model", "benchmark", "n_items", "headline", "macro", "micro", "path")}, indent=2))
    return 0


def _eval_report(args: argparse.Namespace) -> int:
    from .evaluation.report import write_report

    print("\n".join(map(str, write_report(args.runs, args.out, title=args.title))))
    return 0


def _card(args: argparse.Namespace) -> int:
    from .evaluation.card import write_model_card

    print(write_model_card(args.model_dir, args.results, template=args.template, model_name=args.name, overwrite=args.overwrite))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reasonclip", allow_abbrev=False, description="ReasonCLIP encoders: pretraining, export, LLaVA-NeXT, evaluation.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("export", help="training checkpoint -> drop-in CLIP/SigLIP checkpoint")
    p.add_argument("train_ckpt", help="a training checkpoint: OUTPUT_DIR/final, OUTPUT_DIR/best (lowest held-out loss) or a checkpoint-N")
    p.add_argument("out_dir")
    p.add_argument("--stage", default=None, help="provenance: stage name (default: from the checkpoint)")
    p.add_argument("--recipe", default=None, help="provenance: recipe (default: from the checkpoint)")
    p.add_argument("--base-model", default=None, help="provenance: base model id (default: from the checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.set_defaults(handler=_export)

    convert = commands.add_parser("convert", help="checkpoints of other libraries -> plain Hugging Face checkpoints").add_subparsers(dest="convert_command", required=True)
    p = convert.add_parser("open_clip", help="open_clip ViT CLIP state dict (.pt/.bin/.safetensors) -> CLIPModel + processor + tokenizer")
    p.add_argument("checkpoint", help="open_clip weights: a state dict or a training checkpoint ('state_dict' / 'model'; "
                   "'module.' and '_orig_mod.' prefixes are removed)")
    p.add_argument("--model", required=True, help="the open_clip model name it was trained as (e.g. ViT-B-32-quickgelu), NAME/TAG of "
                   "open_clip's pretrained table (e.g. ViT-B-32/openai: the tag sets the activation), or a model config .json")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.set_defaults(handler=_convert_open_clip)

    p = commands.add_parser("verify", help="prove an export is a drop-in for its base model, or compare a LLaVA checkpoint's tower with an encoder; prints a JSON report")
    p.add_argument("out_dir", help="encoder export (with --base) or LLaVA checkpoint (with --encoder)")
    p.add_argument("--base", default=None, help="base checkpoint id or path")
    p.add_argument("--encoder", default=None, help="LLaVA mode: the encoder the checkpoint's tower is compared with (bitwise, or how far it moved)")
    p.add_argument("--require-equal", action="store_true", help="LLaVA mode: fail unless the tower is bitwise the encoder's (frozen-tower runs)")
    p.add_argument("--layer", type=int, default=-2, help="vision feature layer compared bitwise (LLaVA's select layer)")
    p.set_defaults(handler=_verify)

    p = commands.add_parser("pretrain", help="one ReasonCLIP stage (stage0 / stage1 / stage2 / read) from a recipe; extra --key=value or --section.key=value override it")
    p.add_argument("config", help="recipe YAML, e.g. train/stage1_l14_336.yaml")
    p.add_argument("--dry-run", action="store_true", help="build model, data, optimizer and schedule, train nothing, print the plan as JSON")
    p.add_argument("--world-size", type=int, default=None, help="with --dry-run: plan for this many devices (default: $WORLD_SIZE or 1)")
    p.add_argument("--param", action="append", default=[], metavar="NAME", help="with --dry-run: also show this parameter's group, lr and weight decay (repeatable)")
    p.set_defaults(handler=_pretrain, takes_overrides=True)

    p = commands.add_parser("llava-build", help="build a LLaVA-NeXT (transformers LlavaNext) or LLaVA-1.5 (transformers Llava) from a causal LM and an encoder")
    p.add_argument("--lm", required=True, help="causal LM id or path (Llama / Qwen / Mistral family)")
    p.add_argument("--encoder", required=True, help="CLIP/SigLIP (e.g. ReasonCLIP export) id or path")
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default="llava_next", choices=["llava_next", "llava"], help="llava_next: anyres LlavaNext; llava: one-tile LLaVA-1.5 format (ReasonCLIP's published MLLM)")
    p.add_argument("--image-aspect-ratio", default=None, choices=["anyres", "pad", "square"], help="processor setting; default: anyres (llava_next), pad (llava)")
    p.add_argument("--grid-pinpoints", default=None, help="JSON list of [h, w]; default: LLaVA-NeXT's, scaled to the tower")
    p.add_argument("--select-layer", type=int, default=-2)
    p.add_argument("--strategy", default=None, choices=["default", "full"], help="default: 'default' for CLIP, 'full' for SigLIP")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(handler=_llava_build)

    p = commands.add_parser("swap", help="replace the vision tower of a LLaVA-NeXT checkpoint with an encoder of the same architecture")
    p.add_argument("--llava", required=True)
    p.add_argument("--encoder", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--reinit-projector", action="store_true")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(handler=_swap)

    p = commands.add_parser("llava-train", help="projector pretraining / instruction tuning (LLaVA option names); extra --key=value override the YAML")
    p.add_argument("config", nargs="?", default=None)
    p.set_defaults(handler=_llava_train, takes_overrides=True)

    p = commands.add_parser("llava-merge", help="merge LoRA and export a checkpoint plain transformers loads")
    p.add_argument("ckpt")
    p.add_argument("out")
    p.add_argument("--base", default=None, help="base LlavaNext dir when the run does not record it")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.set_defaults(handler=_llava_merge)

    data = commands.add_parser("data", help="pretraining data tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write the synthetic compositional data set (ReasonLite/ReasonPro parquet + eval splits)")
    p.add_argument("--out", required=True)
    p.add_argument("--num-images", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--eval-fraction", type=float, default=0.2)
    p.add_argument("--jsonl", action="store_true", help="also write JSONL copies")
    p.set_defaults(handler=_data_synth)
    p = data.add_parser("shards", help="parquet/JSONL rows -> webdataset tar shards (img2dataset layout)")
    p.add_argument("source")
    p.add_argument("--out", required=True)
    p.add_argument("--image-root", default=None)
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--prefix", default="shard")
    p.set_defaults(handler=_data_shards)
    p = data.add_parser("negatives", help="precompute k span-swap hard negatives per caption into a column")
    p.add_argument("source")
    p.add_argument("--out", required=True)
    p.add_argument("--caption-columns", nargs="+", default=["captions"])
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_data_negatives)

    evaluation = commands.add_parser("eval", help="evaluation: VQA generation and scoring, encoder benchmarks, reports")
    evals = evaluation.add_subparsers(dest="eval_command", required=True)
    p = evals.add_parser("vqa", help="answer a VQA benchmark with a LlavaNext / Llava checkpoint (LLaVA answers .jsonl; reruns resume; torchrun / accelerate launch shard it)")
    p.add_argument("--model", required=True, help="LlavaNext checkpoint folder (model + processor)")
    p.add_argument("--benchmark", required=True)
    p.add_argument("--data", required=True, help="the benchmark's released question file/folder, or its lmms-lab parquet folder")
    p.add_argument("--images", required=True, help="folder the image names are relative to (parquet / MMBench: where embedded images are written)")
    p.add_argument("--prompts", default="llava", choices=["llava", "lmms_eval"], help="LLaVA's eval prompts or lmms-eval's (parquet input)")
    p.add_argument("--out", required=True, help="answers .jsonl (header + rows); a rerun of the same run resumes it, another run is refused")
    p.add_argument("--overwrite", action="store_true", help="replace an answers file written by another run")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override the benchmark's length (docs/EVAL.md); recorded in the header")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu; under torchrun / accelerate launch each rank takes its own GPU")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "fp32", "bf16", "fp16"])
    p.add_argument("--device-map", default=None, help="'auto' or a JSON {module: device}: one model over this process's GPUs")
    p.add_argument("--conv-template", default=None, help="'plain' or a Jinja chat template; default: the checkpoint's")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="answer only the first N questions (N >= 1)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_eval_vqa)
    p = evals.add_parser("suite", help="every benchmark found under a data root for one checkpoint, then a report")
    p.add_argument("kind", choices=["vqa", "encoder"])
    p.add_argument("--model", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--benchmarks", nargs="*", default=None, help="default: all of the suite")
    p.add_argument("--layout", default=None, help="JSON overriding where a benchmark's files are under the root")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--limit", type=int, default=None, help="vqa: answer only the first N questions per benchmark")
    p.add_argument("--max-new-tokens", type=int, default=None, help="vqa: override every benchmark's length (docs/EVAL.md)")
    p.add_argument("--overwrite", action="store_true", help="vqa: replace answers files written by another run")
    p.add_argument("--mode", default="official", choices=["official", "evalai", "lmms_eval"],
                   help="vqa: official scorers, LLaVA's EvalAI normalisation, or lmms-eval's prompts, settings and per-item functions (parquet data)")
    p.set_defaults(handler=_eval_suite)
    p = evals.add_parser("score", help="score an answers file with the benchmark's official scorer")
    p.add_argument("--benchmark", required=True)
    p.add_argument("--answers", required=True)
    p.add_argument("--annotations", required=True, help="VQAv2: the annotations JSON; other benchmarks: the same path as --data")
    p.add_argument("--questions", default=None, help="score only the questions in this file")
    p.add_argument("--mode", default="official", choices=["official", "evalai", "lmms_eval"],
                   help="official scorer (default); evalai: LLaVA's VQA/GQA normalisation; lmms_eval: lmms-eval's per-item functions (lmms-lab parquet)")
    p.add_argument("--out", default=None, help="directory for per-question scores and the summary JSON")
    p.set_defaults(handler=_eval_score)
    p = evals.add_parser("clip", help="encoder benchmarks on a CLIP/SigLIP checkpoint (compositional, retrieval, zero-shot)")
    p.add_argument("--model", required=True)
    p.add_argument("--benchmark", required=True)
    p.add_argument("--data", default=None, help="annotation file or folder (optional for zeroshot)")
    p.add_argument("--images", default=None, help="image root (not needed for rclip_bench: the parquet embeds the images)")
    p.add_argument("--out", default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--name", default=None, help="model name in results and reports (default: folder name)")
    p.set_defaults(handler=_eval_clip)
    p = evals.add_parser("report", help="markdown table + PNG chart comparing models")
    p.add_argument("runs", nargs="+", help="result JSONs or folders; NAME=DIR labels a row")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="Evaluation report")
    p.set_defaults(handler=_eval_report)

    p = commands.add_parser("card", help="write a Hugging Face model card (README.md with model-index) into a checkpoint")
    p.add_argument("model_dir")
    p.add_argument("--results", nargs="*", default=[])
    p.add_argument("--template", default=None)
    p.add_argument("--name", default=None)
    p.add_argument("--overwrite", action="store_true", help="replace a README.md that `card` did not write (default: keep it as README.previous.md)")
    p.set_defaults(handler=_card)

    p = commands.add_parser("compare", help="the same LLaVA recipe on several encoders: build, train, merge, evaluate each; "
                            "one table + figure with chance and the spread of the differences (resumes finished arms)")
    p.add_argument("--encoders", nargs="+", required=True, help="CLIP/SigLIP checkpoints; the first is the reference")
    p.add_argument("--names", nargs="+", default=None, help="one label per encoder (default: folder names)")
    p.add_argument("--lm", required=True, help="causal LM path (every arm builds from it)")
    p.add_argument("--recipe", nargs="+", required=True, help="the LLaVA stages in order (llava-train YAMLs, e.g. "
                   "train/llava_reasonclip_pretrain.yaml train/llava_reasonclip_finetune.yaml)")
    p.add_argument("--data-root", required=True, help="benchmark data root, laid out as for `eval suite`")
    p.add_argument("--benchmarks", nargs="+", default=None, help="benchmark names (default: every one found under --data-root)")
    p.add_argument("--layout", default=None, help="JSON overriding benchmark paths (as `eval suite --layout`)")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per encoder; with N > 1 the spread is the range over seeds")
    p.add_argument("--arch", default=None, choices=["llava_next", "llava"], help="default: the first recipe's arch, else llava_next")
    p.add_argument("--limit", type=int, default=None, help="first N questions per benchmark (smoke runs)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--overwrite", action="store_true", help="retrain an arm whose recorded plan differs")
    p.set_defaults(handler=_compare)

    p = commands.add_parser("demo", help="tiny offline end-to-end run of the whole pipeline")
    p.add_argument("--work-dir", default="reasonclip_demo")
    p.add_argument("--quick", action="store_true", help="fewer steps (used by the tests)")
    p.set_defaults(handler=_demo)
    return parser


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """What a command turns into one line (exit 2): our errors, a full disk inside safetensors (not an OSError)."""
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, FloatingPointError, SafetensorError)


def main(argv: Sequence[str] | None = None) -> int:
    from .entry import quiet_library_notices

    quiet_library_notices()  # before any library is imported: an error is then one line
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        return args.handler(args)
    except bad_input_errors() as error:
        # Bad input gets one line naming the problem, not a traceback.
        print(f"reasonclip {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
