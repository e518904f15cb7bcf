"""What is trained on: datasets (shipped copies, JSONL, hub), the toy task, its warm start."""
