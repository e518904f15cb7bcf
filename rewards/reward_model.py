"""A preference reward model (RLMT) as a Ray actor: a transformers sequence-classification model with one
output that scores (prompt, answer) pairs in batches. It is sent the answers alone: the registry's
`reward_model` cuts the thinking out first (`rewards.format.strip_thinking`).
"""

from __future__ import annotations

from collections.abc import Sequence

import ray


class RewardModelScorer:
    def __init__(self, model: str, batch_size: int = 16, max_length: int = 1024, dtype: str = "auto"):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "bfloat16" if self.device == "cuda" else "float32"
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # The score is read at the last token, so nothing of the answer may be cut off at the end.
        self.tokenizer.truncation_side = "left"
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=getattr(torch, dtype))
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward model {model} has {self.model.config.num_labels} labels; a reward model has 1")
        # Sequence classification pools the last non-pad token, which it finds through pad_token_id.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def render(self, prompt: str, answer: str) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenize=False
            )
        return f"{prompt}\n\n{answer}"

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One scalar per (prompt, response), the response judged as it is; higher is preferred."""
        import torch

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        texts = [self.render(p, r) for p, r in zip(prompts, responses)]
        scores: list[float] = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[i : i + self.batch_size], return_tensors="pt", padding=True, truncation=True,
                    max_length=self.max_length, add_special_tokens=False,
                ).to(self.device)
                scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores


RewardModelWorker = ray.remote(RewardModelScorer)
