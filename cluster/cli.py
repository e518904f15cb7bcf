"""`motif` command line."""

from __future__ import annotations

import argparse
import sys

from cluster.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="motif", description="MOTIF / GRPO reinforcement learning on Ray + vLLM + DeepSpeed.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="run GRPO / MOTIF training",
        description="Run GRPO / MOTIF training. Settings come from --config, then key=value overrides "
        "(e.g. rollout.rounds=3 learner.learning_rate=1e-5 steps=10).",
    )
    train.add_argument("--config", help="YAML run config (see cluster/configs/)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="override a config key, dotted path")
    build = commands.add_parser("build-tiny-model", help="write the tiny offline Qwen2 model and tokenizer to a folder")
    build.add_argument("path")
    args = parser.parse_args(argv)

    if args.command == "build-tiny-model":
        from learner.tiny_model import build_tiny_model

        print(build_tiny_model(args.path))
        return 0
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"motif: invalid config: {e}", file=sys.stderr)
        return 2
    from cluster.driver import train as run_training

    run_training(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
