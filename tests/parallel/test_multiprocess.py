"""Multi-host code on one machine: two JAX processes (4 CPU devices each, gloo collectives over
loopback) form one 8-device mesh, load an HF checkpoint onto it, run the model, and export;
results must equal transformers'. Each process then generates from its own prompts (greedy
tokens and log-probs must equal transformers' for those prompts) and runs a GRPO rollout step
and its updates on them."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import hf_models

pytestmark = pytest.mark.multiprocess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_load_run_and_export(tmp_path):
    hf_dir = str(tmp_path / "hf")
    ref_model = hf_models.make_qwen2(hf_dir)
    out_dir, result = str(tmp_path / "export"), str(tmp_path / "result.json")
    port = _free_port()
    worker = os.path.join(os.path.dirname(__file__), "mp_worker.py")
    procs = []
    for pid in range(2):
        env = dict(os.environ, RMR1_COORDINATOR=f"127.0.0.1:{port}", RMR1_NUM_PROCESSES="2",
                   RMR1_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=4")
        procs.append(subprocess.Popen([sys.executable, worker, hf_dir, out_dir, result], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    with open(result) as f:
        res = json.load(f)
    ids = torch.tensor(res["ids"])
    with torch.no_grad():
        expected = ref_model(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(np.asarray(res["logits"]), expected, atol=1e-4)
    # the export written by process 0 loads in transformers and gives the same logits
    import transformers

    exported = transformers.AutoModelForCausalLM.from_pretrained(out_dir)
    with torch.no_grad():
        again = exported(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(again, expected, atol=1e-4)

    # generation: each process got back the greedy continuation of its own prompts
    import torch.nn.functional as F

    for pid in range(2):
        with open(f"{result}.gen{pid}") as f:
            gen = json.load(f)
        for i, prompt in enumerate(gen["prompts"]):
            with torch.no_grad():
                want = ref_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                          max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)[0, len(prompt):]
                seq = torch.tensor([prompt + want.tolist()])
                logp = F.log_softmax(ref_model(input_ids=seq).logits[0, len(prompt) - 1:-1].double(), dim=-1)
            assert gen["tokens"][i] == want.tolist(), (pid, i)
            np.testing.assert_allclose(gen["logprobs"][i], logp[torch.arange(6), want].numpy(), atol=1e-4)
            assert gen["tokens_n2"][2 * i] == gen["tokens_n2"][2 * i + 1] == want.tolist()
            assert gen["tokens_tp"][i] == want.tolist()  # on the all-tensor-parallel mesh too
        # GRPO: 2 updates of 2 prompts x 2 samples per process, each row one of this process's prompts
        assert gen["grpo_rows"] == [4, 4] and all(np.isfinite(gen["grpo_losses"]))
        for row in gen["grpo_row_prompts"]:
            assert any(row[:len(p)] == p for p in gen["prompts"]), (pid, row)
    with open(f"{result}.gen0") as f0, open(f"{result}.gen1") as f1:
        g0, g1 = json.load(f0), json.load(f1)
    assert g0["prompts"] != g1["prompts"]
    assert g0["grpo_param_sum"] == g1["grpo_param_sum"]  # one model, updated on both processes' rows
