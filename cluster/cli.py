"""`motif` command line: train, sft, eval, report, build-tiny-model."""

from __future__ import annotations

import argparse
import sys

from cluster.config import ConfigError, RunConfig, SFTRunConfig, load_config

OVERRIDES_HELP = "override a config key, dotted path (e.g. rollout.rounds=3)"


def _config_command(commands, name: str, help_text: str, description: str):
    command = commands.add_parser(name, help=help_text, description=description)
    command.add_argument("--config", help="YAML config (see cluster/configs/)")
    command.add_argument("--show-logs", action="store_true",
                         help="show vLLM, Ray and DeepSpeed output on the console (default: the run's logs/ folder)")
    command.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="motif", description="MOTIF / GRPO reinforcement learning on Ray + vLLM + DeepSpeed.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = _config_command(commands, "train", "run GRPO / MOTIF training",
                            "Run GRPO / MOTIF training. Settings come from --config, then key=value overrides "
                            "(e.g. rollout.rounds=3 learner.learning_rate=1e-5 steps=10).")
    train.add_argument("--resume", metavar="auto|PATH",
                       help="continue from a checkpoint: 'auto' = the newest in checkpoint.dir (none: start fresh), "
                            "or a checkpoint folder")
    _config_command(commands, "sft", "supervised fine-tuning (warm start) through the same learner",
                    "Fine-tune on chat-formatted JSONL rows {prompt, response} (loss on response tokens only), "
                    "full-parameter (learner.finetune=full) or LoRA; writes OUTPUT_DIR/model.")
    _config_command(commands, "eval", "evaluate a model (optionally with an adapter) on a dataset",
                    "Evaluate through the vLLM rollout worker with the protocol of the train config; the eval "
                    "section sets rounds, max_tokens, temperature, n, the dataset split and eval.adapter. Writes "
                    "samples.jsonl and summary.json to eval.output_dir.")
    report = commands.add_parser("report", help="plot a run's curves to a PNG")
    report.add_argument("run_dir")
    report.add_argument("--out", help="PNG path (default RUN_DIR/report.png)")
    build = commands.add_parser("build-tiny-model", help="write the tiny offline Qwen2 model and tokenizer to a folder")
    build.add_argument("path")
    args = parser.parse_args(argv)

    if args.command == "build-tiny-model":
        from learner.tiny_model import build_tiny_model

        print(build_tiny_model(args.path))
        return 0
    if args.command == "report":
        from cluster.report import plot_run

        try:
            print(plot_run(args.run_dir, args.out))
        except FileNotFoundError as e:
            print(f"motif: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        config = load_config(args.config, args.overrides, SFTRunConfig if args.command == "sft" else RunConfig)
    except ConfigError as e:
        print(f"motif: invalid config: {e}", file=sys.stderr)
        return 2
    if args.show_logs:
        if args.command == "sft":
            config.show_logs = True
        else:
            config.cluster.show_logs = True
    if args.command in ("train", "eval"):
        from cluster.workers import close_local_ray, cluster_address

        if cluster_address(config) is None:
            close_local_ray()
    if args.command == "sft":
        from cluster.sft import run_sft

        run_sft(config)
    elif args.command == "eval":
        from cluster.evaluation import run_eval

        run_eval(config)
    else:
        from cluster.driver import train
        from cluster.workers import PlacementError
        from learner.group import LearnerDied

        try:
            train(config, resume=args.resume)
        except (LearnerDied, PlacementError, FileNotFoundError) as e:
            print(f"motif: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
