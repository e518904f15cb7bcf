"""The training loop, in parts: one step (step.py: rollout -> score -> credit -> train -> push), the run's actors
(run.py), held-out evaluation during training (held_out.py) and the schedules that run steps (sync.py: one after
another). A schedule decides when steps, evaluations and checkpoints happen; a step knows none of that."""
