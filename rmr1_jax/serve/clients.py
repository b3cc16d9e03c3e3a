"""Thin clients of ``rmr1 serve`` for the RL frameworks people already run. Standard library
only (``urllib``), so they import in any training environment.

TRL (``GRPOTrainer(reward_funcs=[...])``)::

    from rmr1_jax.serve.clients import trl_reward_func
    reward = trl_reward_func("http://127.0.0.1:8001")                       # a scalar reward model
    reward = trl_reward_func("http://127.0.0.1:8000", reference="answer")   # a judge, the dataset's
                                                                            # "answer" column as reference

verl (``custom_reward_function.path`` = this file, ``.name`` = ``compute_score``; the server's
address in ``RMR1_SERVE_URL``)::

    compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float

A scalar model scores each completion as the assistant's reply to its prompt (``/score``: the
server renders the conversation with the model's chat template); a judge compares it with the
reference answer in both orders (``/get_reward``: 1 a win, 0 a loss, 1/2 otherwise).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Sequence


class ServeError(RuntimeError):
    """The server answered with an error (its one-line message), or could not be reached."""


def post(url: str, route: str, body: dict, timeout: float = 600.0) -> dict:
    """``body`` as JSON to ``url + route``; the JSON answer."""
    req = urllib.request.Request(url.rstrip("/") + route, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error", "")
        except ValueError:
            msg = ""
        raise ServeError(f"{route}: HTTP {e.code}: {msg}") from None
    except urllib.error.URLError as e:
        raise ServeError(f"{url}: {e.reason}") from None


def kind(url: str, timeout: float = 30.0) -> str:
    """``"generative"`` or ``"scalar"``: what the server at ``url`` holds."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as r:
            return json.loads(r.read())["kind"]
    except (urllib.error.URLError, KeyError, ValueError) as e:
        raise ServeError(f"{url}/health: {e}") from None


def _text(x: Any) -> str:
    """A prompt or completion as TRL passes it: a string, or messages (the last one's content
    for a completion; a prompt's user turns)."""
    if isinstance(x, str):
        return x
    return "\n".join(m["content"] for m in x if m.get("role") in ("user", "assistant"))


def rewards(url: str, prompts: Sequence, completions: Sequence[str], references: Sequence[str] | None = None,
            *, server_kind: str | None = None, timeout: float = 600.0, chunk: int = 16) -> list[float]:
    """One reward per completion of its prompt (see the module), ``chunk`` completions a request
    (a judge's request carries two judgments each)."""
    server_kind = server_kind or kind(url)
    prompts, completions = [_text(p) for p in prompts], list(completions)
    if server_kind != "scalar" and references is None:
        raise ServeError("a judge rewards a completion against a reference answer: give references")
    out = []
    for i in range(0, len(completions), chunk):  # within the server's items a request
        ps, cs = prompts[i:i + chunk], completions[i:i + chunk]
        if server_kind == "scalar":
            data = post(url, "/score", {"text_1": ps, "text_2": cs}, timeout)["data"]
            out += [d["raw_score"] for d in sorted(data, key=lambda d: d["index"])]
        else:
            body = {"query": [p + c for p, c in zip(ps, cs)], "prompts": ps, "labels": list(references[i:i + chunk])}
            out += post(url, "/get_reward", body, timeout)["rewards"]
    return out


def trl_reward_func(url: str, *, reference: str | None = None, timeout: float = 600.0):
    """A TRL ``reward_funcs`` entry calling the server at ``url``: ``reference`` names the
    dataset column holding each prompt's reference answer (a judge needs one)."""
    server_kind = kind(url)

    def rmr1_reward(prompts, completions, **columns) -> list[float]:
        texts = [_text(c[-1:] if not isinstance(c, str) else c) for c in completions]
        refs = None
        if server_kind == "generative":
            if reference is None or reference not in columns:
                raise ServeError(f"the judge at {url} needs a reference column (reference={reference!r}; the "
                                 f"dataset has {sorted(columns)})")
            refs = [str(r) for r in columns[reference]]
        return rewards(url, prompts, texts, refs, server_kind=server_kind, timeout=timeout)

    return rmr1_reward


def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float:
    """verl's custom reward function: ``solution_str`` against ``ground_truth`` (a judge) or
    scored alone (a scalar model), by the server at ``$RMR1_SERVE_URL``; ``extra_info["question"]``
    (when verl's data carries it) is the prompt."""
    url = os.environ.get("RMR1_SERVE_URL")
    if not url:
        raise ServeError("set RMR1_SERVE_URL to the address of rmr1 serve (e.g. http://127.0.0.1:8000)")
    prompt = str((extra_info or {}).get("question", ""))
    return float(rewards(url, [prompt], [solution_str], [str(ground_truth)])[0])
