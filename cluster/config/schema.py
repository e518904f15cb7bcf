"""The schema of a run's config: one dataclass per section, each validating its own keys. The rules that
cross sections live in cluster/config/rules.py. A field marked RESUME fixes what a run samples, or in what
order: a resume with another value is refused (cluster/checkpoint.py); LAYOUT (learner/config.py) marks how
the learner's state lies on disk, checked by its own rule."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cluster.config.errors import ConfigError
from learner.config import RESUME, LearnerConfig
from rewards.motivation import NO_MOTIVATION, check_motivation
from rewards.registry import RewardTerm, check_terms
from rollout.protocols import PROTOCOLS, protocol_name


def validate_learner(learner: LearnerConfig) -> None:
    try:
        learner.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from e


@dataclass(frozen=True)
class ToyConfig:
    """`data.toy`: the synthetic task (cluster/tasks/toy_task.py)."""

    operations: int = 6  # steps in a full solution: the difficulty knob
    # A mix of difficulties: each problem has operations..max_operations steps, drawn uniformly; None: all have
    # `operations` (stopping early is worth learning only when some questions are easier than others)
    max_operations: int | None = None
    steps_per_round: int = 3  # steps a MOTIF round before the last covers in the warm-start traces
    seed: int = 0


@dataclass
class WarmStartConfig:
    """`model.path: toy-warm-start`: the tiny model SFT'd on imperfect toy-task traces (data.toy), built on
    first use and cached under `dir` by these settings."""

    dir: str | None = None  # None: <cache>/warm-start, one per user (cluster.models.cache_dir)
    problems: int = 2000  # train problems, each solved once per entry of `rounds`
    # Difficulties (toy operations) of the traces, problems split evenly; None: data.toy.operations. One warm
    # start for several difficulties starts them all from the same model (the learning grid's).
    operations: list[int] | None = None
    rounds: list[int] = field(default_factory=lambda: [1, 3])  # protocols to imitate: 1 = single round
    error_rate: float = 0.06  # chance that a written step is wrong: leaves room for RL
    # Also imitate self-correction episodes (rollout.protocol=self_correct), whose verdicts are right with this
    # probability; None: none
    verdict_accuracy: float | None = None
    # Also imitate adaptive-rounds chains (rollout.protocol=markovian) of at most this many rounds, each round
    # covering steps_per_round steps and the one that reaches the end answering; None: none
    markovian_rounds: int | None = None
    # Also imitate RLMT's single rounds (rollout.response_format think_response and response): the steps thought
    # through in <think>, then the boxed value; and that value alone
    rlmt: bool = False
    steps: int = 1200  # 800 left some warm starts under-trained (greedy 0.93), where RL then gained nothing
    batch_size: int = 32
    learning_rate: float = 3.0e-3
    seed: int = 0

    def validate(self) -> None:
        mixed = self.operations
        if mixed is not None and (not mixed or not all(1 <= d <= 26 for d in mixed)):
            raise ConfigError(f"model.warm_start.operations must list toy difficulties in 1..26, got {mixed}")
        if self.markovian_rounds is not None and self.markovian_rounds < 1:
            raise ConfigError(f"model.warm_start.markovian_rounds must be >= 1, got {self.markovian_rounds}")
        if self.verdict_accuracy is not None and not 0 <= self.verdict_accuracy <= 1:
            raise ConfigError(f"model.warm_start.verdict_accuracy must be in [0, 1], got {self.verdict_accuracy}")


@dataclass
class ModelConfig:
    # A hub id or local folder loaded with from_pretrained; "tiny" builds the offline tiny Qwen2 model;
    # "toy-warm-start" builds (once) the tiny model SFT'd on the toy task.
    path: str = field(default="tiny", metadata=RESUME)
    tiny_model_dir: str | None = None  # None: <cache>/tiny-model-<code digest>, one per user (cluster.models.cache_dir)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig, metadata=RESUME)

    def validate(self) -> None:
        self.warm_start.validate()


@dataclass
class DataConfig:
    # A shipped dataset by name (gsm8k, math500, aime24, toy: see cluster/tasks/data.py), a local .jsonl file,
    # or a hub dataset id (with `subset`) for machines that reach a hub.
    path: str = "gsm8k"
    subset: str | None = None
    split: str = "train"
    question_field: str | None = None  # None: the named dataset's field, else "question"
    answer_field: str | None = None  # None: the named dataset's field, else "answer"
    # "gsm8k": the text after '####'; "plain": the field as is; None: the named dataset's, else the text
    # after '####' when there is one
    gold_format: str | None = None
    limit: int | None = None  # the toy task generates this many problems (default 1000)
    shuffle_seed: int = 0
    toy: ToyConfig = field(default_factory=ToyConfig)

    def validate(self) -> None:
        if self.gold_format not in (None, "gsm8k", "plain"):
            raise ConfigError(f"data.gold_format must be 'gsm8k' or 'plain', got {self.gold_format!r}")


@dataclass
class RolloutConfig:
    # How an episode's turns are built (rollout.protocols.PROTOCOLS): "motif", "single", "self_correct" or
    # "markovian";
    # None: the one `rounds` implies (1: single, more: motif)
    protocol: str | None = field(default=None, metadata=RESUME)
    # The FORMATS entry the response is asked for, where the protocol offers a choice (single: reasoning_answer,
    # think_response for RLMT, response without thinking); None: the protocol's own
    response_format: str | None = field(default=None, metadata=RESUME)
    prompts_per_step: int = field(default=2, metadata=RESUME)  # B
    samples_per_prompt: int = field(default=4, metadata=RESUME)  # m
    continuations: int = field(default=2, metadata=RESUME)  # k
    rounds: int = field(default=2, metadata=RESUME)  # R
    temperature: float = field(default=1.0, metadata=RESUME)
    continuation_temperature: float = field(default=0.8, metadata=RESUME)
    # Round 1 must sample the full distribution the learner scores: only 1 is accepted.
    top_p: float = field(default=1.0, metadata=RESUME)
    continuation_top_p: float = field(default=1.0, metadata=RESUME)
    max_tokens: int = field(default=64, metadata=RESUME)  # per round
    continuation_policy: str = field(default="current", metadata=RESUME)
    # How workers serve each pushed adapter: "lora" (vLLM's LoRA, one request per version), "merged" (merged into
    # the base weights and reloaded in place: twice as fast on CPU, rollout/merged.py; the base model cannot be
    # sampled beside it), or "auto": merged on CPU, lora on GPU or with continuation_policy=frozen_base
    adapter_serving: str = "auto"
    max_attempts: int = field(default=2, metadata=RESUME)  # self_correct: attempts per episode, each judged
    # markovian: rounds a chain may run before it must answer, and what a round that did not answer hands on
    # ("progress": its progress note; "tokens": its last carry_tokens tokens verbatim)
    max_rounds: int = field(default=4, metadata=RESUME)
    carry: str = field(default="progress", metadata=RESUME)
    carry_tokens: int = field(default=32, metadata=RESUME)
    # DAPO's dynamic sampling: a group whose episodes all scored alike is dropped and batches of B fresh prompts
    # are sampled, at most dynamic_sampling_max_refills a step, until B groups that differ are kept; past the
    # bound the step trains the groups it has (0: drop the groups, sample nothing more)
    dynamic_sampling: bool = field(default=False, metadata=RESUME)
    dynamic_sampling_max_refills: int = field(default=3, metadata=RESUME)
    # S: the rollouts of the next S steps run while a step trains (cluster/loop/overlap.py); a rollout starts only
    # once its adapter would be at most S versions behind the learner's when its step trains. 0: one step after
    # another, each sampling under the adapter the previous one pushed
    max_staleness: int = 0
    max_model_len: int = 1024
    # GPU: the share of the GPU's memory the engine may use (weights + KV cache); None: 0.9, or 0.5 when
    # colocated with a learner rank. CPU: kv_cache_mb is the KV cache (None: 64); on GPU it overrides the share.
    gpu_memory_utilization: float | None = None
    kv_cache_mb: int | None = None
    enforce_eager: bool | None = None  # None: CUDA graphs on GPU, eager on CPU
    enable_prefix_caching: bool = True  # the k continuations of a sample share their prompt
    # vLLM's "auto" runs a float32 checkpoint in bfloat16 on CPU; "float32" matches the CPU learner exactly.
    dtype: str = field(default="auto", metadata=RESUME)
    # vLLM engines; each round's requests are split across them
    num_workers: int = field(default=1, metadata=RESUME)
    num_cpus: float = 1  # per worker
    num_gpus: float = 0  # per worker; > 0 requires CUDA (vLLM's GPU build)
    tensor_parallel_size: int = 1  # GPUs per engine
    # Sequences an engine runs at once (vLLM's max_num_seqs; None: vLLM's default for the platform, >= 256).
    max_num_seqs: int | None = None
    # How long one request may take. A worker's call (its share of a round) runs its sequences in waves of
    # max_num_seqs (256 when unset), so the call's deadline is this times its number of waves; a worker past it
    # is replaced and the call retried. A fresh worker gets STARTUP_GRACE_S more for its engine to start; an
    # adapter push gets this long.
    request_timeout_s: float = 600.0
    seed: int = field(default=0, metadata=RESUME)

    @property
    def merges_adapters(self) -> bool:
        """Whether workers serve adapters merged into the base weights (adapter_serving, with auto resolved)."""
        if self.adapter_serving == "auto":
            return self.num_gpus == 0 and self.continuation_policy == "current"
        return self.adapter_serving == "merged"

    def validate(self, training: bool = True) -> None:
        """training=False (`motif eval`): without the rules that only concern the learner."""
        r = self
        for name in ("temperature", "continuation_temperature"):
            if training and not getattr(r, name) > 0:
                raise ConfigError(f"rollout.{name} must be > 0 (the learner divides logits by it), got {getattr(r, name)}")
        if training and r.top_p != 1:
            raise ConfigError(f"rollout.top_p must be 1, got {r.top_p}: the learner's logprobs are of the full "
                              "distribution, so round-1 samples must come from it (continuation_top_p may be lower)")
        if not 0 < r.continuation_top_p <= 1:
            raise ConfigError(f"rollout.continuation_top_p must be in (0, 1], got {r.continuation_top_p}")
        for name in ("prompts_per_step", "samples_per_prompt", "continuations", "rounds", "max_tokens"):
            if getattr(r, name) < 1:
                raise ConfigError(f"rollout.{name} must be >= 1, got {getattr(r, name)}")
        protocol = protocol_name(r.protocol, r.rounds)
        if protocol not in PROTOCOLS:
            raise ConfigError(f"rollout.protocol {r.protocol!r} is not one of {', '.join(sorted(PROTOCOLS))}")
        try:
            PROTOCOLS[protocol].check(r)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if r.response_format is not None and PROTOCOLS[protocol].response_format(r) != r.response_format:
            raise ConfigError(f"rollout.response_format={r.response_format} is not one rollout.protocol={protocol} "
                              f"writes (its: {PROTOCOLS[protocol].response_format(r)}; single offers a choice)")
        if training and r.samples_per_prompt < 2:
            raise ConfigError("rollout.samples_per_prompt must be >= 2: GRPO compares samples within a group")
        if r.continuation_policy not in ("current", "frozen_base"):
            raise ConfigError(f"rollout.continuation_policy must be 'current' or 'frozen_base', got {r.continuation_policy!r}")
        if r.adapter_serving not in ("auto", "lora", "merged"):
            raise ConfigError(f"rollout.adapter_serving must be 'auto', 'lora' or 'merged', got {r.adapter_serving!r}")
        if r.adapter_serving == "merged" and r.continuation_policy != "current":
            raise ConfigError(f"rollout.adapter_serving=merged cannot sample the base model beside the adapter, which "
                              f"rollout.continuation_policy={r.continuation_policy} does; use lora (or auto)")
        if r.max_tokens >= r.max_model_len:
            raise ConfigError(f"rollout.max_tokens ({r.max_tokens}) must be below rollout.max_model_len ({r.max_model_len})")
        if r.num_workers < 1 or r.tensor_parallel_size < 1 or r.num_cpus <= 0 or r.num_gpus < 0:
            raise ConfigError("rollout.num_workers and tensor_parallel_size must be >= 1, num_cpus > 0, num_gpus >= 0")
        if r.tensor_parallel_size > 1 and r.num_gpus < r.tensor_parallel_size:
            raise ConfigError(f"rollout.tensor_parallel_size={r.tensor_parallel_size} needs rollout.num_gpus >= "
                              f"{r.tensor_parallel_size} per worker (got {r.num_gpus})")
        if r.gpu_memory_utilization is not None and not 0 < r.gpu_memory_utilization <= 1:
            raise ConfigError(f"rollout.gpu_memory_utilization must be in (0, 1], got {r.gpu_memory_utilization}")
        if r.kv_cache_mb is not None and r.kv_cache_mb < 1:
            raise ConfigError(f"rollout.kv_cache_mb must be >= 1, got {r.kv_cache_mb}")
        if r.max_num_seqs is not None and r.max_num_seqs < 1:
            raise ConfigError(f"rollout.max_num_seqs must be >= 1, got {r.max_num_seqs}")
        if r.max_staleness < 0:
            raise ConfigError(f"rollout.max_staleness must be >= 0 (0: synchronous), got {r.max_staleness}")
        if r.dynamic_sampling_max_refills < 0:
            raise ConfigError(f"rollout.dynamic_sampling_max_refills must be >= 0, got {r.dynamic_sampling_max_refills}")
        if not r.request_timeout_s > 0:
            raise ConfigError(f"rollout.request_timeout_s must be > 0, got {r.request_timeout_s}")


def _default_reward_components() -> list[RewardTerm]:
    return [RewardTerm("format", weight=0.5), RewardTerm("accuracy", weight=1.0)]


# reward.motivation as configs wrote it before it had modes.
MOTIVATION_BEFORE_MODES = {True: "consistent", False: NO_MOTIVATION}


def motivation_mode(value: str | bool) -> str:
    return MOTIVATION_BEFORE_MODES[value] if isinstance(value, bool) else value


@dataclass
class RewardConfig:
    # Registry names (format, accuracy, reward_model, overlong) or path/to/file.py:function, each with a weight.
    components: list[RewardTerm] = field(default_factory=_default_reward_components)
    # MeRF: what the system prompt tells of the reward (rewards.motivation): none, consistent (the components'
    # descriptions and weights), mismatched, misleading, or a text of your own; true/false read as
    # consistent/none, and are held as those names.
    motivation: str | bool = NO_MOTIVATION

    def __post_init__(self):
        self.motivation = motivation_mode(self.motivation)

    @property
    def motivated(self) -> bool:
        return self.motivation != NO_MOTIVATION

    def validate(self) -> None:
        try:
            check_terms(self.components)
            check_motivation(self.motivation, [t.weight for t in self.components])
        except ValueError as e:
            raise ConfigError(str(e)) from e


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray's placement group strategies


@dataclass
class ClusterConfig:
    address: str | None = None  # None: start a local Ray; "auto" or "ray://host:port": join that cluster
    learner_num_cpus: float = 1  # per learner rank
    learner_num_gpus: float = 0  # per learner rank; > 0 requires CUDA (NCCL, bf16)
    # torch threads per learner rank; None: a local run splits the cores between the ranks, a cluster gives
    # each rank its learner_num_cpus
    learner_threads: int | None = None
    # Rollout workers and learner ranks in one placement group: "separate" bundles, or "colocate" (rank i shares
    # worker i's bundle and GPU; they take turns in synchronous training)
    placement: str = "separate"
    # How Ray lays the placement group's bundles out on nodes: PACK (as few nodes as possible), SPREAD (distinct
    # nodes where it can, e.g. one colocated worker + rank per node; a dead node's bundles move to the others),
    # STRICT_PACK (one node) or STRICT_SPREAD (one bundle per node, never more: a dead node's bundles wait for a
    # new node)
    placement_strategy: str = "PACK"
    ready_timeout_s: float = 600.0  # actors not placed and started by then: an error naming what is missing
    # One learner call (an update, an export, a checkpoint) not finished by then: the ranks are taken for hung
    # (a collective waiting on a lost peer never returns) and the run stops with the resume command.
    learner_timeout_s: float = 3600.0
    # vLLM, Ray and DeepSpeed output on the console too (`--show-logs`); otherwise it goes to OUTPUT_DIR/logs/
    show_logs: bool = False
    # Driver environment variables (fnmatch patterns) that the run's actors receive; whatever is forwarded is
    # readable by anyone with access to the cluster, so secrets such as HF_TOKEN travel only when named here.
    forward_env: list[str] = field(default_factory=lambda: [
        "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT", "TRANSFORMERS_OFFLINE",
        "MOTIF_CACHE", "VLLM_CPU_*", "VLLM_LOGGING_LEVEL", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_ALLOW_LONG_MAX_MODEL_LEN",
    ])

    def validate(self) -> None:
        c = self
        if not c.ready_timeout_s > 0 or not c.learner_timeout_s > 0:
            raise ConfigError("cluster.ready_timeout_s and cluster.learner_timeout_s must be > 0")
        if c.learner_num_cpus <= 0 or c.learner_num_gpus < 0:
            raise ConfigError("cluster.learner_num_cpus must be > 0 and learner_num_gpus >= 0")
        if c.placement not in ("separate", "colocate"):
            raise ConfigError(f"cluster.placement must be 'separate' or 'colocate', got {c.placement!r}")
        if c.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ConfigError(f"cluster.placement_strategy must be one of {', '.join(PLACEMENT_STRATEGIES)}, got "
                              f"{c.placement_strategy!r}")


@dataclass
class CheckpointConfig:
    every: int = 10  # steps between checkpoints (0: only at the end); always one at the end
    keep: int = 2  # newest checkpoints kept
    dir: str | None = None  # None: <output_dir>/checkpoints

    def validate(self) -> None:
        if self.every < 0 or self.keep < 1:
            raise ConfigError("checkpoint.every must be >= 0 and checkpoint.keep >= 1")


@dataclass
class EvalConfig:
    every: int = 0  # during training: evaluate at step 0, every `every` steps and at the end; 0: never
    path: str | None = None  # dataset (None: data.path); fields and the toy settings come from `data`
    split: str = "test"
    limit: int | None = 64  # questions
    rounds: int | None = None  # R (None: rollout.rounds)
    max_rounds: int | None = None  # markovian (None: rollout.max_rounds); more than trained is allowed
    max_tokens: int | None = None  # per round (None: rollout.max_tokens)
    # None: the training temperatures and top-p (round 1: rollout.temperature, later rounds:
    # rollout.continuation_temperature), so held-out pass@1 compares with reward/accuracy; a number (0: greedy)
    # applies to every round, with eval.top_p
    temperature: float | None = None
    top_p: float = 1.0
    n: int = 4  # samples per question
    adapter: str | None = None  # `motif eval`: a PEFT adapter folder to evaluate the model with
    output_dir: str | None = None  # `motif eval`: where samples.jsonl and summary.json go (None: <output_dir>/eval)
    # Samples whose generation failed are left out of the summary; above this share there is no summary at all.
    max_failed_fraction: float = 0.05

    def validate(self) -> None:
        e = self
        if not 0 < e.top_p <= 1:
            raise ConfigError(f"eval.top_p must be in (0, 1], got {e.top_p}")
        if (e.temperature is not None and e.temperature < 0) or e.n < 1 or e.every < 0 or (e.rounds is not None and e.rounds < 1):
            raise ConfigError("eval: temperature must be >= 0, n and rounds >= 1, every >= 0")
        if e.max_rounds is not None and e.max_rounds < 1:
            raise ConfigError(f"eval.max_rounds must be >= 1, got {e.max_rounds}")
        if not 0 <= e.max_failed_fraction < 1:
            raise ConfigError(f"eval.max_failed_fraction must be in [0, 1), got {e.max_failed_fraction}")


@dataclass
class TracesConfig:
    """`motif build-traces`: stage 1 of self-correction (cluster/traces.py), on rollout.protocol=self_correct."""

    path: str | None = None  # the SFT JSONL it writes (None: <output_dir>/traces.jsonl); a summary beside it
    max_tries: int = 4  # samples per search: a verdict that agrees with the grader, a right correction, a "correct"

    def validate(self) -> None:
        if self.max_tries < 1:
            raise ConfigError(f"traces.max_tries must be >= 1, got {self.max_tries}")


# The trackers cluster/trackers.py registers, one class each (the config knows nothing above it).
TRACKER_NAMES = ("tensorboard", "wandb", "mlflow")


@dataclass
class LoggingConfig:
    """Where the metrics go beside metrics.jsonl (cluster/trackers.py)."""

    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # of TRACKER_NAMES
    project: str = "motif-rl"  # the W&B project and the MLflow experiment

    def validate(self) -> None:
        if any(t not in TRACKER_NAMES for t in self.trackers) or len(set(self.trackers)) < len(self.trackers):
            raise ConfigError(f"logging.trackers must list distinct names of {', '.join(TRACKER_NAMES)}, got "
                              f"{self.trackers}")
        if not self.project.strip():
            raise ConfigError("logging.project must not be empty")


@dataclass
class RunConfig:
    steps: int = 4
    output_dir: str = "runs/demo"
    max_skipped_steps: int = 3  # steps in a row with nothing to learn from (all failed or too long) end the run
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig, metadata=RESUME)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig, metadata=RESUME)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    traces: TracesConfig = field(default_factory=TracesConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self, training: bool = True) -> None:
        """Each section's own rules, then the rules across sections (cluster.config.rules). training=False
        (`motif eval`): without the rules that only concern the learner."""
        if self.steps < 1 or self.max_skipped_steps < 1:
            raise ConfigError(f"steps and max_skipped_steps must be >= 1, got {self.steps}, {self.max_skipped_steps}")
        self.model.validate()
        self.rollout.validate(training)
        self.eval.validate()
        self.cluster.validate()
        self.checkpoint.validate()
        self.traces.validate()
        self.logging.validate()
        self.data.validate()
        self.reward.validate()
        validate_learner(self.learner)
        from cluster.config.rules import check_run

        check_run(self, training)


def _sft_learner() -> LearnerConfig:
    return LearnerConfig(finetune="full", learning_rate=1e-4, mini_batch_size=32, micro_batch_size=32)


@dataclass
class SFTDataConfig:
    # JSONL rows {"prompt": [chat messages] or a user message, "response": text}
    path: str = ""
    prompt_field: str = "prompt"
    response_field: str = "response"
    limit: int | None = None


@dataclass
class SFTRunConfig:
    """`motif sft`: supervised fine-tuning through the same DeepSpeed learner that GRPO uses."""

    output_dir: str = "runs/sft"  # the model folder goes to <output_dir>/model
    epochs: int = 1
    steps: int | None = None  # optimizer steps; None: `epochs` passes over the data
    max_length: int = 1024  # prompt + response tokens; longer rows are skipped and counted
    seed: int = 0
    show_logs: bool = False  # DeepSpeed and transformers output on the console too; otherwise OUTPUT_DIR/logs/
    model: ModelConfig = field(default_factory=ModelConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    # SFT decays the learning rate linearly to 0 over the run unless learner.decay_steps is set.
    learner: LearnerConfig = field(default_factory=_sft_learner)

    def validate(self) -> None:
        if not self.data.path:
            raise ConfigError("data.path: give the JSONL file")
        if self.epochs < 1 or (self.steps is not None and self.steps < 1) or self.max_length < 2:
            raise ConfigError("epochs and steps must be >= 1, max_length >= 2")
        if self.learner.num_ranks != 1:
            raise ConfigError(f"learner.num_ranks must be 1 here (one learner in this process), got "
                              f"{self.learner.num_ranks}")
        validate_learner(self.learner)


@dataclass
class DPODataConfig:
    # JSONL rows {"prompt": [chat messages] or a user message, "chosen": text, "rejected": text}
    path: str = ""
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    limit: int | None = None


@dataclass
class DPORunConfig(SFTRunConfig):
    """`motif dpo`: preference optimisation through the same learner, against the model with the adapter off;
    the run's keys are `motif sft`'s, `learner.mini_batch_size` counting pairs."""

    output_dir: str = "runs/dpo"  # the adapter goes to <output_dir>/adapter
    data: DPODataConfig = field(default_factory=DPODataConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)  # LoRA; 8 pairs a step, 2 per forward

    def validate(self) -> None:
        super().validate()
        if self.learner.finetune != "lora":
            raise ConfigError("learner.finetune must be lora for dpo: the reference is the model with the adapter off")


def resume_field_names(kind: type | None = None, mark: dict = RESUME, prefix: str = "") -> tuple[str, ...]:
    """The dotted names of the fields marked `mark` (learner.config's RESUME or LAYOUT), in schema order."""
    names = []
    for f in dataclasses.fields(kind or RunConfig):
        name = prefix + f.name
        if f.metadata.get("resume") == mark["resume"]:
            names.append(name)
        elif isinstance(f.type, str) and f.type in SECTIONS:
            names += resume_field_names(SECTIONS[f.type], mark, name + ".")
    return tuple(names)


SECTIONS = {cls.__name__: cls for cls in (ModelConfig, WarmStartConfig, DataConfig, RolloutConfig, LearnerConfig,
                                          RewardConfig, ClusterConfig, CheckpointConfig, EvalConfig)}
