"""The README's planning tables from the JSON files ``rmr1 plan --json`` wrote:

    python -m rmr1_jax.plan.tables runs/plans
"""

from __future__ import annotations

import glob
import json
import os
import sys

from rmr1_jax.plan.report import seconds

GIB = 2**30


def _load(path):
    with open(path) as f:
        return json.load(f)


def recipe_row(name: str, p: dict) -> str:
    mesh = "x".join(str(p["mesh"][a]) for a in ("data", "fsdp", "tensor"))
    phases = {ph["name"]: ph for ph in p["phases"]}
    peak = phases[p["peak_phase"]]
    mem = f"{peak['peak_bytes'] / GIB:.1f} of {p['device_hbm_bytes'] / GIB:.0f} ({p['peak_phase']})"
    main = p["phases"][0]
    tflops = main["flops_per_device"] / 1e12
    return (f"| {name} | {p['model']} ({p['params'] / 1e9:.1f}B) | {p['topology']} ({p['chips']} chips) | {mesh} | "
            f"{p['remat_policy']}, {p.get('attention', 'xla')} | {mem} | {'yes' if p['fits'] else '**no**'} | {tflops:.0f} ({main['name']}) | "
            f"{seconds(p['step_time_s'])} |")


def main(directory: str) -> None:
    rows, special = [], {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        name = os.path.basename(path)[:-5]
        data = _load(path)
        if isinstance(data, list) or name.endswith("-xla") or name.endswith("-small"):
            special[name] = data
        else:
            rows.append(recipe_row(name, data))
    print("| plan | model | slice | mesh (data x fsdp x tensor) | remat, attention | peak GiB a device (phase) | fits | "
          "TFLOPs a device per step | step time at 40% |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for name, data in special.items():
        if isinstance(data, list):
            print(f"\n{name}: rematerialization policies")
            print("| remat_policy | activations and temporaries (GiB) | peak (GiB) | TFLOPs a device | step time |")
            print("|---|---|---|---|---|")
            for q in data:
                ph = q["phases"][0]
                print(f"| {q['remat_policy']} | {ph['temp_bytes'] / GIB:.1f} | {ph['peak_bytes'] / GIB:.1f} | "
                      f"{ph['flops_per_device'] / 1e12:.0f} | {seconds(q['step_time_s'])} |")
        else:
            print(f"\n{name}:")
            print(recipe_row(name, data))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/plans")
