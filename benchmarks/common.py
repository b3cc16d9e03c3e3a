"""Shared pieces of the benchmark scripts: the random ``bench-100m`` HF model, the busy-core
check, alternating timed repeats, the machine line and the JSON output.

Method (see README.md): both sides in ONE process, warm-up first, then the sides alternate on
every repeat and the median is reported; same thread count on both sides; the machine is checked
for other busy processes before and after timing.
"""

from __future__ import annotations

import json
import re
import os
import platform
import statistics
import time
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BUSY_LIMIT = 0.25  # cores kept busy by other processes above which a run is flagged


def hf_config(preset_name: str = "bench-100m"):
    """A ``transformers.Qwen2Config`` with the preset's architecture (no token ids: the preset's
    Qwen ids lie outside the small vocabularies)."""
    import transformers

    from rmr1_jax.models.presets import PRESETS

    p = PRESETS[preset_name]
    return transformers.Qwen2Config(
        vocab_size=p["vocab_size"], hidden_size=p["hidden_size"], intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_hidden_layers"], num_attention_heads=p["num_attention_heads"],
        num_key_value_heads=p["num_key_value_heads"], rms_norm_eps=p["rms_norm_eps"],
        rope_theta=p["rope_theta"], max_position_embeddings=p["max_position_embeddings"],
        tie_word_embeddings=p["tie_word_embeddings"], use_sliding_window=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def build_hf_model(out_dir: str, seed: int = 0, preset_name: str = "bench-100m", num_labels: int | None = None,
                   pad_token_id: int | None = None):
    """Random float32 ``Qwen2ForCausalLM`` (or, with ``num_labels``, a
    ``Qwen2ForSequenceClassification``; eval mode) with randomized q/k/v biases, saved as
    safetensors to ``out_dir`` (for ``rmr1_jax.load_hf`` / ``load_model``). Returns the torch model."""
    import torch
    import transformers

    cfg = hf_config(preset_name)
    cls = transformers.Qwen2ForCausalLM
    if num_labels is not None:
        cfg.num_labels, cfg.pad_token_id = num_labels, pad_token_id
        cls = transformers.Qwen2ForSequenceClassification
    torch.manual_seed(seed)
    model = cls(cfg).to(torch.float32).eval()
    # Qwen2 q/k/v biases are zero-initialized; randomize them so the bias path is exercised.
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.02)
    model.save_pretrained(out_dir, safe_serialization=True)
    return model


def random_lm(preset_name: str = "bench-100m", seed: int = 0):
    """``(model, params)`` of a random float32 Qwen2 causal LM of the preset (through
    :func:`build_hf_model` and ``rmr1_jax.load_hf``, as a user's checkpoint loads)."""
    import tempfile

    import rmr1_jax

    with tempfile.TemporaryDirectory(prefix="rmr1-bench-lm-") as tmp:
        build_hf_model(tmp, seed=seed, preset_name=preset_name)
        return rmr1_jax.load_hf(tmp, dtype="float32")


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores kept busy by OTHER processes while this one sleeps (from /proc/stat; Linux only).
    A shared machine with other work running makes both sides slower, and not equally: torch's
    OpenMP regions wait at barriers for the slowest thread, so one stolen core hurts it more."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]  # idle + iowait
        return sum(v[:8]) - idle, sum(v[:8])
    try:
        b0, t0 = read()
        time.sleep(seconds)
        b1, t1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def timed(fn: Callable[[], object], n_warmup: int = 1):
    """Run ``fn`` ``n_warmup`` times, then return ``once()`` -> (wall s, process CPU s) of one call."""
    for _ in range(n_warmup):
        fn()

    def once():
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        return time.perf_counter() - t0, time.process_time() - c0

    return once


def first_call(fn: Callable[[], object]):
    """(seconds, result) of one call: for a jitted function, compile + first run."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def alternate(runners: dict[str, Callable[[], tuple[float, float]]], repeats: int,
              log: Callable[[str], None] | None = None):
    """Call every runner once per repeat, in alternating order (forward, then reversed), so a
    slow phase of the machine hits every side. Returns (wall times, CPU times) per side and the
    busy-core readings before and after."""
    busy_before = busy_cores()
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(repeats):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            wall, cpu_s = runners[name]()
            times[name].append(wall)
            cpu[name].append(cpu_s)
            if log is not None:
                log(f"  repeat {r + 1}/{repeats} {name}: {wall:.3f} s")
    busy_after = busy_cores()
    return times, cpu, busy_before, busy_after


def median(v):
    return statistics.median(v)


def machine_line() -> str:
    import jax
    import torch

    return (f"torch threads {torch.get_num_threads()}, usable cpus {usable_cpus()} of {os.cpu_count()}, "
            f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}")


def machine_info() -> dict:
    import jax
    import torch

    return {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "affinity_cpus": usable_cpus(),
            "jax": jax.__version__, "torch": torch.__version__, "backend": jax.default_backend(),
            "platform": platform.platform()}


def busy_line(before: float | None, after: float | None) -> str | None:
    if before is None:
        return None
    flagged = max(before, after if after is not None else 0.0) > BUSY_LIMIT
    return (f"other processes kept {before:.2f} cores busy before timing, {after:.2f} after "
            f"(of {os.cpu_count()})" + ("  <-- machine shared: treat the ratios with care" if flagged else ""))


def busy_flagged(before: float | None, after: float | None) -> bool:
    return before is not None and max(before, after if after is not None else 0.0) > BUSY_LIMIT


def append_json(path: str | None, result: dict) -> None:
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(result) + "\n")


def table(rows: list[tuple], header: tuple, widths: tuple) -> str:
    """Fixed-width text table; floats are printed with 3 decimals."""
    def fmt(v, w, first):
        s = f"{v:.3f}" if isinstance(v, float) else str(v)
        return f"{s:<{w}}" if first else f"{s:>{w}}"

    lines = ["".join(fmt(h, w, i == 0) for i, (h, w) in enumerate(zip(header, widths)))]
    for r in rows:
        lines.append("".join(fmt(v, w, i == 0) for i, (v, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


# --- op-level profile of one compiled executable -----------------------------------------------

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_OPCODE = re.compile(r"(?:^|[\s}])([a-z][a-z0-9\-]*)\(")


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
    """instruction name -> (kind, op_name) from a compiled module's text. ``kind`` is "dot"
    (a dot, or a YNNPACK/XNNPACK/oneDNN library fusion), "copy/transpose", "update-slice",
    "control" (while/conditional/call: their bodies' thunks are counted instead) or "other"
    (elementwise and reduction fusions, gathers, scatters ...)."""
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, rest = m.group(1), m.group(2)
        op = _OP_NAME.search(rest)
        op_name = op.group(1) if op else ""
        head = rest.split(", metadata=")[0]
        oc = _OPCODE.search(head)
        opcode = oc.group(1) if oc else ""
        if opcode in ("while", "conditional", "call") or name.startswith(("while", "conditional")):
            kind = "control"
        elif opcode == "dot" or any(t in rest for t in ("__ynn_fusion", "__xnn_fusion", "onednn")) \
                or name.startswith(("dot", "ynn", "xnn")):
            kind = "dot"
        elif opcode in ("copy", "transpose") or name.startswith(("copy", "transpose", "wrapped_transpose",
                                                                  "wrapped_copy")):
            kind = "copy/transpose"
        elif opcode == "dynamic-update-slice" or "dynamic-update-slice" in name or "dynamic_update_slice" in name:
            kind = "update-slice"
        else:
            kind = "other"
        out[name] = (kind, op_name)
    return out


def op_profile(compiled, args: tuple, runs: int = 1):
    """Run an AOT-compiled executable ``runs`` times under ``jax.profiler`` and return
    ``([(hlo_op, kind, op_name, total_us, calls)], wall_s)``, summed over the runs, for every
    executed thunk except control flow (whose time is that of its body's thunks). Uses the
    Perfetto JSON that ``jax.profiler.trace(create_perfetto_trace=True)`` writes; no extra
    packages. Thunks that run concurrently on several threads are all counted, so the total can
    exceed the wall time on more than one core."""
    import glob
    import gzip
    import tempfile

    import jax

    instr = hlo_instructions(compiled.as_text())
    out = None
    with tempfile.TemporaryDirectory(prefix="rmr1-prof-") as d:
        t0 = time.perf_counter()
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(runs):
                out = compiled(*args)
                jax.block_until_ready(out)
        wall = time.perf_counter() - t0
        files = glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True)
        with gzip.open(files[0]) as f:
            data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    totals: dict[str, list] = {}
    for e in events:
        a = e.get("args") or {}
        if e.get("ph") != "X" or "hlo_op" not in a:
            continue
        op = a["hlo_op"]
        kind, op_name = instr.get(op, ("other", ""))
        if kind == "control":
            continue
        t = totals.setdefault(op, [kind, op_name, 0.0, 0])
        t[2] += float(e.get("dur", 0.0))
        t[3] += 1
    rows = sorted(((op, k, n, us, c) for op, (k, n, us, c) in totals.items()), key=lambda r: -r[3])
    return rows, wall, out


def summarize_profile(rows, categorize: Callable[[str, str], str]) -> dict[str, dict[str, float]]:
    """{category: {kind: seconds}} from ``op_profile`` rows; ``categorize(op_name, hlo_op)``."""
    out: dict[str, dict[str, float]] = {}
    for op, kind, op_name, us, _ in rows:
        cat = categorize(op_name, op)
        d = out.setdefault(cat, {})
        d[kind] = d.get(kind, 0.0) + us / 1e6
    return out


def format_profile(summary: dict[str, dict[str, float]], rows=None, top: int = 10) -> str:
    total = sum(sum(d.values()) for d in summary.values()) or 1.0
    lines = [f"    {'part':<44}{'s':>9}{'share':>8}   by kind"]
    for cat, d in sorted(summary.items(), key=lambda kv: -sum(kv[1].values())):
        s = sum(d.values())
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))
        lines.append(f"    {cat:<44}{s:>9.2f}{100 * s / total:>7.1f}%   {kinds}")
    lines.append(f"    {'total (thunk time)':<44}{total:>9.2f}")
    if rows:
        lines.append(f"    top {top} ops:")
        for op, kind, op_name, us, c in rows[:top]:
            lines.append(f"      {us / 1e6:8.3f} s  x{c:<4} {kind:<15} {op:<32} {op_name[-90:]}")
    return "\n".join(lines)


def step_profiler(step, box: dict, batch, rng, mesh):
    """``profile_ops()`` for a train step from ``rmr1_jax.train.loop.make_train_step``: an
    op-level profile of one step of the same jitted function (compiled ahead of time), its
    new state kept in ``box["state"]``. Returns ``(rows, wall)``."""

    def profile_ops():
        from rmr1_jax.parallel.sharding import activation_sharding

        jitted = next(c.cell_contents for c in step.__closure__ if hasattr(c.cell_contents, "lower"))
        with activation_sharding(mesh):
            compiled = jitted.lower(box["state"], batch, rng).compile()
            rows, wall, out = op_profile(compiled, (box["state"], batch, rng))
        box["state"] = out[0]
        return rows, wall

    return profile_ops
