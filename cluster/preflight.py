"""Checks of everything a command reads or writes that can be checked before Ray starts: the model, the
datasets, the adapter, the output folder and the reward model; and the sampling settings, checked by vLLM on a
rollout worker as soon as one is up. Each failure is one `BadInput` naming the input and what is wrong with it,
raised in seconds instead of after a worker dies."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from cluster.config import BadInput, RunConfig, SFTRunConfig
from cluster.evaluation import eval_spec, load_eval_problems
from cluster.spec import rollout_spec
from cluster.tasks.data import data_file, load_problems
from cluster.trackers import check_installed
from rollout.protocols.motif import MotifSpec
from rollout.records import SamplingSpec

# What `from_pretrained` accepts as a hub id: "name" or "owner/name".
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
BUILT_HERE = ("tiny", "toy-warm-start")  # offline models that cluster.models builds on first use
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt")


def check_model(path: str, where: str = "model.path") -> None:
    """A folder with a readable config.json and weights, or a hub id of a valid form (in the local cache when
    the hub is offline)."""
    if path in BUILT_HERE:
        return
    folder = Path(path).expanduser()
    if not folder.exists():
        if not HUB_ID.fullmatch(path):
            raise BadInput(f"{where} {path}: no such folder, and not a hub id (name or owner/name)")
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(path, "config.json"), str):
                raise BadInput(f"{where} {path}: no such folder, and not in the local hub cache while "
                               "HF_HUB_OFFLINE=1")
        return
    if not folder.is_dir():
        raise BadInput(f"{where} {path}: a file, not a model folder")
    config = folder / "config.json"
    if not config.is_file():
        raise BadInput(f"{where} {path}: not a model folder (no config.json)")
    try:
        if not isinstance(json.loads(config.read_text()), dict):
            raise BadInput(f"{where} {path}: config.json does not hold a JSON object")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{where} {path}: config.json is not valid JSON ({e})") from None
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise BadInput(f"{where} {path}: no weights (*.safetensors or *.bin)")


def _tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from safetensors headers, without loading the tensors."""
    from safetensors import safe_open

    shapes = {}
    for file in files:
        with safe_open(str(file), framework="numpy") as f:
            shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
    return shapes


def check_adapter(path: str, model_path: str, max_rank: int, where: str = "eval.adapter") -> None:
    """A PEFT adapter folder whose rank the engine can serve and whose weights fit the base model."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise BadInput(f"{where} {path}: no such folder")
    try:
        adapter = json.loads((folder / "adapter_config.json").read_text())
    except FileNotFoundError:
        raise BadInput(f"{where} {path}: not a PEFT adapter (no adapter_config.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{where} {path}: adapter_config.json is not valid JSON ({e})") from None
    rank = adapter.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise BadInput(f"{where} {path}: adapter_config.json has no LoRA rank 'r'")
    if rank > max_rank:
        raise BadInput(f"{where} {path}: LoRA rank {rank}, above the engine's limit {max_rank} "
                       f"(learner.lora_rank); set learner.lora_rank={rank}")
    weights = sorted(folder.glob("adapter_model*.safetensors"))
    base = sorted(Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else []
    if not weights or not base:
        return  # .bin adapters and hub models: vLLM's own load reports a mismatch
    base_shapes = _tensor_shapes(base)
    for name, shape in _tensor_shapes(weights).items():
        # base_model.model.<module>.lora_A.weight is (r, in); lora_B is (out, r); the module's weight is (out, in)
        module = re.sub(r"^base_model\.model\.", "", name)
        kind = "A" if ".lora_A." in module else "B" if ".lora_B." in module else None
        if kind is None:
            continue
        target = re.sub(r"\.lora_[AB](\.default)?\.weight$", ".weight", module)
        expected = base_shapes.get(target)
        if expected is None or len(expected) != 2:
            raise BadInput(f"{where} {path}: adapts {target}, which the model {model_path} does not have "
                           "(an adapter of another base model?)")
        fits = shape[1] == expected[1] if kind == "A" else shape[0] == expected[0]
        if not fits:
            raise BadInput(f"{where} {path}: {name} has shape {list(shape)}, which does not fit {target} "
                           f"{list(expected)} of {model_path} (an adapter of another base model?)")


def check_writable(folder: str | Path, where: str) -> Path:
    """Create `folder` if needed and prove a file can be written there; returns it resolved."""
    path = Path(folder).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".motif-write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise BadInput(f"{where} {folder}: cannot write there ({e.strerror or e})") from None
    return path


def _requests(spec: MotifSpec, first: tuple, later: tuple, budget: str) -> list[tuple[SamplingSpec, tuple]]:
    """Each kind of request motif_rollout sends under `spec` (round 1, round 2's fan-out, one sample in each
    later round), with the config keys of its n (None: always 1), temperature, top_p and max_tokens; `first`
    and `later` name the first three for round 1 and for the later rounds."""
    requests = [(dataclasses.replace(spec.first_round, n=spec.samples_per_prompt), (*first, budget))]
    if spec.rounds > 1:
        requests.append((dataclasses.replace(spec.continuation, n=spec.continuations), (*later, budget)))
    if spec.rounds > 2 and spec.continuations > 1:
        requests.append((dataclasses.replace(spec.continuation, n=1), (None, *later[1:], budget)))
    return requests


def check_sampling(config: RunConfig, pool, training: bool) -> None:
    """Every kind of request the command sends (training: the rollout; `motif eval`, or training with
    eval.every > 0: the evaluation) checked by vLLM on a rollout worker of `pool` once it has started, so a
    setting vLLM refuses is one line before the first step instead of every request failing on the workers (e.g.
    eval.temperature=0 with eval.n=4: greedy sampling is n=1). Not before Ray starts: only the workers import
    vLLM."""
    e = config.eval
    train = rollout_spec(config, [])  # the rewards only word the system prompts
    requests = []
    if training:
        requests += _requests(train, ("rollout.samples_per_prompt", "rollout.temperature", "rollout.top_p"),
                              ("rollout.continuations", "rollout.continuation_temperature",
                               "rollout.continuation_top_p"), "rollout.max_tokens")
    if not training or e.every > 0:
        # As eval_spec chooses: eval.temperature and eval.top_p in every round, or (None) the training ones.
        fixed = ("eval.temperature", "eval.top_p") if e.temperature is not None else None
        requests += _requests(eval_spec(config, train),
                              ("eval.n", *(fixed or ("rollout.temperature", "rollout.top_p"))),
                              (None, *(fixed or ("rollout.continuation_temperature", "rollout.continuation_top_p"))),
                              "eval.max_tokens" if e.max_tokens else "rollout.max_tokens")
    refusals = pool.sampling_refusals([spec for spec, _ in requests])
    for (spec, keys), refusal in zip(requests, refusals):
        if refusal:
            values = (spec.n, spec.temperature, spec.top_p, spec.max_tokens)
            named = ", ".join(f"{key}={value:g}" for key, value in zip(keys, values) if key)
            raise BadInput(f"{named}: vLLM refuses these sampling settings ({refusal})")


def check_train(config: RunConfig) -> None:
    """The run folder's checkpoints and the `--resume` target are checked by cluster.checkpoint.claim."""
    check_model(config.model.path)
    check_writable(config.output_dir, "output_dir")
    check_installed(config.logging.trackers)
    for term in config.reward.components:
        if term.name == "reward_model":
            check_model(term.model or "", "reward.components[reward_model].model")
    if config.eval.every > 0:
        load_eval_problems(config)  # the held-out set, else read only once every engine and rank started


def check_served(config: RunConfig) -> None:
    """The model and eval.adapter that `motif eval` and `motif serve` load."""
    from rollout.engine import vllm_lora_rank

    check_model(config.model.path)
    if config.eval.adapter:
        model = config.model.path if config.model.path not in BUILT_HERE else ""
        check_adapter(config.eval.adapter, model, vllm_lora_rank(config.learner.lora_rank))
        if config.rollout.merges_adapters:
            from rollout.merged import merge_refusal

            if (refusal := merge_refusal(Path(config.eval.adapter).expanduser())) is not None:
                raise BadInput(f"eval.adapter {config.eval.adapter}: {refusal}; serve it with "
                               "rollout.adapter_serving=lora")


def check_eval(config: RunConfig, output_dir: Path) -> None:
    check_served(config)
    load_eval_problems(config)
    if config.eval.adapter:
        adapter = Path(config.eval.adapter).expanduser().resolve()
        if output_dir == adapter or adapter in output_dir.parents:
            raise BadInput(f"eval.output_dir {output_dir}: inside eval.adapter, whose files must not change; "
                           "choose another folder")
    check_writable(output_dir, "eval.output_dir" if config.eval.output_dir else "output_dir")


def check_traces(config: RunConfig, out: Path) -> None:
    if config.rollout.protocol != "self_correct":
        raise BadInput("motif build-traces samples self-correction episodes: set rollout.protocol=self_correct, got "
                       f"{config.rollout.protocol!r}")
    check_model(config.model.path)
    load_problems(config.data)
    check_writable(str(out.parent), "traces.path" if config.traces.path else "output_dir")


def check_offline(config: SFTRunConfig) -> None:
    """`motif sft` and `motif dpo` (a DPORunConfig is an SFTRunConfig with other data fields)."""
    check_model(config.model.path)
    data_file(config.data.path)
    check_writable(config.output_dir, "output_dir")
