"""`motif serve`: request checks and the batching thread against a stand-in engine, then the real server (a
subprocess on loopback over the tiny model) through the real `openai` client, one server per protocol."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster.serve import Batcher, RequestError, Server, build_app, question_of, request_spec, served_key
from rollout.engine import EngineDead
from rollout.protocols.motif import MotifSpec
from rollout.records import Completion, SamplingSpec
from tests.conftest import REPO

KEY = "test-key"
ROUNDS = 3


class EchoEngine:
    """Each conversation's completion is its last message's text; records every call it gets."""

    def __init__(self, fail_on: str | None = None):
        self.calls, self.fail_on = [], fail_on

    def generate(self, conversations, spec, use_adapter=True):
        texts = [c[-1]["content"] for c in conversations]
        self.calls.append((texts, spec, use_adapter))
        if self.fail_on in texts:
            raise RuntimeError("poison")
        return [[Completion([1], [2], t, [0.0], "stop", 0)] * spec.n for t in texts]


def test_batcher_merges_concurrent_calls_per_sampling_setting_and_isolates_a_failure():
    engine = EchoEngine(fail_on="bad")
    batcher = Batcher(engine, window_s=0.2)
    hot, cold = SamplingSpec(temperature=1.0), SamplingSpec(temperature=0.5)
    jobs = [([[{"content": f"q{i}"}], [{"content": f"r{i}"}]], hot if i < 4 else cold) for i in range(6)]
    with ThreadPoolExecutor(7) as pool:
        futures = [pool.submit(batcher.generate, convs, spec, True) for convs, spec in jobs]
        bad = pool.submit(batcher.generate, [[{"content": "bad"}]], hot, True)
        results = [f.result() for f in futures]
        with pytest.raises(RuntimeError, match="poison"):
            bad.result()
    batcher.close()
    # Each caller gets its own conversations back, in order.
    assert [[c[0].text for c in r] for r in results] == [[f"q{i}", f"r{i}"] for i in range(6)]
    # One call per sampling setting for the 7 requests; the failed one's requests were then tried one by one.
    sizes = sorted(len(texts) for texts, _, _ in engine.calls)
    assert sizes == [1, 2, 2, 2, 2, 4, 9]
    assert [texts for texts, _, _ in engine.calls].count(["bad"]) == 1  # alone, once the merged call failed


BASE = MotifSpec(samples_per_prompt=4, continuations=1, rounds=3,
                 first_round=SamplingSpec(temperature=1.0, top_p=1.0, max_tokens=40),
                 continuation=SamplingSpec(temperature=0.8, top_p=0.9, max_tokens=40))


def test_request_sampling_settings():
    spec = request_spec({}, BASE, 512)
    # Unset: the served rounds' own settings, one episode.
    assert (spec.samples_per_prompt, spec.first_round, spec.continuation) == (1, BASE.first_round, BASE.continuation)
    spec = request_spec({"temperature": 0.3, "max_tokens": 7, "n": 2}, BASE, 512)
    assert spec.samples_per_prompt == 2
    assert spec.first_round == SamplingSpec(temperature=0.3, top_p=1.0, max_tokens=7)
    assert spec.continuation == SamplingSpec(temperature=0.3, top_p=0.9, max_tokens=7)
    assert request_spec({"max_completion_tokens": 5}, BASE, 512).continuation.max_tokens == 5


@pytest.mark.parametrize("body,param", [
    ({"temperature": -0.1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 512}, "max_tokens"), ({"n": 0}, "n"), ({"n": 17}, "n"),
    ({"n": 2, "temperature": 0}, "n"), ({"temperature": "hot"}, "temperature"), ({"n": 1.5}, "n"),
    ({"stop": ["\n"]}, "stop"), ({"tools": [{"type": "function"}]}, "tools"), ({"seed": 3}, "seed"),
])
def test_bad_sampling_settings_are_refused_naming_the_field(body, param):
    with pytest.raises(RequestError) as e:
        request_spec(body, BASE, 512)
    assert e.value.status == 400 and e.value.param == param
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}


def test_the_question_is_the_last_user_message():
    assert question_of([{"role": "system", "content": "ignored"}, {"role": "user", "content": "What is 2+2?"}]) == \
        "What is 2+2?"
    assert question_of([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]) \
        == "ab"
    for messages in ([], [{"role": "assistant", "content": "x"}], [{"role": "user", "content": "  "}],
                     [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "text"):
        with pytest.raises(RequestError, match="messages|message|text"):
            question_of(messages)


def test_a_key_is_required_beyond_loopback(monkeypatch):
    from cluster.config import BadInput

    monkeypatch.delenv("MOTIF_API_KEY", raising=False)
    assert served_key("127.0.0.1", None) is None and served_key("localhost", None) is None
    assert served_key("0.0.0.0", "k") == "k"
    monkeypatch.setenv("MOTIF_API_KEY", "env-key")
    assert served_key("0.0.0.0", None) == "env-key"
    monkeypatch.delenv("MOTIF_API_KEY")
    with pytest.raises(BadInput, match="--api-key or set MOTIF_API_KEY"):
        served_key("0.0.0.0", None)


class Fatal(BaseException):
    """What no `except Exception` catches: it stops the batching thread."""


class GatedEngine(EchoEngine):
    """EchoEngine whose calls wait for `gate`, then raise `error` when one is set."""

    max_model_len = 512

    class tokenizer:
        @staticmethod
        def encode(text, add_special_tokens=False):
            return text.split()

    def __init__(self):
        super().__init__()
        self.gate, self.error = threading.Event(), None

    def generate(self, conversations, spec, use_adapter=True):
        self.gate.wait()
        if self.error is not None:
            raise self.error
        return super().generate(conversations, spec, use_adapter)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("error,why", [(EngineDead("EngineCore encountered an issue"), "the vLLM engine died"),
                                       (Fatal(), "the batching thread stopped")])
def test_a_dead_engine_answers_503_on_health_and_to_every_request(error, why):
    from fastapi.testclient import TestClient

    # A real engine dies with vLLM's EngineDeadError, which VLLMEngine.generate raises as EngineDead (seen by
    # killing the EngineCore process of a VLLM_ENABLE_V1_MULTIPROCESSING=1 server: a 25 s start, too slow to
    # repeat here); the stand-in raises it at the same seam, the engine's generate.
    engine = GatedEngine()
    server = Server(engine, "single", dataclasses.replace(BASE, rounds=1, continuations=1), "m")
    with TestClient(build_app(server, None)) as client, ThreadPoolExecutor(8) as pool:
        assert client.get("/health").status_code == 200
        # Requests in flight when it dies: one in the engine's call, the rest queued behind it.
        waiting = [pool.submit(server.episodes, f"q{i}", server.spec) for i in range(8)]
        time.sleep(0.2)
        engine.error = error
        engine.gate.set()
        for future in waiting:
            with pytest.raises(RequestError) as e:
                future.result(timeout=10)
            assert e.value.status == 503 and e.value.code == "engine_down"
        health = client.get("/health")
        assert health.status_code == 503 and why in health.json()["error"]["message"]
        assert health.json()["error"]["type"] == "server_error"
        start = time.monotonic()
        reply = client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "q"}]})
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "engine_down"
        assert time.monotonic() - start < 1  # refused at once, never queued
    assert len(engine.calls) <= 1  # after the failure no call reaches the engine


# --- the real server -------------------------------------------------------------------------------------------


def _start(tmp_path, tiny_model: str, *overrides: str):
    from learner.rendezvous import free_port

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "serve", "--config", "demo", f"model.path={tiny_model}",
         "rollout.max_tokens=12", "--port", str(port), "--api-key", KEY, *overrides],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "serve.log").read_text()[-4000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("motif serve did not answer /health")


@pytest.fixture(scope="module")
def motif_server(tmp_path_factory, tiny_model):
    proc, url = _start(tmp_path_factory.mktemp("serve-motif"), tiny_model, f"rollout.rounds={ROUNDS}")
    yield url
    proc.terminate()
    proc.wait(30)


def _client(url: str, key: str = KEY):
    import openai

    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)


def _ask(client, model: str, question: str = "What is 2+3?", **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **kwargs)


def test_a_motif_request_returns_every_round(motif_server, tiny_model):
    client = _client(motif_server)
    [model] = client.models.list().data
    assert model.id == tiny_model and model.motif_protocol == "motif" and model.motif_rounds == ROUNDS
    reply = _ask(client, tiny_model, max_tokens=8)
    [choice] = reply.choices
    turns = choice.motif_turns
    assert [t["index"] for t in turns] == list(range(1, ROUNDS + 1))
    assert all(1 <= t["completion_tokens"] <= 8 and t["prompt_tokens"] > 0 for t in turns)
    # The answer is the last round's text; usage counts every round.
    assert choice.message.content == turns[-1]["text"]
    assert choice.finish_reason == ("length" if turns[-1]["finish_reason"] == "length" else "stop")
    assert reply.usage.completion_tokens == sum(t["completion_tokens"] for t in turns)
    assert reply.usage.prompt_tokens == sum(t["prompt_tokens"] for t in turns)
    # n episodes, each its own R rounds.
    reply = _ask(client, tiny_model, n=2, max_tokens=4)
    assert [len(c.motif_turns) for c in reply.choices] == [ROUNDS, ROUNDS]


def test_concurrent_requests_all_complete(motif_server, tiny_model):
    client = _client(motif_server)
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda i: _ask(client, tiny_model, f"What is {i}+{i}?", max_tokens=6), range(6)))
    assert all(len(r.choices[0].motif_turns) == ROUNDS for r in replies)
    assert len({r.id for r in replies}) == 6


def test_more_concurrent_requests_than_request_threads_all_complete(motif_server, tiny_model):
    # FastAPI runs 40 requests at once; the others wait for a thread, and /health answers meanwhile.
    client = _client(motif_server)
    with ThreadPoolExecutor(44) as pool:
        replies = pool.map(lambda i: _ask(client, tiny_model, f"What is {i}-1?", max_tokens=4), range(44))
        with urllib.request.urlopen(motif_server.removesuffix("/v1") + "/health", timeout=10) as r:
            assert r.status == 200
        assert all(len(r.choices[0].motif_turns) == ROUNDS for r in replies)


def test_streaming_sends_each_round_then_the_answer(motif_server, tiny_model):
    chunks = list(_ask(_client(motif_server), tiny_model, max_tokens=6, stream=True))
    rounds = [c.choices[0].motif_turn for c in chunks if getattr(c.choices[0], "motif_turn", None)]
    assert [r["turn"] for r in rounds] == list(range(1, ROUNDS + 1))
    last = chunks[-1].choices[0]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == last.motif_turns[-1]["text"]
    assert [t["text"] for t in last.motif_turns] == [r["text"] for r in rounds]
    assert last.finish_reason in ("stop", "length")


def test_bad_requests_get_4xx_and_the_server_keeps_serving(motif_server, tiny_model):
    import openai

    client = _client(motif_server)
    with pytest.raises(openai.NotFoundError) as e:
        _ask(client, "no-such-model")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        _ask(client, tiny_model, temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        _ask(client, tiny_model, "seven " * 600)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=tiny_model, messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as e:
        _ask(client, tiny_model, stream=True, n=2)
    assert e.value.body["param"] == "n"
    assert len(_ask(client, tiny_model, max_tokens=4).choices[0].motif_turns) == ROUNDS


def test_a_wrong_key_gets_401(motif_server, tiny_model):
    import openai

    with pytest.raises(openai.AuthenticationError) as e:
        _ask(_client(motif_server, "wrong"), tiny_model)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        _client(motif_server, "wrong").models.list()
    # No key at all (the client always sends one): the same 401, in OpenAI's error shape.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(f"{motif_server}/chat/completions", data=b"{}", method="POST"))
    assert e.value.code == 401
    assert set(json.loads(e.value.read())["error"]) == {"message", "type", "param", "code"}
    with urllib.request.urlopen(motif_server.removesuffix("/v1") + "/health") as r:  # health needs no key
        assert r.status == 200


def test_a_single_round_server_with_an_adapter_returns_one_turn(tmp_path, tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "my-adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    proc, url = _start(tmp_path, tiny_model, "rollout.protocol=single", "rollout.rounds=1", f"eval.adapter={adapter}")
    try:
        client = _client(url)
        assert [m.id for m in client.models.list().data] == ["my-adapter"]  # the adapter's folder name
        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(lambda i: _ask(client, "my-adapter", f"What is {i}*2?", max_tokens=6), range(3)))
        for reply in replies:
            [turn] = reply.choices[0].motif_turns
            assert turn["index"] == 1 and reply.choices[0].message.content == turn["text"]
            assert reply.motif_protocol == "single"
    finally:
        proc.terminate()
        proc.wait(30)
