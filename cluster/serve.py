"""`motif serve`: the run's protocol behind an OpenAI-compatible endpoint (/v1/chat/completions, /v1/models,
/health). Each request runs one episode per choice on the user's last message, as `motif eval` samples
(held_out_spec), and answers with the protocol's final turn; every turn is in the choice's `motif_turns`.

Concurrency: one in-process VLLMEngine, driven by one batching thread. A request runs its protocol in a worker
thread whose `generate` only queues the call; the batching thread takes every call pending and sends the ones
that share sampling settings to the engine as one batched `generate`, so concurrent requests share each round.
Why not vLLM's AsyncLLM: protocols are synchronous functions of `generate` (as in training), VLLMEngine stays
the one place vLLM is touched, and batching across requests is what AsyncLLM would bring; this keeps both."""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import os
import queue
import threading
import time
import uuid
from concurrent.futures import Future

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from cluster.config import BadInput, RunConfig
from rollout.engine import ABORTED, PROMPT_TOO_LONG, EngineDead, sampling_refusal
from rollout.protocols import PROTOCOLS, protocol_name
from rollout.records import SamplingSpec

API_KEY_ENV = "MOTIF_API_KEY"
MAX_CHOICES = 16  # `n`: episodes per request
BATCH_WINDOW_S = 0.01  # how long the batching thread waits for more calls once one is pending
DOWN_POLL_S = 1.0  # how often a waiting request checks that the engine can still answer it
# The request fields that would change what is sampled in a way no protocol supports: refused, not ignored.
UNSUPPORTED = ("stop", "logprobs", "top_logprobs", "tools", "functions", "tool_choice", "response_format",
               "logit_bias", "seed")


class RequestError(Exception):
    """A request the server refuses: OpenAI's error shape with this status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def engine_down(why: str) -> RequestError:
    return RequestError(503, f"motif serve cannot generate any more: {why}; restart it", None, "engine_down",
                        "server_error")


class Batcher:
    """`generate(conversations, spec, use_adapter)` for many threads at once, over one engine."""

    def __init__(self, engine, window_s: float = BATCH_WINDOW_S):
        self.engine, self.window_s = engine, window_s
        self.failure: str | None = None  # why nothing can be generated any more; never cleared
        self._calls: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="motif-batcher", daemon=True)
        self._thread.start()

    def down(self) -> str | None:
        """Why no call can be served any more (the engine died, or the batching thread stopped); None if it can."""
        if self.failure is None and not self._thread.is_alive():
            self.failure = "the batching thread stopped"
        return self.failure

    def generate(self, conversations, spec: SamplingSpec, use_adapter: bool = True):
        """The engine's completions; a 503 RequestError once the engine or this thread is down."""
        if (why := self.down()) is not None:
            raise engine_down(why)
        future: Future = Future()
        self._calls.put((conversations, spec, use_adapter, future))
        while True:  # a call the thread took with it when it stopped gets no result: stop waiting for one
            try:
                return future.result(timeout=DOWN_POLL_S)
            except TimeoutError:
                if (why := self.down()) is not None:
                    raise engine_down(why) from None

    def close(self) -> None:
        self._calls.put(None)
        self._thread.join()

    def _loop(self) -> None:
        try:
            while (call := self._calls.get()) is not None:
                calls, deadline = [call], time.monotonic() + self.window_s
                try:  # the window is bounded, so a steady stream of calls cannot hold a batch back
                    while (call := self._calls.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
                        calls.append(call)
                except queue.Empty:
                    pass
                groups: dict = {}
                for c in calls:
                    groups.setdefault((c[1], c[2]), []).append(c)
                for (spec, use_adapter), group in groups.items():
                    self._run(group, spec, use_adapter)
                if call is None:
                    return
        finally:
            self.failure = self.failure or "the batching thread stopped"

    def _run(self, group: list, spec: SamplingSpec, use_adapter: bool) -> None:
        if self.failure is not None:
            for call in group:
                call[3].set_exception(engine_down(self.failure))
            return
        try:
            outputs = self.engine.generate([c for call in group for c in call[0]], spec, use_adapter=use_adapter)
        except Exception as e:
            if isinstance(e, EngineDead):  # no retry can succeed
                self.failure = f"the vLLM engine died ({e})"
                self._run(group, spec, use_adapter)
            elif len(group) == 1:
                group[0][3].set_exception(e)
            else:  # one request's failure stays its own: each is tried alone
                for call in group:
                    self._run([call], spec, use_adapter)
            return
        start = 0
        for conversations, _, _, future in group:
            future.set_result(outputs[start : start + len(conversations)])
            start += len(conversations)


def _bad(message: str, param: str | None = None, code: str | None = None) -> RequestError:
    return RequestError(400, message, param, code)


def question_of(messages) -> str:
    """The user's last message (text, or OpenAI's list of text parts): the question the episode works on."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        raise _bad("the last message must have role 'user': it is the question", "messages")
    content = last.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise _bad("only text content parts are supported", "messages")
        content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str) or not content.strip():
        raise _bad("the last user message has no text", "messages")
    return content


def _number(body: dict, key: str, kind: type, low: float, high: float, low_open: bool = False):
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise _bad(f"{key} must be a number" if kind is float else f"{key} must be an integer", key)
    if value < low or (low_open and value == low) or value > high:
        raise _bad(f"{key} must be in {'(' if low_open else '['}{low:g}, {high:g}], got {value}", key)
    return value


def request_spec(body: dict, base, max_model_len: int):
    """The served spec with the request's sampling: `temperature` and `top_p` apply to every round (unset: the
    served ones), `max_tokens` (or `max_completion_tokens`) is each round's budget, `n` the episodes."""
    for key in UNSUPPORTED:
        if body.get(key) not in (None, False):
            raise _bad(f"{key} is not supported by motif serve", key, "unsupported_parameter")
    n = _number(body, "n", int, 1, MAX_CHOICES)
    temperature = _number(body, "temperature", float, 0, 2)
    top_p = _number(body, "top_p", float, 0, 1, low_open=True)
    budget_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    budget = _number(body, budget_key, int, 1, max_model_len - 1)
    n = n or 1
    if temperature == 0 and n > 1:
        raise _bad("greedy sampling (temperature 0) has one answer: n must be 1", "n")

    def rounds(spec: SamplingSpec) -> SamplingSpec:
        changes = {"temperature": temperature, "top_p": top_p, "max_tokens": budget}
        return dataclasses.replace(spec, **{k: v for k, v in changes.items() if v is not None})

    return dataclasses.replace(base, samples_per_prompt=n, first_round=rounds(base.first_round),
                               continuation=rounds(base.continuation))


def turn_json(turn) -> dict:
    c = turn.completion
    return {"index": turn.index, "kind": turn.kind, "role": turn.role, "text": c.text,
            "prompt_tokens": len(c.prompt_ids), "completion_tokens": len(c.completion_ids),
            "finish_reason": c.finish_reason}


def _finish_reason(turn) -> str:
    return "stop" if turn.completion.finish_reason == "stop" else "length"


class Server:
    """The served protocol and spec over one engine; `complete` answers one parsed chat request."""

    def __init__(self, engine, protocol: str, spec, model_name: str):
        self.engine, self.protocol, self.rules, self.spec = engine, protocol, PROTOCOLS[protocol], spec
        self.model_name, self.batcher = model_name, Batcher(engine)

    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "motif-rl",
                "motif_protocol": self.protocol, "motif_rounds": self.spec.rounds}

    def check(self, body: dict):
        """(question, spec) of a request, or a RequestError."""
        if (why := self.batcher.down()) is not None:
            raise engine_down(why)
        if body.get("model") != self.model_name:
            raise RequestError(404, f"model {body.get('model')!r} is not served here; this server serves "
                                    f"{self.model_name!r}", "model", "model_not_found")
        question = question_of(body.get("messages"))
        spec = request_spec(body, self.spec, self.engine.max_model_len)
        # What vLLM would refuse on every round, refused here once.
        for s in (dataclasses.replace(spec.first_round, n=spec.samples_per_prompt), spec.continuation):
            if (refusal := sampling_refusal(s)) is not None:
                raise _bad(f"invalid sampling settings: {refusal}")
        length = len(self.engine.tokenizer.encode(question, add_special_tokens=False))
        if length + spec.first_round.max_tokens >= self.engine.max_model_len:
            raise _bad(f"the question has {length} tokens; with {spec.first_round.max_tokens} to generate per round "
                       f"it does not fit the model's context of {self.engine.max_model_len} tokens (rollout.max_model_len)",
                       "messages", "context_length_exceeded")
        return question, spec

    def episodes(self, question: str, spec, generate=None) -> list[list]:
        """(turns in order, final turn) of each choice; a RequestError when one has no answer to give."""
        from cluster.evaluation import sample_turns

        choices = []
        for episode in self.rules.rollout(generate or self.batcher.generate, [question], spec):
            turns, final = sample_turns(episode), self.rules.finals(episode)[0]
            reasons = {t.completion.finish_reason for t in turns}
            if episode.root.completion.finish_reason == PROMPT_TOO_LONG:
                raise _bad(f"the prompt does not fit the model's context of {self.engine.max_model_len} tokens "
                           "(rollout.max_model_len)", "messages", "context_length_exceeded")
            if ABORTED in reasons:
                raise RequestError(500, "generation failed; see the server's log", None, None, "server_error")
            choices.append((turns, final))
        return choices

    def response(self, choices: list, created: int, request_id: str) -> dict:
        model_turns = [t for turns, _ in choices for t in turns]
        prompt = sum(len(t.completion.prompt_ids) for t in model_turns)
        generated = sum(len(t.completion.completion_ids) for t in model_turns)
        return {"id": request_id, "object": "chat.completion", "created": created, "model": self.model_name,
                "motif_protocol": self.protocol,
                "choices": [{"index": i, "message": {"role": "assistant", "content": final.completion.text},
                             "finish_reason": _finish_reason(final), "motif_turns": [turn_json(t) for t in turns]}
                            for i, (turns, final) in enumerate(choices)],
                "usage": {"prompt_tokens": prompt, "completion_tokens": generated,
                          "total_tokens": prompt + generated}}

    def stream(self, question: str, spec, created: int, request_id: str):
        """Server-sent events: a chunk per turn as its round finishes (`motif_turn`, no content), then one with
        the final turn's text as content and every turn as `motif_turns`, then [DONE]."""
        events: queue.Queue = queue.Queue()

        def generate(conversations, round_spec, use_adapter=True):
            outputs = self.batcher.generate(conversations, round_spec, use_adapter)
            for completion in outputs[0]:
                events.put(("turn", {"text": completion.text, "completion_tokens": len(completion.completion_ids),
                                     "finish_reason": completion.finish_reason}))
            return outputs

        def run():
            try:
                events.put(("done", self.episodes(question, spec, generate)))
            except RequestError as e:
                events.put(("error", e))
            except Exception as e:  # the server stays up; the client learns why
                events.put(("error", RequestError(500, f"generation failed: {e}", kind="server_error")))

        threading.Thread(target=run, daemon=True).start()
        head = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": self.model_name}

        def chunk(choice: dict) -> str:
            return f"data: {json.dumps({**head, 'choices': [{'index': 0, **choice}]})}\n\n"

        yield chunk({"delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        turn = 0
        while True:
            kind, value = events.get()
            if kind == "turn":
                turn += 1
                yield chunk({"delta": {}, "finish_reason": None, "motif_turn": {"turn": turn, **value}})
                continue
            if kind == "error":
                yield f"data: {json.dumps(value.body())}\n\n"
            else:
                turns, final = value[0]
                yield chunk({"delta": {"content": final.completion.text}, "finish_reason": _finish_reason(final),
                             "motif_turns": [turn_json(t) for t in turns]})
            yield "data: [DONE]\n\n"
            return


def build_app(server: Server, api_key: str | None):
    """The FastAPI app: every /v1 route behind the key (when one is set), every error in OpenAI's shape."""
    def error(e: RequestError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    # The routes that never block are async: they answer on the event loop while every request thread waits.
    async def authorized(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise RequestError(401, "invalid or missing API key (Authorization: Bearer KEY)", None, "invalid_api_key")

    app = FastAPI(title="motif serve")
    app.add_exception_handler(RequestError, lambda request, e: error(e))
    app.add_exception_handler(HTTPException, lambda request, e: error(RequestError(e.status_code, str(e.detail))))
    app.add_exception_handler(RequestValidationError, lambda request, e: error(_bad(f"invalid request: {e.errors()}")))
    app.add_exception_handler(Exception, lambda request, e: error(
        RequestError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error")))

    @app.get("/health")
    async def health():
        if (why := server.batcher.down()) is not None:
            return error(engine_down(why))
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict:
        return {"object": "list", "data": [server.model_card()]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(authorized)])
    async def model(name: str) -> dict:
        if name != server.model_name:
            raise RequestError(404, f"model {name!r} is not served here", "model", "model_not_found")
        return server.model_card()

    # A plain function: FastAPI runs it in its thread pool (anyio's, 40 threads; more requests wait for one),
    # where the protocol blocks on the batching thread.
    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    def chat_completions(body: dict):
        question, spec = server.check(body)
        created, request_id = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        if body.get("stream"):
            if spec.samples_per_prompt > 1:
                raise _bad("stream=true sends one choice: n must be 1", "n")
            return StreamingResponse(server.stream(question, spec, created, request_id),
                                     media_type="text/event-stream")
        return server.response(server.episodes(question, spec), created, request_id)

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def served_key(host: str, api_key: str | None) -> str | None:
    """--api-key, else MOTIF_API_KEY; none at all only on loopback."""
    key = api_key or os.environ.get(API_KEY_ENV) or None
    if key is None and not is_loopback(host):
        raise BadInput(f"motif serve --host {host}: beyond loopback every request needs a key; pass --api-key "
                       f"or set {API_KEY_ENV}")
    return key


def served_name(config: RunConfig, name: str | None) -> str:
    """The model id clients ask for: --model-name, else the adapter's folder name, else model.path."""
    from pathlib import Path

    return name or (Path(config.eval.adapter).expanduser().resolve().name if config.eval.adapter else config.model.path)


def run_serve(config: RunConfig, host: str, port: int, key: str | None, model_name: str | None) -> None:
    """Serve until stopped; `key` from served_key."""
    import uvicorn

    from cluster.evaluation import held_out_spec
    from cluster.models import resolve_model
    from cluster.workers import engine_settings
    from rollout.engine import VLLMEngine

    model_path = resolve_model(config.model, config.data.toy)
    spec, rewards = held_out_spec(config, model_path)
    engine = VLLMEngine(model_path, require_cuda=config.rollout.num_gpus > 0, **engine_settings(config))
    if config.eval.adapter:
        engine.load_adapter(os.path.expanduser(config.eval.adapter), 1)
    server = Server(engine, protocol_name(config.rollout.protocol, spec.rounds), spec, served_name(config, model_name))
    print(f"motif serve: {server.model_name} ({server.protocol}, {spec.rounds} rounds) on http://{host}:{port}/v1"
          + ("" if key else " (no API key: loopback only)"), flush=True)
    try:
        uvicorn.run(build_app(server, key), host=host, port=port, log_level="warning")
    finally:
        server.batcher.close()
        for reward in rewards:
            reward.close()
