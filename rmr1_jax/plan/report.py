"""The plan as text: the memory table, FLOPs and step time, and, when the job does not fit,
one line saying so with the change that would make it fit."""

from __future__ import annotations

import math

from rmr1_jax.plan.job import JobPlan
from rmr1_jax.plan.topology import CHIPS, GIB, parse

ROWS = ("parameters", "trained parameters (LoRA)", "parameters (decode layout)", "optimizer state", "batch",
        "KV cache")


def seconds(t: float) -> str:
    return f"{t:.3g} s" if t >= 1 else f"{t * 1e3:.3g} ms"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _gib(b: float) -> str:
    return f"{b / GIB:.2f}"


def table(p: JobPlan) -> str:
    cols = [ph.name for ph in p.phases]
    lines = [f"plan: {p.objective} of {p.model_name} ({_count(p.total_params)} parameters) on {p.target.name}: "
             f"{p.target.description}",
             f"mesh {p.mesh_shape}; remat {p.model_cfg.remat_policy}; attention {p.attention} "
             f"(model.attention_impl={p.model_cfg.attention_impl or 'auto'}); "
             f"GiB per device"]
    if p.trainable_params != p.total_params:
        lines.append(f"trainable parameters: {_count(p.trainable_params)} of {_count(p.total_params)} "
                     f"({100 * p.trainable_params / p.total_params:.2f}%)")
    names = [r for r in ROWS if any(r in ph.parts for ph in p.phases)]
    held = sorted({k for ph in p.phases for k in ph.parts if k not in ROWS})
    width = max(len(x) for x in [*names, *held, "activations and temporaries", "total (peak)"]) + 2
    colw = max(14, *(len(c) + 2 for c in cols))
    out = ["".ljust(width) + "".join(c.rjust(colw) for c in cols)]

    def row(label, values):
        out.append(label.ljust(width) + "".join(v.rjust(colw) for v in values))

    for r in names + held:
        row(r, [_gib(ph.parts[r]) if r in ph.parts else "-" for ph in p.phases])
    row("activations and temporaries", [(">" if ph.over_hbm else "") + _gib(ph.temp_bytes) for ph in p.phases])
    row("total (peak)", [(">" if ph.over_hbm else "") + _gib(ph.peak_bytes) for ph in p.phases])
    row(f"of {p.target.device_hbm_bytes / GIB:.1f} GiB HBM", [f"{100 * ph.peak_bytes / p.target.device_hbm_bytes:.0f}%"
                                                             for ph in p.phases])
    row("TFLOPs per device", [f"{ph.flops / 1e12:.3g}" for ph in p.phases])
    row("compile (s)", [f"{ph.compile_s:.0f}" for ph in p.phases])
    lines += out
    main = p.phases[0]
    total = main.flops * p.target.num_devices
    lines.append(f"FLOPs: {total:.3e} per {main.name} ({main.flops:.3e} a device, {total / main.tokens:.3g} per "
                 f"token; XLA's cost analysis, which counts each loop body once, says "
                 f"{main.xla_flops or float('nan'):.3e} a device)")
    if math.isfinite(p.step_time_s):
        lines.append(f"step time at {100 * p.mfu:.0f}% MFU: {seconds(p.step_time_s)} for {p.step_desc}")
    if any(ph.over_hbm for ph in p.phases):
        lines.append("note: '>': the TPU compiler stopped, its temporaries alone exceed the HBM (its figure shown)")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def verdict(p: JobPlan) -> str:
    """One line: fits, or does not fit and what to change."""
    worst = p.peak
    hbm = p.target.device_hbm_bytes
    if p.fits:
        return (f"fits: peak {_gib(worst.peak_bytes)} of {hbm / GIB:.1f} GiB a device "
                f"({100 * worst.peak_bytes / hbm:.0f}%, in the {worst.name})")
    return (f"does not fit: the {worst.name} needs {_gib(worst.peak_bytes)} GiB a device, the "
            f"{p.target.name} devices have {hbm / GIB:.1f}; {suggest(p)}")


def suggest(p: JobPlan) -> str:
    """The changes that would plausibly make the job fit, one per phase over the budget
    (memory scaled linearly from the plan: re-planning with them is the check)."""
    hbm = 0.95 * p.target.device_hbm_bytes
    n = p.target.num_devices
    mesh = p.mesh_shape
    if mesh.get("data", 1) > 1 and mesh.get("fsdp", 1) * mesh.get("tensor", 1) < n:
        return f"shard the weights over every device: mesh.data=1 mesh.fsdp={n // mesh.get('tensor', 1)}"
    over = sorted((ph for ph in p.phases if ph.peak_bytes > hbm), key=lambda ph: -ph.peak_bytes)
    # what no batch size changes: weights, optimizer state and the arrays held meanwhile
    fixed = max(ph.peak_bytes - ph.temp_bytes - ph.parts.get("KV cache", 0) - ph.parts.get("batch", 0)
                for ph in p.phases)
    if fixed > hbm:
        need = math.ceil(n * fixed / (0.7 * p.target.device_hbm_bytes))
        return f"the weights and optimizer state alone need {_gib(fixed)} GiB a device: {bigger_slice(p, need)}"
    out = []
    for ph in over:
        change = _phase_change(p, ph, hbm)
        if change not in out:
            out.append(change)
    return "; ".join(out) + " (then re-plan)"


def _phase_change(p: JobPlan, ph, hbm: float) -> str:
    spec = p.hints
    # the fraction of what this phase scales with (temporaries, and a KV cache) that would fit
    scalable = ph.temp_bytes + ph.parts.get("KV page pool", 0)
    scale = 1 - (ph.peak_bytes - hbm) / max(scalable, 1)
    if ph.name.startswith("engine"):
        pages, slots = spec.get("kv_pages"), spec.get("max_slots")
        if pages and scale > 0:
            return f"a smaller page pool: sampling.kv_pages={_shrink(pages, scale)}"
        if slots and slots > 1 and scale > 0:
            return f"decode fewer sequences at once: sampling.max_slots={_shrink(slots, scale)}"
    if ph.name == "log-prob pass":
        lb = spec.get("logprob_batch")
        if lb and lb > 1 and scale > 0:
            return f"score fewer rows at once: grpo.logprob_batch={_shrink(lb, scale)}"
    mb, rows = spec.get("micro_batch"), spec.get("rows")
    if mb and rows and not ph.name.startswith("engine") and ph.name != "log-prob pass":
        smaller = [d for d in range(1, mb) if rows % d == 0 and d <= mb * scale]
        if smaller:
            return f"accumulate smaller micro-batches: train.micro_batch={max(smaller)} (of {rows} rows a step)"
        if p.model_cfg.remat_policy != "full":
            return "recompute each layer in the backward pass: model.remat_policy=full"
    need = math.ceil(p.target.num_devices * ph.peak_bytes / (0.9 * p.target.device_hbm_bytes))
    return bigger_slice(p, need)


def _shrink(v: int, scale: float) -> int:
    return max(1, 2 ** int(math.log2(max(1, v * max(scale, 0.01)))))


def bigger_slice(p: JobPlan, devices: int) -> str:
    gen, dims = parse(p.target.name)
    if gen == "cpu":
        return f"use at least {devices} devices"
    per_chip = p.target.num_devices / p.target.chips
    chips = math.ceil(devices / per_chip)
    d = CHIPS[gen].dims
    side = [1] * d
    i = 0
    while math.prod(side) < chips:  # grow the grid one axis at a time, doubling
        side[i % d] *= 2
        i += 1
    return f"use a slice of at least {chips} chips, e.g. --topology {gen}:{'x'.join(map(str, sorted(side)))}"


def remat_table(plans: list[JobPlan]) -> str:
    """One row per rematerialization policy: the main step's memory against its FLOPs."""
    first = plans[0]
    base = next((q.phases[0].flops for q in plans if q.model_cfg.remat_policy == "none"), None)
    lines = [f"plan: {first.objective} of {first.model_name} on {first.target.name}, mesh {first.mesh_shape}: "
             f"the {first.phases[0].name} per rematerialization policy (GiB and TFLOPs per device)",
             "| remat_policy | activations and temporaries | total (peak) | of HBM | TFLOPs | recomputed | "
             f"step time at {100 * first.mfu:.0f}% MFU | fits |", "|---|---|---|---|---|---|---|---|"]
    for q in plans:
        ph = q.phases[0]
        extra = f"+{100 * (ph.flops / base - 1):.0f}%" if base else "-"
        lines.append(f"| {q.model_cfg.remat_policy} | {_gib(ph.temp_bytes)} | {_gib(ph.peak_bytes)} | "
                     f"{100 * ph.peak_bytes / q.target.device_hbm_bytes:.0f}% | {ph.flops / 1e12:.1f} | {extra} | "
                     f"{seconds(q.step_time_s)} | {'yes' if q.fits else 'no'} |")
    return "\n".join(lines)
