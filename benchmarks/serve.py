"""``rmr1 serve`` throughput: requests arriving together batched into one model call, against
the same server answering one request per call.

A random Qwen2 scalar reward model of ``--preset`` (float32, the ChatML tokenizer of the test
fixtures) is served twice in this process on local ports, through uvicorn: with
``--max-batch`` items a model call (forwards of that many rows), and with 1 (every request its
own one-row forward, as a server without batching answers). ``--clients`` threads each post ``/get_reward`` with one query at a time for
``--seconds``, after a warm-up request per server; the sides alternate ``--repeats`` times.
Printed: answered requests per second of each side and their ratio, model calls, the mean
items per call, and the 503s (none expected: the queue holds every client's request).

    python benchmarks/serve.py [--preset bench-100m] [--clients 16] [--seconds 10] [--max-batch 16]
                               [--repeats 2] [--json out.jsonl]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import alternate, append_json, busy_line, hf_config, machine_info, machine_line, median  # noqa: E402

CHATML = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "text", "fixtures",
                      "chatml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_scalar(out_dir: str, preset: str) -> None:
    """A random Qwen2ForSequenceClassification (one label) with the ChatML fixture tokenizer."""
    import torch
    import transformers

    cfg = hf_config(preset)
    cfg.num_labels, cfg.pad_token_id = 1, 0
    torch.manual_seed(0)
    transformers.Qwen2ForSequenceClassification(cfg).to(torch.float32).eval().save_pretrained(out_dir)
    for name in os.listdir(CHATML):
        shutil.copy(os.path.join(CHATML, name), out_dir)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench-100m")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import httpx
    import uvicorn

    from rmr1_jax.parallel import make_mesh
    from rmr1_jax.serve.app import make_app
    from rmr1_jax.serve.backend import Backend
    from rmr1_jax.serve.batcher import Batcher

    tmp = tempfile.mkdtemp(prefix="rmr1-bench-serve-")
    build_scalar(tmp, args.preset)
    mesh = make_mesh()
    texts = [f"<|im_start|>user\nquestion {k}: is {k} prime?<|im_end|>\n<|im_start|>assistant\n"
             f"{'yes' if k % 2 else 'no'}, because {k} has {k % 5} divisors.<|im_end|>\n" for k in range(64)]
    sides, stats = {}, {}
    for name, max_batch in (("batched", args.max_batch), ("one at a time", 1)):
        # each side's forward is as wide as its calls (one row for one request a call)
        backend = Backend(tmp, mesh, batch_size=max_batch)
        batcher = Batcher(backend.run, max_batch=max_batch, max_queue=4 * args.clients)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(make_app(backend, batcher, name="rm", max_units=args.max_batch),
                                               host="127.0.0.1", port=port, log_level="error"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        httpx.post(url + "/get_reward", json={"query": texts[:1]}, timeout=600)  # compiled before the clock
        sides[name] = (server, batcher, url)

    def runner(name):
        server, batcher, url = sides[name]

        def once():
            calls0, answered0 = batcher.calls, batcher.requests
            end = time.monotonic() + args.seconds

            def client(k):
                ok = busy = 0
                with httpx.Client(base_url=url, timeout=600) as c:
                    i = k
                    while time.monotonic() < end:
                        r = c.post("/get_reward", json={"query": [texts[i % len(texts)]]})
                        ok += r.status_code == 200
                        busy += r.status_code == 503
                        i += args.clients
                return ok, busy

            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as ex:
                counts = list(ex.map(client, range(args.clients)))
            wall = time.perf_counter() - t
            ok = sum(c[0] for c in counts)
            stats.setdefault(name, []).append({"answered": ok, "refused": sum(c[1] for c in counts),
                                               "calls": batcher.calls - calls0,
                                               "served": batcher.requests - answered0, "rate": ok / wall})
            return wall / max(ok, 1), 0.0  # seconds per answered request
        return once

    times, _, before, after = alternate({n: runner(n) for n in sides}, args.repeats,
                                        lambda s: print(s, flush=True))
    for server, batcher, _ in sides.values():
        server.should_exit = True
        batcher.close()
    shutil.rmtree(tmp, ignore_errors=True)
    rate = {n: 1.0 / median(times[n]) for n in sides}
    print(machine_line())
    print(f"{args.preset} scalar reward model, f32, {args.clients} clients x 1 query a request, "
          f"{args.seconds:g} s a repeat, {args.repeats} repeats")
    for n in sides:
        last = stats[n][-1]
        print(f"  {n:14s} {rate[n]:8.1f} requests/s  ({last['calls']} model calls, "
              f"{last['served'] / max(1, last['calls']):.1f} requests a call, {last['refused']} refused)")
    ratio = rate["batched"] / rate["one at a time"]
    print(f"batched / one at a time: {ratio:.2f}x")
    line = busy_line(before, after)
    if line:
        print(line)
    result = {"benchmark": "serve", "preset": args.preset, "clients": args.clients, "seconds": args.seconds,
              "max_batch": args.max_batch, "rates": rate, "ratio": ratio, "runs": stats, "machine": machine_info()}
    append_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
