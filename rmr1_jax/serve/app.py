"""The HTTP routes of ``rmr1 serve`` (FastAPI), in the shapes RL frameworks already call.

* ``GET /health``: ``{"status": "ok", "kind": "generative" | "scalar", "model": ...}``.
* ``POST /judge`` (a generative judge): ``{"pairs": [{"prompt", "response_a", "response_b"}],
  "both_orders": true, "max_new_tokens": N, "structured": false}`` -> ``{"results": [{"verdict",
  "judgment", "finished", and with both orders "verdict_swapped", "judgment_swapped",
  "consistent"; with "structured" each judgment as JSON
  (:func:`~rmr1_jax.text.structured.structure`)}]}``.
* ``POST /get_reward`` (OpenRLHF's remote reward model): ``{"query": [...], "prompts": [...],
  "labels": [...]}`` -> ``{"rewards", "scores", "extra_logs"}``. A scalar model scores each
  query (the whole templated conversation) as it comes; a generative judge compares the
  response (the query after its prompt) with the label (a reference answer) in both orders:
  1 when it wins both, 0 when the reference does, 1/2 otherwise.
* ``POST /classify`` and ``POST /score`` (vLLM's shapes, a scalar model): ``{"input": text or
  texts}``, ``{"text_1": prompt(s), "text_2": response(s)}``; the probability is the sigmoid of
  the score (vLLM's activation for one label).
* ``POST /v1/chat/completions`` (OpenAI's, what verl's generative reward models call; a
  generative judge): ``messages``, ``n``, ``temperature``, ``top_p``, ``max_tokens``, ``stop``.

The ``model`` field of a request may be anything (one model per server). Requests arriving
together go to the model in one call (:mod:`rmr1_jax.serve.batcher`). Errors are one line,
``{"error": "..."}``: 400 for malformed JSON or a request the model cannot take, 404/405 for a
route, 413 for a body over the limit, 422 naming the field, 503 when the queue is full, 504
past the request timeout.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from rmr1_jax.ab_positions import flip, position_consistent
from rmr1_jax.errors import UserError
from rmr1_jax.inference.group_rewards import match_outcome, points
from rmr1_jax.serve.backend import GENERATIVE, SCALAR
from rmr1_jax.serve.batcher import Busy
from rmr1_jax.text.structured import structure


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Message(_Body):
    role: Literal["system", "user", "assistant"]
    content: str


Prompt = Union[str, list[Message]]


class Pair(_Body):
    prompt: Prompt
    response_a: str
    response_b: str


class JudgeRequest(_Body):
    pairs: list[Pair] = Field(min_length=1)
    both_orders: bool = True
    max_new_tokens: Optional[int] = Field(None, ge=1)
    structured: bool = False


class RewardRequest(_Body):
    query: list[str] = Field(min_length=1)
    prompts: Optional[list[str]] = None
    labels: Optional[list[str]] = None


class ClassifyRequest(_Body):
    input: Union[str, list[str]]


class ScoreRequest(_Body):
    text_1: Union[str, list[str]]
    text_2: Union[str, list[str]]


class ChatRequest(_Body):
    messages: list[Message] = Field(min_length=1)
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    max_tokens: Optional[int] = Field(None, ge=1)
    stop: Union[str, list[str], None] = None


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def _field(loc) -> str:
    out = ""
    for part in loc:
        if part == "body":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _messages(prompt) -> list[dict]:
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [m.model_dump() for m in prompt]
    return msgs


def make_app(backend, batcher, *, name: str, timeout: float = 600.0, max_body_bytes: int = 8 << 20,
             max_units: int = 1024, max_new_tokens: int = 1024) -> FastAPI:
    """The app over a loaded :class:`~rmr1_jax.serve.backend.Backend` and its
    :class:`~rmr1_jax.serve.batcher.Batcher`. ``max_units``: the most pairs, texts or
    conversations one request may carry; ``max_new_tokens``: a judgment's budget where the
    request cannot say (``/get_reward``) and the default elsewhere."""
    app = FastAPI(title="rmr1 serve", docs_url=None, redoc_url=None, openapi_url=None)

    _add_error_handling(app, max_body_bytes)

    def need(kind: str, route: str):
        if backend.kind != kind:
            raise _Refused(400, f"{route} needs a {kind} model; this server holds a {backend.kind} one ({name})")

    def count(field: str, n: int):
        if n > max_units:
            raise _Refused(413, f"{field}: {n} items, over the limit of {max_units} a request")

    async def call(key, units: list) -> list:
        try:
            fut = batcher.submit(key, units)
        except Busy as e:
            raise _Refused(503, str(e)) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        except asyncio.TimeoutError:
            fut.cancel()
            raise _Refused(504, f"the request took more than {timeout:g} s") from None
        except (UserError, ValueError) as e:
            raise _Refused(400, str(e)) from None

    @app.get("/health")
    async def health():
        return {"status": "ok", "kind": backend.kind, "model": name, "waiting": batcher.waiting}

    @app.post("/judge")
    async def judge(req: JudgeRequest):
        need(GENERATIVE, "/judge")
        count("pairs", len(req.pairs) * (2 if req.both_orders else 1))
        triples = []
        for p in req.pairs:
            prompt = p.prompt if isinstance(p.prompt, str) else _messages(p.prompt)
            if not isinstance(prompt, str) and not any(m["role"] == "user" for m in prompt):
                raise _Refused(422, "pairs: a prompt's messages have no user turn")
            triples.append((prompt, p.response_a, p.response_b))
            if req.both_orders:
                triples.append((prompt, p.response_b, p.response_a))
        out = await call(("judge", req.max_new_tokens or max_new_tokens), triples)
        results = []
        step = 2 if req.both_orders else 1
        for k in range(len(req.pairs)):
            fwd = out[k * step]
            r = {"verdict": fwd["verdict"], "judgment": fwd["judgment"], "finished": fwd["finished"]}
            pair = req.pairs[k]
            if req.structured:
                r["structured"] = structure(fwd["judgment"], pair.response_a, pair.response_b)
            if req.both_orders:
                swp = out[k * step + 1]
                r.update(verdict_swapped=flip(swp["verdict"]), judgment_swapped=swp["judgment"],
                         finished_swapped=swp["finished"],
                         consistent=position_consistent((fwd["verdict"], swp["verdict"]), ("A", "B")))
                if req.structured:
                    r["structured_swapped"] = structure(swp["judgment"], pair.response_b, pair.response_a)
            results.append(r)
        return {"results": results}

    @app.post("/get_reward")
    async def get_reward(req: RewardRequest):
        n = len(req.query)
        count("query", n)
        for field, v in (("prompts", req.prompts), ("labels", req.labels)):
            if v is not None and len(v) != n:
                raise _Refused(422, f"{field}: {len(v)} items for {n} queries")
        if backend.kind == SCALAR:
            scores = await call(("score_text",), list(req.query))
            return {"rewards": scores, "scores": scores, "extra_logs": {}}
        if req.prompts is None or req.labels is None:
            raise _Refused(422, "prompts and labels: a generative judge compares each response (the query after "
                                "its prompt) with its label, a reference answer")
        triples = []
        for i, (q, p, label) in enumerate(zip(req.query, req.prompts, req.labels)):
            if not q.startswith(p):
                raise _Refused(422, f"query[{i}]: does not start with prompts[{i}]")
            response = q[len(p):]
            triples += [(p, response, label), (p, label, response)]
        verdicts = [r["verdict"] for r in await call(("judge", max_new_tokens), triples)]
        outcomes = [match_outcome(0, 1, verdicts[2 * i], verdicts[2 * i + 1]) for i in range(n)]
        rewards = [points(o, 0) for o in outcomes]
        return {"rewards": rewards, "scores": rewards,
                "extra_logs": {"inconsistent": [float(o.inconsistent) for o in outcomes],
                               "no_verdict": [float(o.no_verdict) for o in outcomes]}}

    _add_scalar_routes(app, name, need, count, call)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        need(GENERATIVE, "/v1/chat/completions")
        msgs = [m.model_dump() for m in req.messages]
        if not any(m["role"] == "user" for m in msgs):
            raise _Refused(422, "messages: no user turn")
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        (c,) = await call(("chat", req.n, req.temperature, req.top_p, req.top_k, req.max_tokens or max_new_tokens, stop),
                          [msgs])
        choices = [{"index": i, "message": {"role": "assistant", "content": t},
                    "finish_reason": "stop" if f else "length"} for i, (t, f) in enumerate(zip(c.texts, c.finished))]
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": name, "choices": choices,
                "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                          "total_tokens": c.prompt_tokens + c.completion_tokens}}

    return app



def _add_error_handling(app: FastAPI, max_body_bytes: int) -> None:
    """One-line JSON errors for every failure, and the body-size limit."""
    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return _error(400, f"malformed JSON: {errs[0].get('ctx', {}).get('error', errs[0].get('msg'))}")
        e = errs[0]
        return _error(422, f"{_field(e.get('loc', ()))}: {e.get('msg')}")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            return _error(404, f"no route {request.method} {request.url.path}")
        if exc.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path}")
        return _error(exc.status_code, exc.detail)

    @app.exception_handler(_Refused)
    async def _refused(_, exc: _Refused):
        return _error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def _internal(_, exc: Exception):
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_body_bytes:
            return _error(413, f"the body is {int(size)} bytes, over the limit of {max_body_bytes}")
        if size is None and request.method == "POST":
            if len(await request.body()) > max_body_bytes:
                return _error(413, f"the body is over the limit of {max_body_bytes} bytes")
        return await call_next(request)


def _add_scalar_routes(app: FastAPI, name: str, need, count, call) -> None:
    """vLLM's ``/classify`` and ``/score`` for a scalar reward model."""
    def _listing(data: list, kind: str) -> dict:
        return {"id": f"{kind}-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": name,
                "data": data, "usage": {}}

    @app.post("/classify")
    async def classify(req: ClassifyRequest):
        need(SCALAR, "/classify")
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts:
            raise _Refused(422, "input: an empty list")
        count("input", len(texts))
        scores = await call(("score_text",), list(texts))
        return _listing([{"index": i, "label": "score", "probs": [_sigmoid(s)], "num_classes": 1, "score": s}
                         for i, s in enumerate(scores)], "classify")

    @app.post("/score")
    async def score(req: ScoreRequest):
        need(SCALAR, "/score")
        second = [req.text_2] if isinstance(req.text_2, str) else req.text_2
        first = [req.text_1] * len(second) if isinstance(req.text_1, str) else req.text_1
        if not second:
            raise _Refused(422, "text_2: an empty list")
        if len(first) != len(second):
            raise _Refused(422, f"text_1: {len(first)} items for {len(second)} in text_2")
        count("text_2", len(second))
        scores = await call(("score_pair",), list(zip(first, second)))
        return _listing([{"index": i, "object": "score", "score": _sigmoid(s), "raw_score": s}
                         for i, s in enumerate(scores)], "score")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
