"""``rmr1 serve`` through real clients: the ``openai`` package against ``/v1/chat/completions``,
``httpx`` against every route, on a uvicorn server on a local port. The models are random tiny
Qwen2s saved with the ChatML tokenizer fixture: a causal LM (served as a judge; its greedy
completions must be transformers' greedy ``generate``) and a ``Qwen2ForSequenceClassification``
(its rewards must be transformers' logits). Bad requests get one-line 4xx answers; requests
arriving together run as one model call; a full queue answers 503 and a slow call 504."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch
import transformers
import uvicorn

import hf_models
from rmr1_jax.ab_positions import flip
from rmr1_jax.parallel import make_mesh
from rmr1_jax.serve.app import make_app
from rmr1_jax.serve.backend import Backend
from rmr1_jax.serve.batcher import Batcher, Busy

CHATML = hf_models.CHATML


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A uvicorn server of ``app`` in a thread of this process."""

    def __init__(self, app):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        for _ in range(200):
            if self._server.started:
                return
            time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def stop(self):
        self._server.should_exit = True
        self._thread.join(10)


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    """(server, batcher, torch LM, transformers tokenizer) of a judge."""
    d = str(tmp_path_factory.mktemp("serve") / "judge")
    model, theirs = hf_models.make_chatml_qwen2(d, seed=4)
    backend = Backend(d, make_mesh(), max_slots=8, batch_size=16)
    batcher = Batcher(backend.run, max_batch=16, max_queue=64)
    server = Server(make_app(backend, batcher, name="judge", max_units=16, max_new_tokens=8))
    yield server, batcher, model, theirs
    server.stop()
    batcher.close()


@pytest.fixture(scope="module")
def scalar(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("serve") / "rm")
    model, theirs = hf_models.make_chatml_scalar_qwen2(d)
    backend = Backend(d, make_mesh(), batch_size=8)
    batcher = Batcher(backend.run, max_batch=8, max_queue=64)
    server = Server(make_app(backend, batcher, name="rm", max_units=8))
    yield server, model, theirs, d
    server.stop()
    batcher.close()


def _hf_score(model, tok, text):
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return float(model(input_ids=ids).logits[0, 0])


def test_chat_completions_through_the_openai_client_are_transformers_greedy(judge):
    import openai

    server, _, model, tok = judge
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which is larger, 37 or 72?"}]
    out = client.chat.completions.create(model="anything", messages=messages, n=2, temperature=0.0, max_tokens=6)
    ids = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
              add_special_tokens=False)["input_ids"]
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    with torch.no_grad():
        ref = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=6, eos_token_id=eos, pad_token_id=eos[0])[0, len(ids):]
    want = tok.decode(ref, skip_special_tokens=True)
    assert len(out.choices) == 2 and all(c.message.content == want for c in out.choices)
    assert out.choices[0].message.role == "assistant" and out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens == len(ids) and out.model == "judge"
    sampled = client.chat.completions.create(model="x", messages=messages, n=3, temperature=1.0, max_tokens=6)
    assert len(sampled.choices) == 3


def test_judge_route_both_orders_and_batching(judge):
    server, batcher, _, _ = judge
    pair = {"prompt": "Which is larger, 37 or 72?", "response_a": "72", "response_b": "37"}
    with httpx.Client(base_url=server.url, timeout=120) as c:
        assert c.get("/health").json()["kind"] == "generative"
        r = c.post("/judge", json={"pairs": [pair], "max_new_tokens": 8}).json()["results"][0]
        assert set(r) >= {"verdict", "judgment", "finished", "verdict_swapped", "judgment_swapped", "consistent"}
        one = c.post("/judge", json={"pairs": [pair], "both_orders": False, "max_new_tokens": 8}).json()
        assert one["results"][0]["judgment"] == r["judgment"] and "verdict_swapped" not in one["results"][0]
        st = c.post("/judge", json={"pairs": [pair], "max_new_tokens": 8, "structured": True}).json()["results"][0]
        from rmr1_jax.text.structured import structure

        assert st["structured"] == structure(r["judgment"], "72", "37")
        assert st["structured_swapped"] == structure(r["judgment_swapped"], "37", "72")
    # requests arriving together: fewer model calls than requests, every request answered once
    calls0, answered0 = batcher.calls, batcher.requests
    prompts = [f"Is {k} prime?" for k in range(12)]

    def ask(p):
        with httpx.Client(base_url=server.url, timeout=120) as c:
            body = {"pairs": [{"prompt": p, "response_a": "yes", "response_b": "no"}], "max_new_tokens": 8}
            return c.post("/judge", json=body)

    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        answers = list(ex.map(ask, prompts))
    assert all(a.status_code == 200 and len(a.json()["results"]) == 1 for a in answers)
    assert batcher.requests - answered0 == 12 and batcher.calls - calls0 < 12


@pytest.mark.parametrize("method,route,body,status,needle", [
    ("post", "/judge", b"{not json", 400, "malformed JSON"),
    ("post", "/judge", {"pairs": [{"prompt": "q", "response_a": "a"}]}, 422, "pairs[0].response_b: Field required"),
    ("post", "/judge", {"pairs": []}, 422, "pairs: List should have at least 1 item"),
    ("post", "/judge", {"pairs": [{"prompt": [{"role": "system", "content": "x"}], "response_a": "a",
                                    "response_b": "b"}]}, 422, "no user turn"),
    ("post", "/judge", {"pairs": [{"prompt": "q", "response_a": 3, "response_b": "b"}]}, 422, "response_a"),
    ("post", "/judge", {"pairs": [{"prompt": "q", "response_a": "a", "response_b": "b"}] * 9}, 413,
     "over the limit of 16"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 0}, 422, "n:"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 422, "messages[0].role"),
    ("post", "/classify", {"input": "x"}, 400, "/classify needs a scalar model"),
    ("post", "/get_reward", {"query": ["q a"], "prompts": ["q "]}, 422, "prompts and labels"),
    ("post", "/get_reward", {"query": ["q a"], "prompts": ["z"], "labels": ["b"]}, 422, "query[0]"),
    ("post", "/nowhere", {}, 404, "no route POST /nowhere"),
    ("get", "/judge", None, 405, "GET is not allowed on /judge"),
])
def test_bad_requests_get_one_line_4xx(judge, method, route, body, status, needle):
    server = judge[0]
    with httpx.Client(base_url=server.url, timeout=60) as c:
        if isinstance(body, bytes):
            r = c.post(route, content=body, headers={"content-type": "application/json"})
        elif method == "post":
            r = c.post(route, json=body)
        else:
            r = c.get(route)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err and "\n" not in err and "Traceback" not in err, err


def test_an_oversized_body_is_refused(judge):
    server = judge[0]
    app_limit = 8 << 20
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/judge", content=b"x" * (app_limit + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["error"]


def test_scalar_routes_are_transformers_scores(scalar):
    server, model, tok, _ = scalar
    texts = ["<|im_start|>user\nIs 7 prime?<|im_end|>\n<|im_start|>assistant\nYes.<|im_end|>\n", "plain text"]
    want = [_hf_score(model, tok, t) for t in texts]
    with httpx.Client(base_url=server.url, timeout=120) as c:
        assert c.get("/health").json()["kind"] == "scalar"
        r = c.post("/get_reward", json={"query": texts, "prompts": ["", ""], "labels": ["", ""]}).json()
        np.testing.assert_allclose(r["rewards"], want, atol=1e-4)
        assert r["scores"] == r["rewards"]
        cl = c.post("/classify", json={"model": "whatever", "input": texts}).json()
        assert cl["object"] == "list" and [d["index"] for d in cl["data"]] == [0, 1]
        np.testing.assert_allclose([d["probs"][0] for d in cl["data"]], 1 / (1 + np.exp(-np.array(want))), atol=1e-4)
        sc = c.post("/score", json={"text_1": "Is 7 prime?", "text_2": ["Yes.", "No."]}).json()
        convs = [tok.apply_chat_template([{"role": "user", "content": "Is 7 prime?"},
                                          {"role": "assistant", "content": a}], tokenize=False) for a in ("Yes.", "No.")]
        np.testing.assert_allclose([d["raw_score"] for d in sc["data"]], [_hf_score(model, tok, t) for t in convs],
                                   atol=1e-4)
        bad = c.post("/judge", json={"pairs": [{"prompt": "q", "response_a": "a", "response_b": "b"}]})
        assert bad.status_code == 400 and "needs a generative model" in bad.json()["error"]
        mismatch = c.post("/score", json={"text_1": ["a", "b"], "text_2": ["c"]})
        assert mismatch.status_code == 422 and "text_1" in mismatch.json()["error"]


def test_a_full_queue_is_refused_and_a_slow_call_times_out():
    gate = threading.Event()

    def slow(key, units):
        gate.wait(5)
        return [f"{key[0]}:{u}" for u in units]

    b = Batcher(slow, max_batch=4, max_queue=2)
    first = b.submit(("x",), [1])
    time.sleep(0.1)  # the worker holds the first call
    queued = [b.submit(("x",), [2]), b.submit(("y",), [3])]
    with pytest.raises(Busy, match="queue is full"):
        b.submit(("x",), [4])
    gate.set()
    assert first.result(5) == ["x:1"] and [f.result(5) for f in queued] == [["x:2"], ["y:3"]]
    b.close()

    class Slow:
        kind = "generative"

    gate.clear()
    b = Batcher(slow, max_batch=4, max_queue=4)
    server = Server(make_app(Slow(), b, name="slow", timeout=0.3))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.post("/judge", json={"pairs": [{"prompt": "q", "response_a": "a", "response_b": "b"}]})
        assert r.status_code == 504 and "more than 0.3 s" in r.json()["error"]
    finally:
        gate.set()
        server.stop()
        b.close()


def test_the_command_serves_on_localhost_until_stopped(scalar, tmp_path):
    import signal
    import subprocess
    import sys

    _, model, tok, path = scalar
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "rmr1_jax.cli", "serve", "--ckpt", path, "--port", str(port),
                             "--max-batch", "4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
            assert proc.poll() is None, proc.stdout.read()
        r = httpx.post(url + "/get_reward", json={"query": ["plain text"]}, timeout=60).json()
        np.testing.assert_allclose(r["rewards"], [_hf_score(model, tok, "plain text")], atol=1e-4)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert f"on http://127.0.0.1:{port}" in out
    bad = subprocess.run([sys.executable, "-m", "rmr1_jax.cli", "serve", "--ckpt", path, "--max-batch", "0"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == \
        "rmr1 serve: error: --max-batch must be at least 1, not 0"


def test_trls_grpo_trainer_takes_its_rewards_from_the_server(scalar, tmp_path):
    """TRL's ``GRPOTrainer`` trains a tiny transformers policy for two steps with the shipped
    adapter as its only reward: every reward it received is transformers' score of that
    completion as the assistant's reply to its prompt."""
    import datasets
    import trl

    from rmr1_jax.serve.clients import trl_reward_func

    server, rm, tok, _ = scalar
    seen = []
    adapter = trl_reward_func(server.url)

    def reward(prompts, completions, **kw):
        out = adapter(prompts, completions, **kw)
        seen.extend(zip(prompts, completions, out))
        return out

    policy_dir = str(tmp_path / "policy")
    hf_models.make_chatml_qwen2(policy_dir, seed=5)
    policy = transformers.AutoModelForCausalLM.from_pretrained(policy_dir)
    data = datasets.Dataset.from_dict({"prompt": ["Is 7 prime?", "Name a color.", "2 + 2 =", "Say hi."]})
    args = trl.GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=2,
                          max_completion_length=6, max_steps=2, learning_rate=1e-4, logging_steps=1, report_to=[],
                          use_cpu=True, bf16=False, save_strategy="no", seed=0)
    trainer = trl.GRPOTrainer(model=policy, reward_funcs=[reward], args=args, train_dataset=data,
                              processing_class=transformers.AutoTokenizer.from_pretrained(policy_dir))
    trainer.train()
    assert len(seen) >= 8
    for prompt, completion, got in seen:
        conv = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
                                       tokenize=False)
        np.testing.assert_allclose(got, _hf_score(rm, tok, conv), atol=1e-4, err_msg=repr((prompt, completion)))


def test_verls_compute_score_calls_the_server(scalar, judge, monkeypatch):
    from rmr1_jax.inference.group_rewards import match_outcome, points
    from rmr1_jax.inference.judge import judge_pairs
    from rmr1_jax.serve.clients import ServeError, compute_score

    server, rm, tok, _ = scalar
    monkeypatch.delenv("RMR1_SERVE_URL", raising=False)
    with pytest.raises(ServeError, match="set RMR1_SERVE_URL"):
        compute_score("gsm8k", "4", "4")
    monkeypatch.setenv("RMR1_SERVE_URL", server.url)
    got = compute_score("gsm8k", "It is 4.", "4", {"question": "2 + 2 = ?"})
    conv = tok.apply_chat_template([{"role": "user", "content": "2 + 2 = ?"}, {"role": "assistant", "content": "It is 4."}],
                                   tokenize=False)
    np.testing.assert_allclose(got, _hf_score(rm, tok, conv), atol=1e-4)
    # a judge: the solution against the ground truth in both orders, as judge_pairs judges them
    monkeypatch.setenv("RMR1_SERVE_URL", judge[0].url)
    got = compute_score("gsm8k", "It is 4.", "4", {"question": "2 + 2 = ?"})
    backend_judge = judge[1]._run.__self__.judge
    r = judge_pairs(backend_judge, [("2 + 2 = ?", "It is 4.", "4")], both_orders=True, max_new_tokens=8)[0]
    assert got == points(match_outcome(0, 1, r["verdict"], flip(r["verdict_swapped"])), 0)


def test_under_load_every_request_is_answered_once_or_refused(scalar, tmp_path):
    """16 clients for 4 seconds against a server whose queue holds 4 requests: every request
    gets its scores (200) or a 503 at once, the server answered exactly the 200s, each answer is
    its own request's, and the process's memory does not grow with the requests."""
    import psutil

    _, model, tok, path = scalar
    backend = Backend(path, make_mesh(), batch_size=8)
    batcher = Batcher(backend.run, max_batch=8, max_queue=4)
    server = Server(make_app(backend, batcher, name="rm", max_units=8))
    texts = [f"text number {k}" for k in range(16)]
    want = {t: _hf_score(model, tok, t) for t in texts}
    httpx.post(server.url + "/get_reward", json={"query": texts[:1]}, timeout=120)  # compiled before the clock
    rss = psutil.Process().memory_info().rss
    end = time.monotonic() + 4.0

    def client(k):
        ok = busy = 0
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while time.monotonic() < end:
                r = c.post("/get_reward", json={"query": [texts[k]]})
                if r.status_code == 200:
                    np.testing.assert_allclose(r.json()["rewards"], [want[texts[k]]], atol=1e-4)
                    ok += 1
                else:
                    assert r.status_code == 503 and "queue is full" in r.json()["error"], r.text
                    busy += 1
        return ok, busy

    try:
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            counts = list(ex.map(client, range(16)))
    finally:
        server.stop()
        batcher.close()
    ok = sum(c[0] for c in counts)
    print(f"answered {ok}, refused {sum(c[1] for c in counts)}, in {batcher.calls - 1} model calls")
    assert ok > 16 and batcher.requests - 1 == ok and batcher.calls - 1 < ok  # batched, none lost or answered twice
    assert psutil.Process().memory_info().rss - rss < 200 << 20
