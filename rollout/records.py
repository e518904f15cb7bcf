"""Plain records that cross actor boundaries (no vLLM or torch objects)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingSpec:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int | None = None


TRUNCATED = "length"  # the finish reason of a completion that hit its max_tokens


@dataclass(frozen=True)
class Completion:
    """One generated sample and where it came from."""

    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    # vLLM's logprob of each completion token under the distribution it was sampled from: after temperature, and
    # renormalised over the top-p nucleus when top_p < 1 (logprobs_mode=processed_logprobs). The learner's
    # behaviour logprobs: rollout/logprob_diff and truncated importance sampling (learner.tis_cap) read them
    logprobs: list[float]
    finish_reason: str  # "stop" | TRUNCATED ("length": it hit max_tokens) | "abort"
    adapter_version: int  # 0 = base model, v > 0 = adapter pushed as version v
    adapter_digest: str = ""  # sha256 of the adapter files the worker loaded ("" = base model): attestation
    worker: int = -1  # index of the rollout worker that generated it


MODEL, INJECTED = "model", "injected"  # a turn the model sampled (trainable), or text the protocol wrote
# What a model turn is for: a round or attempt that works on the question, or a judgement of the answer before it
# (self-correction's verdict).
RESPONSE, VERDICT = "response", "verdict"


@dataclass(frozen=True)
class Turn:
    """One turn of an episode: what answered `message`, and where it sits in the episode's tree."""

    completion: Completion  # ids, text, vLLM's logprobs, finish reason, worker, adapter version and digest
    message: str  # the user message of its prompt
    index: int  # its round (MOTIF) or attempt, from 1
    parent: int | None  # the turn it continues, by position in Episode.turns (None: the root)
    temperature: float  # what it was sampled at
    role: str = MODEL  # INJECTED turns are never trained
    kind: str = RESPONSE  # RESPONSE or VERDICT


@dataclass
class Episode:
    """One sample of one prompt as a tree of turns, in the order they were made: turns[0] is the root (MOTIF:
    round 1); each later turn names its parent. MOTIF's k continuation chains are the paths from the root's
    children down to the leaves."""

    prompt_index: int
    turns: list[Turn]
    stats: dict[str, int] = field(default_factory=dict)  # the protocol's counts (MOTIF: missing_progress)

    @property
    def root(self) -> Turn:
        return self.turns[0]

    def add(self, turn: Turn) -> int:
        self.turns.append(turn)
        return len(self.turns) - 1

    def children(self, index: int) -> list[int]:
        return [i for i, t in enumerate(self.turns) if t.parent == index]

    def chains(self) -> list[list[Turn]]:
        """Every path from a child of the root down to a leaf, in the order the children were made."""
        paths, stack = [], [[i] for i in reversed(self.children(0))]
        while stack:
            path = stack.pop()
            below = self.children(path[-1])
            if below:
                stack += [path + [i] for i in reversed(below)]
            else:
                paths.append([self.turns[i] for i in path])
        return paths

    def keeping_chains(self, keep: list[int]) -> Episode:
        """The root and only the chains numbered `keep` (of `chains()`); parents renumbered."""
        wanted = [self.children(0)[j] for j in keep]
        kept, position = [0], {0: 0}
        for i, turn in enumerate(self.turns[1:], 1):
            top = i
            while self.turns[top].parent not in (0, None):
                top = self.turns[top].parent
            if top in wanted:
                position[i] = len(kept)
                kept.append(i)
        turns = [self.turns[0]] + [dataclasses.replace(self.turns[i], parent=position[self.turns[i].parent])
                                   for i in kept[1:]]
        return Episode(self.prompt_index, turns, dict(self.stats))

    def to_json(self) -> list[dict]:
        """Each turn as samples.jsonl shows it: readable by hand."""
        return [{"role": t.role, "kind": t.kind, "index": t.index, "parent": t.parent, "message": t.message,
                 "text": t.completion.text, "tokens": len(t.completion.completion_ids),
                 "finish_reason": t.completion.finish_reason, "temperature": t.temperature,
                 "worker": t.completion.worker, "adapter_version": t.completion.adapter_version,
                 "adapter_digest": t.completion.adapter_digest} for t in self.turns]


@dataclass(frozen=True)
class AdapterPayload:
    """A PEFT adapter as bytes, so it can travel through Ray's object store to workers on any node."""

    version: int
    files: dict[str, bytes]  # file name -> contents of the adapter folder (flat)

    @classmethod
    def from_folder(cls, version: int, folder) -> AdapterPayload:
        from pathlib import Path

        return cls(version, {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()})

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + len(self.files[name]).to_bytes(8, "little") + self.files[name])
        return h.hexdigest()
