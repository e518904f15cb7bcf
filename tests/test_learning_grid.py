"""The learning grid's summary, on scripted run folders: per-cell gains and their interval equal a hand
computation; a run is reused only with the config it ran with; missing cells say so."""

import json
import math

import yaml

from cluster.bench.learning import METHODS, finished, main, recorded, run_arguments, slug

STEPS = 30


def script_run(out, operations, warm_start, method, seed, start, end):
    run_dir = out / f"ops{operations}" / f"ws{warm_start}" / f"{slug(method)}-seed{seed}"
    run_dir.mkdir(parents=True)
    arguments = run_arguments("demo", operations, warm_start, method, seed, STEPS, STEPS, [], [4, 8])
    rows = [{"step": 0, "eval/pass@1": start}, {"step": 1, "reward/accuracy": 0.5},
            {"step": STEPS, "eval/pass@1": end}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "benchmark.json").write_text(json.dumps(
        {"arguments": arguments, "wall_s": 100.0, "returncode": 0, "pass@1": {"0": start, str(STEPS): end}}))
    return run_dir, arguments


def test_grid_summary_matches_hand_computation(tmp_path, capsys):
    motif = "motif, 3 rounds"
    # Two warm starts x (2, 1) seeds at 8 operations: gains 0.1, 0.2, 0.05.
    script_run(tmp_path, 8, 0, motif, 0, 0.5, 0.6)
    script_run(tmp_path, 8, 0, motif, 1, 0.5, 0.7)
    script_run(tmp_path, 8, 1, motif, 0, 0.6, 0.65)
    run_dir, arguments = script_run(tmp_path, 4, 0, "grpo, 1 round", 0, 0.8, 0.7)
    failed_dir, failed_arguments = script_run(tmp_path, 4, 1, "grpo, 1 round", 0, 0.8, 0.9)
    (failed_dir / "benchmark.json").write_text(json.dumps(
        {"arguments": failed_arguments, "wall_s": 5.0, "returncode": 1, "pass@1": {"0": 0.8}}))

    results = main(["--report", "--operations", "4", "8", "--warm-starts", "0", "1", "--seeds", "0", "1",
                    "--steps", str(STEPS), "--out", str(tmp_path)])

    cell = results["cells"][motif]["8"]
    mean = (0.1 + 0.2 + 0.05) / 3
    stdev = math.sqrt(((0.1 - mean) ** 2 + (0.2 - mean) ** 2 + (0.05 - mean) ** 2) / 2)
    half = 4.302652729911275 * stdev / math.sqrt(3)  # t quantile 0.975 with 2 degrees of freedom
    assert cell["runs"] == 3 and cell["failed"] == 0
    assert cell["first_failure_round"] is None  # the scripted runs kept no evaluation samples
    assert math.isclose(cell["gain"], mean) and math.isclose(cell["ci95"], half, rel_tol=1e-6)
    assert math.isclose(cell["start"], (0.5 + 0.5 + 0.6) / 3) and math.isclose(cell["end"], (0.6 + 0.7 + 0.65) / 3)
    assert list(cell["curve"]) == ["0", str(STEPS)] and math.isclose(cell["curve"][str(STEPS)], cell["end"])
    assert not (tmp_path / "curves.png").exists()  # evaluated at the ends only: the heat-map says it all
    single = results["cells"]["grpo, 1 round"]["4"]
    assert math.isclose(single["gain"], -0.1) and single["ci95"] == 0.0 and single["runs"] == 1
    assert single["failed"] == 1  # reported, never averaged in, and not reused
    assert recorded(failed_dir, failed_arguments) is not None and finished(failed_dir, failed_arguments, STEPS) is None
    assert results["cells"][motif]["4"] == {"runs": 0, "failed": 0}  # never run: no made-up gain
    assert set(results["cells"]) == set(METHODS)
    assert results["wall_s_all_runs"] == 405.0

    printed = capsys.readouterr().out
    assert f"{mean:+.3f} ±{half:.3f} n=3" in printed and "no run n=0" in printed
    assert f"| {motif} | no run | {mean:+.3f} ± {half:.3f} (0.533 → 0.650, n=3) |" in printed  # the Markdown table
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["cells"] == results["cells"]

    # Reused only with the same arguments and a final evaluation.
    assert finished(run_dir, arguments, STEPS) is not None
    assert finished(run_dir, arguments + ["learner.learning_rate=0.1"], STEPS) is None
    assert finished(run_dir, arguments, STEPS + 10) is None


def test_a_run_is_reused_by_the_config_it_ran_with(tmp_path):
    from cluster.config import load_config, to_dict

    run_dir, arguments = script_run(tmp_path, 8, 0, "motif, 3 rounds", 0, 0.5, 0.6)
    assert arguments[-2:] == ["learner.mini_batch_size=32", "learner.micro_batch_size=16"]  # B*m: one step a step
    saved = to_dict(load_config(arguments[1], [*arguments[2:], "output_dir=/elsewhere"]))  # the grid was moved
    assert saved["data"]["limit"] is None
    del saved["data"]["limit"]  # written before the field existed: reused while it is unset
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    demo_alpha = f"learner.lora_alpha={saved['learner']['lora_alpha']}"

    # Arguments that spell out what the run ran with resolve to its config; other settings do not.
    assert finished(run_dir, arguments, STEPS) is not None
    assert finished(run_dir, [*arguments, demo_alpha], STEPS) is not None
    assert finished(run_dir, [*arguments, "learner.lora_alpha=3"], STEPS) is None
    # A default that changed since the run (here: the demo's learning rate) makes it stale, same arguments or not.
    saved["learner"]["learning_rate"] /= 2
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert finished(run_dir, arguments, STEPS) is None


def test_every_round_trains_all_rounds_in_one_optimizer_step():
    arguments = run_arguments("demo", 6, 0, "motif, every round", 0, STEPS, STEPS, ["rollout.prompts_per_step=2"])
    assert arguments[-2:] == ["learner.mini_batch_size=80", "learner.micro_batch_size=16"]  # 2*8*(1 + 2*2)


def test_the_motivation_arms_are_motif_in_each_mode(tmp_path):
    from cluster.bench.learning import MOTIVATION_ARMS
    from cluster.config import load_config

    assert list(MOTIVATION_ARMS) == ["motif, motivation none", "motif, motivation consistent",
                                     "motif, motivation mismatched", "motif, motivation misleading"]
    for method in MOTIVATION_ARMS:
        arguments = run_arguments("demo", 8, 0, method, 0, STEPS, STEPS, [], [4, 8])
        config = load_config(arguments[1], arguments[2:])
        assert (config.reward.motivation, config.rollout.rounds, config.learner.credit) == (
            method.rpartition(" ")[2], 3, "first_round")
    results = main(["--report", "--arms", "protocols", "motivation", "--operations", "8", "--warm-starts", "0",
                    "--seeds", "0", "--steps", str(STEPS), "--out", str(tmp_path)])
    assert list(results["cells"]) == [*METHODS, *MOTIVATION_ARMS] and results["arms"] == ["protocols", "motivation"]
    assert all(cell == {"8": {"runs": 0, "failed": 0}} for cell in results["cells"].values())



def test_the_prompt_varied_warm_start_reads_each_mode_as_its_run_writes_it():
    import dataclasses

    from cluster.bench.merf import motivation_rows
    from cluster.config import load_config
    from cluster.spec import rollout_spec
    from rewards import build_rewards
    from rewards.motivation import MODES

    config = load_config("demo", ["data.toy.operations=8"])
    rows = motivation_rows(config, 12, seed=5)
    rewards = build_rewards(config.reward.components, "reasoning_progress", config.rollout.max_tokens)
    for i, row in enumerate(rows):
        mode = MODES[i % len(MODES)]
        # The run's own prompts in that mode, from the rollout spec a `motif train` in it builds.
        spec = rollout_spec(dataclasses.replace(config, reward=dataclasses.replace(config.reward, motivation=mode)),
                            rewards)
        answers = row["response"].endswith("</answer>")
        assert row["prompt"][0] == {"role": "system",
                                    "content": spec.final_system_prompt if answers else spec.system_prompt}
    # Rows of single solutions and of MOTIF's 3 rounds: every mode is read in progress rounds and last rounds.
    seen = {(row["prompt"][0]["content"], row["response"].endswith("</answer>")) for row in rows}
    assert len(seen) == 2 * len(MODES)
    assert rows[0]["prompt"][0]["content"].startswith("You are") and "weight" not in rows[0]["prompt"][0]["content"]

def test_a_run_recorded_with_motivation_false_is_reused_as_none(tmp_path):
    from cluster.config import load_config, to_dict

    run_dir, arguments = script_run(tmp_path, 8, 0, "motif, 3 rounds", 0, 0.5, 0.6)
    saved = to_dict(load_config(arguments[1], arguments[2:]))
    saved["reward"]["motivation"] = False  # as the grid's runs wrote it before the modes
    for term in saved["reward"]["components"]:
        del term["overlong_limit"], term["overlong_buffer"]  # nor had the terms these keys
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert finished(run_dir, arguments, STEPS) is not None


def test_the_prompt_varied_warm_start_is_kept_per_what_shapes_it(tmp_path):
    from cluster.bench.merf import prompt_varied_warm_start

    def where(*overrides):
        return prompt_varied_warm_start(tmp_path, "demo", ["data.toy.operations=8", *overrides], build=False)

    assert where() == where("rollout.seed=3", "steps=5")  # what RL does after it does not shape it
    assert where() != where("reward.components=[{name: accuracy, weight: 1.0}]")  # the modes' prompts change
    assert where() != where("model.warm_start.seed=1") != where("data.toy.operations=6")
    assert not where().exists()  # located, not built
