"""The learner scores exactly what vLLM sampled, moves logprobs the way the advantage says, and SFT trains on
response tokens only."""

from __future__ import annotations

import pytest
import torch

from learner.config import LearnerConfig
from learner.policy import pad_batch
from learner.records import SFTSample, TrainSample
from rollout.records import SamplingSpec

QUESTIONS = ["What is 12 + 30?", "Natalia sold 48 clips in April and half as many in May.", "How many apples left?"]


def sampled(ray, rollout_worker, n=2, max_tokens=16):
    groups = ray.get(rollout_worker.generate.remote(
        [[{"role": "user", "content": q}] for q in QUESTIONS], SamplingSpec(n=n, temperature=1.0, max_tokens=max_tokens),
        False))  # the base model, as the fresh learner holds it, whatever adapter other tests pushed
    return [c for group in groups for c in group]


def test_learner_logprobs_equal_vllm_logprobs_at_temperature_one(ray_session, rollout_worker, tiny_model):
    from learner.actor import LearnerWorker

    completions = sampled(ray_session, rollout_worker)
    learner = LearnerWorker.options(num_cpus=1).remote(
        tiny_model, LearnerConfig(lora_rank=8, mini_batch_size=6, micro_batch_size=3), temperature=1.0, num_threads=2)
    scored = ray_session.get(learner.score.remote([TrainSample(c.prompt_ids, c.completion_ids, 0.0) for c in completions]))
    ray_session.kill(learner)
    for c, mine in zip(completions, scored):
        assert len(mine) == len(c.logprobs) == len(c.completion_ids)
        assert max(abs(a - b) for a, b in zip(mine, c.logprobs)) < 1e-4


def test_advantage_sign_moves_the_completion_logprob(ray_session, rollout_worker, tiny_model):
    from learner.actor import LearnerWorker

    completions = sampled(ray_session, rollout_worker, n=2)
    batch = [TrainSample(c.prompt_ids, c.completion_ids, 1.0 if i % 2 == 0 else -1.0) for i, c in enumerate(completions)]
    learner = LearnerWorker.options(num_cpus=1).remote(
        tiny_model, LearnerConfig(lora_rank=8, learning_rate=1e-3, mini_batch_size=6, micro_batch_size=3),
        temperature=1.0, num_threads=2)
    before = ray_session.get(learner.score.remote(batch))
    ray_session.get(learner.train_step.remote(batch))
    after = ray_session.get(learner.score.remote(batch))
    ray_session.kill(learner)
    for sample, b, a in zip(batch, before, after):
        change = sum(a) - sum(b)
        assert change > 0 if sample.advantage > 0 else change < 0, (sample.advantage, change)


def test_sft_mask_covers_exactly_the_response_tokens():
    samples = [SFTSample([5, 6, 7], [8, 9]), SFTSample([5], [10, 11, 12])]
    ids, attention, mask = pad_batch(samples, pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6, 7, 8, 9], [5, 10, 11, 12, 0]]
    # mask[:, t] marks the logit at position t that predicts ids[:, t + 1]: response tokens only.
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    assert attention.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]


def test_sft_loss_is_the_response_token_nll(ray_session, tiny_model):
    """The SFT loss equals a float64 reference over response tokens only (prompt tokens excluded), with the
    batch split into micro-batches of unequal token counts."""
    from transformers import AutoModelForCausalLM

    from learner.actor import LearnerWorker

    samples = [SFTSample([1, 40, 41, 42, 43, 44], [50, 51]), SFTSample([1, 60], [70, 71, 72, 73, 2])]
    learner = LearnerWorker.options(num_cpus=1).remote(
        tiny_model, LearnerConfig(finetune="full", learning_rate=0.0, mini_batch_size=2, micro_batch_size=1),
        num_threads=2)
    metrics = ray_session.get(learner.sft_step.remote(samples))
    ray_session.kill(learner)

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float64).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for s in samples:
            ids = torch.tensor([s.prompt_ids + s.completion_ids])
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
            targets = ids[0, 1:]
            for t in range(len(s.prompt_ids) - 1, ids.shape[1] - 1):
                nll -= float(logprobs[t, targets[t]])
                count += 1
    assert count == 7
    assert metrics["loss"] == pytest.approx(nll / count, abs=1e-5)
    assert metrics["train_tokens"] == 7 and metrics["optimizer_steps"] == 1


def test_per_sample_temperatures_match_a_float64_reference(tiny_model):
    """Continuation rounds sampled at another temperature are scored at theirs: one temperature per row, across
    logprob chunks that span rows, equals each row's log-softmax of logits / T in float64."""
    from transformers import AutoModelForCausalLM

    from learner.policy import token_logprobs

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    samples = [TrainSample([5, 6, 7], [8, 9, 10], 1.0, 1.0), TrainSample([5, 11], [12, 13], -1.0, 0.8),
               TrainSample([14, 15, 16, 17], [18], 0.5, 0.5)]
    ids, attention, mask = pad_batch(samples, pad_id=0, device="cpu")
    temperatures = torch.tensor([s.temperature for s in samples])
    with torch.no_grad():
        mine = token_logprobs(model, ids, attention, temperatures, chunk_tokens=5)
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].double()
    reference = torch.log_softmax(logits / temperatures.double()[:, None, None], dim=-1)
    reference = reference.gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert torch.allclose(mine.double()[mask.bool()], reference[mask.bool()], atol=1e-5)
    assert not torch.allclose(mine[1][mask[1].bool()], token_logprobs(model, ids, attention, 1.0)[1][mask[1].bool()])
