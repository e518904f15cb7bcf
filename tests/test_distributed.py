"""Several learner ranks train as one: a W-rank step equals the 1-rank step on the same batch (ZeRO 0 and 3),
including mini-batches too small to give every rank a sample."""

from __future__ import annotations

import random

import pytest

from cluster.config import load_config
from learner.group import shard_plan
from learner.records import TrainSample

# float32 on CPU: ranks sum gradients in another order than one rank does. The losses and the gradient norm
# agree to 1e-5 relative. Adam's first steps move each weight by about lr * g / |g|, which magnifies rounding
# in gradients near zero, so the weights are compared relative to the size of the update: 1e-3 of it.
METRIC_TOLERANCE = 1e-5
UPDATE_TOLERANCE = 1e-3


def batch(seed: int = 0, count: int = 7) -> list[TrainSample]:
    rng = random.Random(seed)
    return [TrainSample([rng.randrange(3, 500) for _ in range(rng.randint(3, 9))],
                        [rng.randrange(3, 500) for _ in range(rng.randint(2, 12))], rng.gauss(0, 1))
            for _ in range(count)]


def test_shard_plan_covers_every_sample_once_with_matching_calls():
    samples = batch(count=7)
    local, plans = shard_plan(samples, ranks=3, mini_batch_size=4, micro_batch_size=1)
    assert sorted(map(id, (s for part in local for s in part))) == sorted(map(id, samples))
    for mini in zip(*plans):  # every rank makes as many micro-steps per mini-batch, and agrees on its tokens
        assert len({len(micros) for micros, _ in mini}) == 1 and len({tokens for _, tokens in mini}) == 1
    assert [tokens for _, tokens in plans[0]] == [sum(len(s.completion_ids) for s in samples[:4]),
                                                  sum(len(s.completion_ids) for s in samples[4:])]
    # the 3-sample mini-batch over 3 ranks and the balance by tokens within the 4-sample one
    assert all(len([i for m in micros for i in m]) >= 1 for plan in plans for micros, _ in plan)


def one_step(tiny_model, ranks: int, zero_stage: int):
    import ray
    from safetensors.torch import load

    from cluster.workers import start_learner_group

    config = load_config("tests/configs/smoke.yaml", [
        f"learner.num_ranks={ranks}", f"learner.zero_stage={zero_stage}", "learner.learning_rate=0.01",
        "learner.mini_batch_size=6", "learner.micro_batch_size=2", "learner.kl_coef=0.05", "cluster.learner_threads=1"])
    group = start_learner_group(config, tiny_model, "")
    try:
        metrics = group.train_step(batch())
        digest, payload = group.adapter_payload(1)
        weights = load(ray.get(payload).files["adapter_model.safetensors"])
    finally:
        group.shutdown()
    return metrics, weights


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_two_rank_update_equals_one_rank_update(ray_session, tiny_model, zero_stage):
    single, single_weights = one_step(tiny_model, 1, 0)
    double, double_weights = one_step(tiny_model, 2, zero_stage)
    assert single["optimizer_steps"] == double["optimizer_steps"] == 2
    assert single["train_tokens"] == double["train_tokens"]
    for key in ("loss", "kl", "grad_norm", "clip_frac"):
        assert double[key] == pytest.approx(single[key], rel=METRIC_TOLERANCE, abs=1e-7), key
    assert single_weights.keys() == double_weights.keys()
    moved = max(float(w.abs().max()) for k, w in single_weights.items() if "lora_B" in k)
    assert moved > 1e-3, "the step did not move the adapter"
    worst = max(float((single_weights[k] - double_weights[k]).abs().max()) for k in single_weights)
    assert worst < UPDATE_TOLERANCE * moved, (worst, moved)
