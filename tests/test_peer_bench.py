"""The peer benchmark's pure parts (cluster/bench/peer.py): its refusal without TRL, the prompts TRL is given,
and the figures it reports; the runs themselves are the benchmark's (docs/benchmarks.md)."""

import importlib.util
import statistics

import pytest

from cluster.bench import peer
from cluster.loop.step import prompt_batch
from cluster.tasks.data import load_problems


def test_without_trl_it_refuses_in_one_line_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    with pytest.raises(SystemExit) as refused:
        peer.main(["--pairs", "1"])
    assert "pip install .[bench]" in str(refused.value) and "\n" not in str(refused.value)


def test_trl_gets_the_projects_prompts_in_the_projects_step_order(tmp_path):
    config = peer.run_config(peer.SINGLE, 12, tmp_path, 64, 4)
    rows = peer.prompts_in_order(config, 3)
    problems, _ = load_problems(config.data)
    expected = [p for step in range(3) for p in prompt_batch(problems, 4, config.data.shuffle_seed, step)]
    assert [(r["question"], r["gold"]) for r in rows] == [(p.question, p.gold) for p in expected]
    system, user = rows[0]["prompt"]
    assert system == {"role": "system", "content": "You are a careful assistant that solves math problems over "
                                                   "several rounds of reasoning."}
    assert user["role"] == "user" and user["content"].startswith(f"Question: {expected[0].question}\n\n"
                                                                 "This is round 1 of 1. ")


def test_figures_match_a_hand_computation():
    # Launched at t=100; step i (1-based) starts at 110 + 2(i-1) and lasts i/10 s; generation is half of it.
    spans = [(110 + 2 * i, 110 + 2 * i + (i + 1) / 10) for i in range(5)]
    record = {"started": 100.0, "spans": spans, "generate_s": [(i + 1) / 20 for i in range(5)],
              "generated_tokens": [100] * 5}
    f = peer.figures(record, 5)
    assert f["startup_s"] == pytest.approx(10.0)
    assert f["median_step_s"] == pytest.approx(0.4)  # steps 3, 4, 5: 0.3, 0.4, 0.5
    assert f["median_generate_s"] == pytest.approx(0.2)
    assert f["generated_tokens_per_s"] == pytest.approx(300 / (0.15 + 0.2 + 0.25))
    assert f["median_learn_s"] == pytest.approx(statistics.median([0.15, 0.2, 0.25]))
    assert f["wall_to_last_step_s"] == pytest.approx(118.5 - 100)
