"""Several learner ranks train as one: a W-rank step equals the 1-rank step on the same batch (ZeRO 0, and
ZeRO 3 with every tensor really partitioned), with shards so unequal that the ranks hold different numbers of
samples, micro-batches and logprob chunks, and a mini-batch too small to give every rank a sample; with
truncated importance sampling against given behaviour logprobs."""

from __future__ import annotations

import random

import pytest

from cluster.config import load_config
from learner.batching import plan_batch
from learner.records import TrainSample

# float32 on CPU: ranks sum gradients in another order than one rank does. The losses and the gradient norm
# agree to 1e-5 relative; the weights are compared relative to the size of the update: 1e-3 of it. Adam's
# first steps move a weight by about lr * g / (|g| + eps), which turns rounding in a gradient near eps (1e-8)
# into a visible difference in that weight, and in every later loss: large advantages and no clipping (which
# would scale the gradient back to norm 1) keep every gradient far above eps (Adam is otherwise scale-free).
METRIC_TOLERANCE = 1e-5
UPDATE_TOLERANCE = 1e-3
ADVANTAGE_SCALE = 1.0e4
# A rank left waiting in a collective that another rank never joins hangs: the test fails after this instead.
CALL_TIMEOUT_S = 300
OVERRIDES = ["learner.mini_batch_size=6", "learner.micro_batch_size=2", "learner.logprob_chunk_tokens=16",
             "learner.zero3_param_persistence_threshold=0", "learner.learning_rate=0.01", "learner.kl_coef=0.05",
             "learner.max_grad_norm=1.0e+6", "learner.tis_cap=2", "cluster.learner_threads=1"]


def batch(seed: int = 0, count: int = 7) -> list[TrainSample]:
    rng = random.Random(seed)
    return [TrainSample([rng.randrange(3, 500) for _ in range(rng.randint(3, 9))],
                        [rng.randrange(3, 500) for _ in range(rng.randint(2, 12))], rng.gauss(0, 1))
            for _ in range(count)]


def unequal_batch() -> list[TrainSample]:
    """One long sample among short ones: balanced by tokens, one rank gets it alone (one micro-batch of 5 logprob
    chunks), the other the 5 short ones (3 micro-batches of 2 chunks); then a 1-sample mini-batch."""
    samples = batch(count=7)
    rng = random.Random(1)
    samples[2] = TrainSample([rng.randrange(3, 500) for _ in range(8)], [rng.randrange(3, 500) for _ in range(60)], 1.0)
    # "vLLM's" logprobs scattered about the random model's (about -log 512): truncated importance sampling caps
    # some tokens' weights, and rollout/logprob_diff is reduced over the ranks with the other metrics.
    return [TrainSample(s.prompt_ids, s.completion_ids, s.advantage * ADVANTAGE_SCALE,
                        behaviour_logprobs=[-6.2 + rng.gauss(0, 1) for _ in s.completion_ids]) for s in samples]


def test_shard_plan_covers_every_sample_once_with_matching_calls():
    samples = batch(count=7)
    local, plans = plan_batch(samples, ranks=3, mini_batch_size=4, micro_batch_size=1)
    assert sorted(map(id, (s for part in local for s in part))) == sorted(map(id, samples))
    for mini in zip(*plans):  # every rank makes as many micro-steps per mini-batch, and agrees on its tokens
        assert len({len(micros) for micros, _ in mini}) == 1 and len({size for _, size in mini}) == 1
    assert [size.sequences for _, size in plans[0]] == [4, 3]
    assert [size.tokens for _, size in plans[0]] == [sum(len(s.completion_ids) for s in samples[:4]),
                                                  sum(len(s.completion_ids) for s in samples[4:])]
    # the 3-sample mini-batch over 3 ranks and the balance by tokens within the 4-sample one
    assert all(len([i for m in micros for i in m]) >= 1 for plan in plans for micros, _ in plan)


def zero3_state(learner):
    """On one rank (through __ray_call__): whether every weight is partitioned, and the adapter gathered."""
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    from peft import get_peft_model_state_dict

    model = learner.engine.module
    partitioned = all(not p.ds_persist and p.ds_status == ZeroParamStatus.NOT_AVAILABLE and p.numel() == 0
                      and 0 < p.ds_tensor.numel() < p.ds_numel for p in model.parameters())
    with deepspeed.zero.GatheredParameters([p for p in model.parameters() if p.requires_grad]):
        return partitioned, {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}


def one_step(tiny_model, ranks: int, zero_stage: int):
    import ray
    from safetensors.torch import load

    from cluster.workers import start_learner_group

    config = load_config("tests/configs/smoke.yaml", [f"learner.num_ranks={ranks}", f"learner.zero_stage={zero_stage}",
                                                      *OVERRIDES])
    group = start_learner_group(config, tiny_model, "")
    try:
        group.wait_ready(CALL_TIMEOUT_S)
        local, plans = plan_batch(unequal_batch(), ranks, config.learner.mini_batch_size, config.learner.micro_batch_size)
        if ranks == 2:
            assert sorted(map(len, local)) == [2, 5], "the shards are not as unequal as the test means"
        refs = [rank.train_step.remote(part, plan) for rank, part, plan in zip(group.ranks, local, plans)]
        metrics = ray.get(refs, timeout=CALL_TIMEOUT_S)[0]
        _, payload = ray.get([rank.adapter_payload.remote(1) for rank in group.ranks], timeout=CALL_TIMEOUT_S)[0]
        weights = load(payload.files["adapter_model.safetensors"])
        states = ray.get([rank.__ray_call__.remote(zero3_state) for rank in group.ranks], timeout=CALL_TIMEOUT_S) \
            if zero_stage == 3 else None
    finally:
        group.shutdown()
    return metrics, weights, states


@pytest.fixture(scope="module")
def single_rank(ray_session, tiny_model):
    return one_step(tiny_model, 1, 0)


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_two_rank_update_equals_one_rank_update(single_rank, tiny_model, zero_stage):
    single, single_weights, _ = single_rank
    double, double_weights, states = one_step(tiny_model, 2, zero_stage)
    assert single["optimizer_steps"] == double["optimizer_steps"] == 2
    assert single["train_tokens"] == double["train_tokens"]
    assert 0 < single["tis_capped_frac"] < 1 and single["rollout/logprob_diff"] > 0.1
    for key in ("loss", "kl", "grad_norm", "clip_frac", "tis_capped_frac", "rollout/logprob_diff"):
        assert double[key] == pytest.approx(single[key], rel=METRIC_TOLERANCE, abs=1e-7), key
    assert single_weights.keys() == double_weights.keys()
    moved = max(float(w.abs().max()) for k, w in single_weights.items() if "lora_B" in k)
    assert moved > 1e-3, "the step did not move the adapter"
    worst = max(float((single_weights[k] - double_weights[k]).abs().max()) for k in single_weights)
    assert worst < UPDATE_TOLERANCE * moved, (worst, moved)
    if zero_stage == 3:
        for partitioned, gathered in states:
            assert partitioned, "ZeRO-3 left some weight whole on a rank"
            assert gathered.keys() == double_weights.keys()
            assert all(gathered[k].equal(double_weights[k]) for k in gathered), "the export is not the trained adapter"


def test_mini_batches_hold_whole_episodes_counted_by_their_roots():
    """Under every_round an episode trains its root and its chains' rounds; `mini_batch_size` counts episodes,
    so 4 episodes with 1 to 5 trained turns each make 2 mini-batches of 2 whole episodes, whichever ones the
    seed puts together; the same seed, the same mini-batches; without a seed, the episodes' order."""
    from learner.batching import mini_batches

    turns = {0: 1, 1: 5, 2: 3, 3: 2}
    samples = [TrainSample([1], [2], 1.0, episode=e) for e in turns] + \
        [TrainSample([3], [4], -1.0, 0.8, episode=e) for e, n in turns.items() for _ in range(n - 1)]
    episode_of = [s.episode for s in samples]
    for seed in ("0:1", "0:2", "1:1"):
        minis = mini_batches(samples, 2, seed)
        assert len(minis) == 2 and sorted(i for m in minis for i in m) == list(range(len(samples)))
        assert all(len({episode_of[i] for i in m}) == 2 for m in minis)
        assert all(m == sorted(m) for m in minis)
        assert all(sum(episode_of[j] == episode_of[i] for j in m) == turns[episode_of[i]] for m in minis for i in m)
        assert mini_batches(samples, 2, seed) == minis
    assert len({tuple(map(tuple, mini_batches(samples, 2, f"0:{step}"))) for step in range(20)}) > 1
    assert [{episode_of[i] for i in m} for m in mini_batches(samples, 2)] == [{0, 1}, {2, 3}]
    assert mini_batches(samples, 64, "0:1") == [list(range(len(samples)))]  # one mini-batch: the order kept
    # SFT samples (no episode) count one each.
    assert mini_batches([TrainSample([1], [2], 0.0)] * 5, 2) == [[0, 1], [2, 3], [4]]
