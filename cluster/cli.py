"""`motif` command line: train, sft, dpo, eval, serve, build-traces, report, build-tiny-model."""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import traceback

from cluster.config import BadInput, ConfigError, DPORunConfig, RunConfig, SFTRunConfig, load_config

OVERRIDES_HELP = "override a config key, dotted path (e.g. rollout.rounds=3)"
# The commands that train on a file with one learner in this process, without Ray: their config and their run
# (module, function).
OFFLINE = {"sft": (SFTRunConfig, "cluster.sft", "run_sft"), "dpo": (DPORunConfig, "cluster.dpo", "run_dpo")}


def _config_command(commands, name: str, help_text: str, description: str):
    command = commands.add_parser(name, help=help_text, description=description)
    command.add_argument("--config", help="YAML config (see cluster/configs/)")
    command.add_argument("--show-logs", action="store_true",
                         help="show vLLM, Ray and DeepSpeed output on the console (default: the run's logs/ folder)")
    command.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    return command


class Parser(argparse.ArgumentParser):
    """argparse, with the nearest command or option suggested for a misspelt one."""

    def error(self, message: str):
        word = re.search(r"invalid choice: '([^']+)'|unrecognized arguments: (\S+)", message)
        if word:
            typed = word.group(1) or word.group(2)
            known = [c for a in self._actions for c in (a.choices or {} if a.nargs == argparse.PARSER else a.option_strings)]
            close = difflib.get_close_matches(typed, known, n=1)
            if close:
                message += f" (did you mean {close[0]}?)"
        super().error(message)


def _parse(parser: argparse.ArgumentParser, commands, argv: list[str]) -> argparse.Namespace:
    """Overrides may stand before and after options (`train a=1 --resume auto b=2`): the command's own parser
    reads its arguments intermixed, which argparse cannot do through a subparser."""
    index = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    if index == len(argv) or argv[index] not in commands.choices:
        return parser.parse_args(argv)  # help, or the error that names an unknown command
    name = argv[index]
    return commands.choices[name].parse_intermixed_args(argv[index + 1 :], argparse.Namespace(command=name))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = Parser(prog="motif", description="MOTIF / GRPO reinforcement learning on Ray + vLLM + DeepSpeed.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = _config_command(commands, "train", "run GRPO / MOTIF training",
                            "Run GRPO / MOTIF training. Settings come from --config, then key=value overrides "
                            "(e.g. rollout.rounds=3 learner.learning_rate=1e-5 steps=10).")
    train.add_argument("--resume", metavar="auto|PATH",
                       help="continue from a checkpoint: 'auto' = the newest in checkpoint.dir (none: start fresh), "
                            "or a checkpoint folder")
    _config_command(commands, "sft", "supervised fine-tuning (warm start) through the same learner",
                    "Fine-tune on chat-formatted JSONL rows {prompt, response} (loss on response tokens only), "
                    "full-parameter (learner.finetune=full) or LoRA; writes OUTPUT_DIR/model.")
    _config_command(commands, "dpo", "preference optimisation (DPO) through the same learner",
                    "Train a LoRA adapter on JSONL rows {prompt, chosen, rejected} with the DPO loss against the "
                    "model with the adapter off (learner.dpo_beta, learner.dpo_label_smoothing); writes "
                    "OUTPUT_DIR/adapter.")
    _config_command(commands, "eval", "evaluate a model (optionally with an adapter) on a dataset",
                    "Evaluate through the vLLM rollout worker with the protocol of the train config; the eval "
                    "section sets rounds, max_tokens, temperature, n, the dataset split and eval.adapter. Writes "
                    "samples.jsonl and summary.json to eval.output_dir.")
    serve = _config_command(commands, "serve", "serve the protocol behind an OpenAI-compatible endpoint",
                            "Answer /v1/chat/completions by running the config's protocol (rollout.protocol, "
                            "eval.rounds, eval.max_rounds, eval.adapter, sampled as `motif eval` samples) on "
                            "the user's last message; the final turn is the answer, every turn is in motif_turns.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs a key)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="the key every /v1 request must send as 'Authorization: Bearer KEY' "
                       "(default: $MOTIF_API_KEY)")
    serve.add_argument("--model-name", help="the model id clients ask for (default: the adapter folder's name, "
                       "else model.path)")
    _config_command(commands, "build-traces", "stage 1 of self-correction: SFT traces from the model's own samples",
                    "Sequential rejection sampling with rollout.protocol=self_correct: first attempts, verdicts "
                    "until one agrees with the grader, corrections until one is right. Writes the kept traces as "
                    "SFT rows for `motif sft` (traces.path) and the mix beside them.")
    report = commands.add_parser("report", help="plot a run's curves to a PNG")
    report.add_argument("run_dir")
    report.add_argument("--out", help="PNG path (default RUN_DIR/report.png)")
    build = commands.add_parser("build-tiny-model", help="write the tiny offline Qwen2 model and tokenizer to a folder")
    build.add_argument("path")
    # `motif paths`: where an installed copy keeps its shipped files (e.g. `$(motif paths launch)/ray-node.sh`).
    paths = commands.add_parser("paths", help="print where the shipped configs, datasets, launch scripts and the "
                                "model cache are")
    paths.add_argument("what", nargs="?", choices=["configs", "datasets", "launch", "constraints", "cache"],
                       help="print only this path")
    args = _parse(parser, commands, argv)

    if args.command == "paths":
        from cluster.models import shipped_paths

        found = shipped_paths()
        print(*([found[args.what]] if args.what else [f"{name}: {path}" for name, path in found.items()]), sep="\n")
        return 0
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
        config = load_config(args.config, args.overrides, OFFLINE.get(args.command, (RunConfig,))[0],
                             purpose="eval" if args.command in ("eval", "serve", "build-traces") else "train")
    except ConfigError as e:
        print(f"motif: invalid config: {e}", file=sys.stderr)
        return 2
    if args.show_logs:
        if args.command in OFFLINE:
            config.show_logs = True
        else:
            config.cluster.show_logs = True
    try:
        return _run(args, config)
    except BadInput as e:
        return _fail(e, 2)
    except Exception as e:
        if isinstance(e, _run_failures()):
            return _fail(e, 1)
        raise


def _run_failures() -> tuple[type[Exception], ...]:
    """Errors that end a run with a message of their own (what failed, and how to resume)."""
    from cluster.loop.train import RunStalled
    from cluster.evaluation import EvalFailed
    from cluster.workers import PlacementError
    from learner.group import LearnerDied
    from rollout.common import WorkerStartFailed

    return LearnerDied, PlacementError, WorkerStartFailed, EvalFailed, RunStalled


def _fail(error: Exception, code: int) -> int:
    """One line naming what went wrong; the traceback only when asked for (MOTIF_DEBUG=1)."""
    if os.environ.get("MOTIF_DEBUG"):
        traceback.print_exception(error)
    print(f"motif: {error}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace, config) -> int:
    from cluster import preflight

    if args.command in OFFLINE:
        import importlib

        preflight.check_offline(config)
        _, module, run = OFFLINE[args.command]
        getattr(importlib.import_module(module), run)(config)
        return 0
    from cluster.workers import close_local_ray, cluster_address

    if args.command == "serve":  # one in-process engine: no Ray
        from cluster.serve import run_serve, served_key

        key = served_key(args.host, args.api_key)  # before the model is read: a refusal is immediate
        preflight.check_served(config)
        run_serve(config, args.host, args.port, key, args.model_name)
        return 0
    if cluster_address(config) is None:
        close_local_ray()
    if args.command == "eval":
        from cluster.evaluation import eval_folder, run_eval

        preflight.check_eval(config, eval_folder(config))
        run_eval(config)
    elif args.command == "build-traces":
        from cluster.traces import run_build_traces, traces_path

        preflight.check_traces(config, traces_path(config))
        run_build_traces(config)
    else:
        preflight.check_train(config)
        from cluster.loop.train import train

        train(config, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
