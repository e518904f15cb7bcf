"""Benchmarks and analyses, one module each: rollout pool, learner, grading, learning, toy-task diagnosis.
They sit on top and import only downward (cluster, rollout, learner, rewards)."""
