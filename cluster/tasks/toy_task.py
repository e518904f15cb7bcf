"""A learnable synthetic task: a chain of small arithmetic steps (mod 10) with exact gold answers.

No pretrained model exists offline, so learning is shown on a task a tiny model can learn on 2 CPU cores.
`operations` is the difficulty knob: each step is written out as `b*2:0=0` (seven tokens with the tiny
tokenizer), so a full solution needs about 7 x operations reasoning tokens. A MOTIF round covers at most
`steps_per_round` steps, and its progress note ("after c: x=6") is all the next round needs to continue.

Problems come from one seeded stream; a problem's split is a hash of its question, so the train and held-out
splits never share a question.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from dataclasses import dataclass

from cluster.config import ToyConfig
from rollout.protocols import conversation
from rollout.protocols import markovian, self_correct
from rollout.protocols.single import SYSTEM_PROMPTS
from rollout.protocols.motif import SYSTEM_PROMPT, continuation_message, first_round_message

LETTERS = string.ascii_lowercase
OPERATIONS = {"+": lambda x, d: (x + d) % 10, "-": lambda x, d: (x - d) % 10, "*": lambda x, d: (x * d) % 10}
HELD_OUT_SHARE = 5  # one question in 5 hashes to the held-out split


@dataclass(frozen=True)
class ToyProblem:
    start: int
    steps: tuple[tuple[str, int], ...]  # (operator, operand) per step

    @property
    def question(self) -> str:
        listed = " ".join(f"{LETTERS[i]}{op}{d}" for i, (op, d) in enumerate(self.steps))
        return f"Start with x={self.start}. Apply in order, mod 10: {listed}."

    def values(self) -> list[int]:
        """The value after each step."""
        out, x = [], self.start
        for op, d in self.steps:
            x = OPERATIONS[op](x, d)
            out.append(x)
        return out

    @property
    def answer(self) -> str:
        return str(self.values()[-1])

    @property
    def held_out(self) -> bool:
        return int(hashlib.sha256(self.question.encode()).hexdigest(), 16) % HELD_OUT_SHARE == 0


def toy_problems(config: ToyConfig, split: str, count: int) -> list[ToyProblem]:
    """`count` distinct problems of `split` ("train" or "test"), the same for the same config."""
    if split not in ("train", "test"):
        raise ValueError(f"toy task split must be 'train' or 'test', got {split!r}")
    most = config.max_operations or config.operations
    if not 1 <= config.operations <= most <= len(LETTERS):
        raise ValueError(f"toy task operations must be in 1..{len(LETTERS)} (and max_operations at least operations), "
                         f"got {config.operations}, {config.max_operations}")
    rng = random.Random(config.seed)
    seen, out = set(), []
    budget = 1000 * count + 10_000  # short chains have few distinct questions; never loop forever
    while len(out) < count and budget > 0:
        budget -= 1
        # One draw more per problem only for a mix: a single difficulty's stream is what it always was.
        length = rng.randint(config.operations, most) if config.max_operations else config.operations
        problem = ToyProblem(
            rng.randrange(10),
            tuple((rng.choice("+-*"), rng.randrange(1, 10)) for _ in range(length)),
        )
        if problem.question in seen or problem.held_out != (split == "test"):
            continue
        seen.add(problem.question)
        out.append(problem)
    if len(out) < count:
        raise ValueError(f"the toy task with {config.operations} operations has fewer than {count} {split} problems")
    return out


def step_text(index: int, op: str, operand: int, before: int, after: int) -> str:
    return f"{LETTERS[index]}{op}{operand}:{before}={after}"


def progress_text(index: int, value: int) -> str:
    return f"after {LETTERS[index]}: x={value}"


# The inverses of the writers above, for reading model output (cluster/diagnosis.py). Values are matched
# with \d+ so that a model writing "12" for a digit is read (and judged wrong), not skipped.
STEP_PATTERN = re.compile(r"([a-z])([+\-*])(\d+):(\d+)=(\d+)")  # step_text
PROGRESS_PATTERN = re.compile(r"after ([a-z]): x=(\d+)")  # progress_text
_QUESTION = re.compile(r"Start with x=(\d)\. Apply in order, mod 10: (.+)\.")


@dataclass(frozen=True)
class WrittenStep:
    """One step as a solution wrote it: `b*2:0=0` is WrittenStep(1, "*", 2, 0, 0)."""

    index: int  # 0-based: the letter's position in the alphabet
    op: str
    operand: int
    before: int
    after: int


def parse_steps(text: str) -> list[WrittenStep]:
    """Every well-formed step in `text`, in order; anything else (prose, a step cut off mid-way) is skipped."""
    return [WrittenStep(LETTERS.index(m[1]), m[2], int(m[3]), int(m[4]), int(m[5]))
            for m in STEP_PATTERN.finditer(text)]


def parse_progress(note: str) -> tuple[int, int] | None:
    """(0-based step index, value) of a progress note that is exactly what `progress_text` writes, else None."""
    m = PROGRESS_PATTERN.fullmatch(note.strip())
    return (LETTERS.index(m[1]), int(m[2])) if m else None


def parse_question(question: str) -> ToyProblem:
    """The problem a toy question states (the inverse of ToyProblem.question); ValueError if it is not one."""
    m = _QUESTION.fullmatch(question.strip())
    listed = m[2].split(" ") if m else []
    steps = []
    for i, item in enumerate(listed):
        if i >= len(LETTERS) or not re.fullmatch(r"[a-z][+\-*]\d", item) or item[0] != LETTERS[i]:
            raise ValueError(f"not a toy question: {question!r}")
        steps.append((item[1], int(item[2])))
    if not m or not steps:
        raise ValueError(f"not a toy question: {question!r}")
    return ToyProblem(int(m[1]), tuple(steps))


def worked_steps(problem: ToyProblem, first: int, count: int, value: int, rng: random.Random,
                 error_rate: float) -> tuple[list[str], int]:
    """Steps first..first+count-1 written out from `value`, each wrong with probability `error_rate` (a random
    other digit; later steps continue from it), and the value after them."""
    written = []
    for i in range(first, first + count):
        op, d = problem.steps[i]
        after = OPERATIONS[op](value, d)
        if rng.random() < error_rate:
            after = rng.choice([v for v in range(10) if v != after])
        written.append(step_text(i, op, d, value, after))
        value = after
    return written, value


def solution_turns(
    problem: ToyProblem, rounds: int, steps_per_round: int, rng: random.Random, error_rate: float
) -> list[tuple[list[dict[str, str]], str]]:
    """A worked solution in the protocol's format, one (conversation, response) pair per round.

    Each step is wrong with probability `error_rate` (a random other digit) and later steps continue from the
    wrong value, so a model trained on these traces is only partly right: room for RL to improve it.
    """
    turns, value, done, progress = [], problem.start, 0, None
    for round_index in range(1, rounds + 1):
        last = round_index == rounds
        todo = len(problem.steps) - done if last else min(steps_per_round, len(problem.steps) - done)
        written, value = worked_steps(problem, done, todo, value, rng, error_rate)
        done += todo
        reasoning = "".join(f" {step}" for step in written) or f" {progress}"
        message = (first_round_message(problem.question, rounds) if round_index == 1
                   else continuation_message(problem.question, progress, round_index, rounds))
        progress = progress_text(done - 1, value)
        ending = f"<answer>\\boxed{{{value}}}</answer>" if last else f"<progress>{progress}</progress>"
        turns.append((conversation(message, SYSTEM_PROMPT), f"<reasoning>{reasoning}</reasoning>{ending}"))
    return turns


def self_correct_turns(problem: ToyProblem, steps_per_round: int, rng: random.Random, error_rate: float,
                       verdict_accuracy: float, max_attempts: int = 2) -> list[tuple[list[dict[str, str]], str]]:
    """A self-correction episode (rollout.protocols.self_correct) as (conversation, response) per model turn:
    attempts as imperfect as `solution_turns`' single round, each judged by a verdict that is right with
    probability `verdict_accuracy`; a "wrong" verdict is followed by a fresh attempt. Verdicts that are only
    sometimes right leave stage 1 (`motif build-traces`) something to select."""
    turns, message = [], self_correct.attempt_message(problem.question)
    for _ in range(max_attempts):
        (_, text), = solution_turns(problem, 1, steps_per_round, rng, error_rate)
        right = text.endswith(f"\\boxed{{{problem.answer}}}</answer>")
        judged_right = right if rng.random() < verdict_accuracy else not right
        turns += [(message, text), (self_correct.VERIFY_INSTRUCTION,
                                    self_correct.verdict_text(self_correct.CORRECT if judged_right else self_correct.WRONG))]
        if judged_right:
            break
        message = self_correct.CORRECT_INSTRUCTION
    out, history = [], [{"role": "system", "content": self_correct.SYSTEM_PROMPT}]
    for message, text in turns:
        history.append({"role": "user", "content": message})
        out.append((list(history), text))
        history.append({"role": "assistant", "content": text})
    return out


def markovian_turns(problem: ToyProblem, steps_per_round: int, rng: random.Random, error_rate: float,
                    max_rounds: int) -> list[tuple[list[dict[str, str]], str]]:
    """An adaptive-rounds chain (rollout.protocols.markovian) as (conversation, response) per round: each round
    covers `steps_per_round` steps, and the round that reaches the last step answers, so an easy question ends
    in round 1; the last allowed round finishes whatever is left. Steps are as imperfect as in solution_turns."""
    turns, value, done, carried = [], problem.start, 0, None
    for round_index in range(1, max_rounds + 1):
        todo = len(problem.steps) - done if round_index == max_rounds else min(steps_per_round, len(problem.steps) - done)
        written, value = worked_steps(problem, done, todo, value, rng, error_rate)
        done += todo
        message = markovian.round_message(problem.question, round_index, max_rounds, carried)
        finished = done == len(problem.steps)
        carried = progress_text(done - 1, value)
        ending = f"<answer>\\boxed{{{value}}}</answer>" if finished else f"<progress>{carried}</progress>"
        turns.append((conversation(message, SYSTEM_PROMPT), f"<reasoning>{''.join(f' {w}' for w in written)}</reasoning>{ending}"))
        if finished:
            break
    return turns


def rlmt_response(step: str, value: int) -> str:
    """An RLMT response on the toy task: the last step, then the boxed value."""
    return f"{step} \\boxed{{{value}}}"


def rlmt_turns(problem: ToyProblem, rng: random.Random, error_rate: float) -> list[tuple[list[dict[str, str]], str]]:
    """RLMT's single rounds (rollout.response_format): the steps thought through in <think>, then the response
    (the last step and the boxed value); and that response alone, without thinking. Both state the same step and
    value, slips included, so only the thinking can make a later answer better than the traces'."""
    written, value = worked_steps(problem, 0, len(problem.steps), problem.start, rng, error_rate)
    answer = rlmt_response(written[-1], value)
    thought = f"<think>{' '.join(written)}</think>{answer}"
    return [(conversation(problem.question, SYSTEM_PROMPTS["think_response"]), thought),
            (conversation(problem.question, SYSTEM_PROMPTS["response"]), answer)]


def rlmt_corpus() -> list[str]:
    """The RLMT texts the tiny tokenizer learns merges from, when a warm start imitates them."""
    return [SYSTEM_PROMPTS["think_response"], SYSTEM_PROMPTS["response"], "<think> </think>"]


def self_correct_corpus() -> list[str]:
    """The self-correction texts the tiny tokenizer learns merges from, when a warm start imitates them."""
    return [self_correct.SYSTEM_PROMPT, self_correct.VERIFY_INSTRUCTION, self_correct.CORRECT_INSTRUCTION,
            *(self_correct.verdict_text(v) for v in (self_correct.CORRECT, self_correct.WRONG))]


def sft_rows(config: ToyConfig, count: int, rounds: tuple[int, ...], error_rate: float, seed: int = 0,
             verdict_accuracy: float | None = None, markovian_rounds: int | None = None,
             rlmt: bool = False) -> list[dict]:
    """Chat-formatted SFT rows ({"prompt": messages, "response": text}) from `count` train problems, each
    solved once for every number of rounds in `rounds` (1 = single round, R > 1 = MOTIF's R rounds), once as a
    self-correction episode when `verdict_accuracy` is set, once as an adaptive-rounds chain of at most
    `markovian_rounds` rounds when that is set, and as RLMT's two single rounds (`rlmt_turns`) with `rlmt`."""
    rng = random.Random(seed)
    rows = []
    for problem in toy_problems(config, "train", count):
        for r in rounds:
            for prompt, response in solution_turns(problem, r, config.steps_per_round, rng, error_rate):
                rows.append({"prompt": prompt, "response": response})
        if verdict_accuracy is not None:
            for prompt, response in self_correct_turns(problem, config.steps_per_round, rng, error_rate,
                                                       verdict_accuracy):
                rows.append({"prompt": prompt, "response": response})
        if markovian_rounds is not None:
            for prompt, response in markovian_turns(problem, config.steps_per_round, rng, error_rate, markovian_rounds):
                rows.append({"prompt": prompt, "response": response})
        if rlmt:
            for prompt, response in rlmt_turns(problem, rng, error_rate):
                rows.append({"prompt": prompt, "response": response})
    rng.shuffle(rows)
    return rows


def tokenizer_corpus(config: ToyConfig) -> list[str]:
    """Texts the tiny tokenizer learns its merges from: the protocol's prompts and a few worked solutions."""
    rows = sft_rows(config, 20, (1, 3), error_rate=0.0)
    return [m["content"] for row in rows for m in row["prompt"]] + [row["response"] for row in rows]
