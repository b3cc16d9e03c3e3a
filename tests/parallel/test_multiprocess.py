"""Multi-host code on one machine: two JAX processes (4 CPU devices each, gloo collectives over
loopback) form one 8-device mesh, load an HF checkpoint onto it, run the model, and export;
results must equal transformers'. Each process then generates from its own prompts (greedy
tokens and log-probs must equal transformers' for those prompts) and runs a GRPO rollout step
and its updates on them. Last, on a mesh that interleaves the two processes' devices (as a TPU
slice's may), generation (greedy and sampled) and a GRPO rollout step must give every row what
a one-process run of the processes' prompts gives it: samples follow the prompt, not where the
mesh puts its row."""

import json
import os

import numpy as np
import pytest
import torch

import hf_models
import mp_worker
from mp_launch import start_job

pytestmark = pytest.mark.multiprocess
# less LLVM optimization (the job and its reference alike): compiles are most of the test's time
XLA_FLAGS = "--xla_backend_optimization_level=0"


def test_two_processes_load_run_and_export(tmp_path):
    hf_dir = str(tmp_path / "hf")
    ref_model = hf_models.make_qwen2(hf_dir)
    out_dir, result = str(tmp_path / "export"), str(tmp_path / "result.json")
    worker = os.path.join(os.path.dirname(__file__), "mp_worker.py")
    job = start_job(worker, [hf_dir, out_dir, result], processes=2, devices=4, xla_flags=XLA_FLAGS)
    # the one-process reference of the interleaved case (8 devices, the same flags), meanwhile
    ref_job = start_job(worker, ["--reference", hf_dir, f"{result}.reference"], processes=1, devices=8,
                        xla_flags=XLA_FLAGS)
    try:
        ref_job.wait(timeout=300)
        job.wait(timeout=300)
    finally:
        job.kill()
        ref_job.kill()
    with open(f"{result}.reference") as f:
        reference = json.load(f)
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
            assert gen["tokens_tp"][i] == want.tolist()  # on the all-tensor-parallel mesh too
        # GRPO: 2 updates of 2 prompts x 2 samples per process, each row one of this process's prompts
        assert gen["grpo_rows"] == [4, 4] and all(np.isfinite(gen["grpo_losses"]))
        for row in gen["grpo_row_prompts"]:
            assert any(row[:len(p)] == p for p in gen["prompts"]), (pid, row)
    with open(f"{result}.gen0") as f0, open(f"{result}.gen1") as f1:
        g0, g1 = json.load(f0), json.load(f1)
    assert g0["prompts"] != g1["prompts"]
    assert g0["grpo_param_sum"] == g1["grpo_param_sum"]  # one model, updated on both processes' rows

    # On the interleaved mesh: each process's rows are not a block of the global batch ...
    two = []
    for pid in range(2):
        with open(f"{result}.interleaved{pid}") as f:
            two.append(json.load(f))
    assert [r["placement"] for r in two] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert reference["placement"] == list(range(mp_worker.PROMPTS))
    # ... and still get, row for row, the one-process run's generations; the generation engine
    # (one schedule on every process) gives the static sampler's rows
    for key in ("greedy_tokens", "sampled_tokens", "engine_greedy_tokens", "engine_sampled_tokens"):
        assert two[0][key] + two[1][key] == reference[key], key
    for key in ("greedy_logprobs", "sampled_logprobs", "engine_greedy_logprobs", "engine_sampled_logprobs"):
        np.testing.assert_allclose(two[0][key] + two[1][key], reference[key], atol=1e-5, err_msg=key)
    # verdict probabilities of each process's own judgments (uneven: 3 and 1 with a verdict)
    probs = [np.nan if p is None else p for p in two[0]["verdict_probs"] + two[1]["verdict_probs"]]
    want = [np.nan if p is None else p for p in reference["verdict_probs"]]
    assert np.isnan(want).sum() == 4 and 0 < np.nanmin(want) < np.nanmax(want) < 1
    np.testing.assert_allclose(probs, want, atol=1e-5)
    for kind in ("greedy", "sampled"):
        assert reference[f"engine_{kind}_tokens"] == reference[f"{kind}_tokens"], kind
        np.testing.assert_allclose(reference[f"engine_{kind}_logprobs"], reference[f"{kind}_logprobs"], atol=1e-5)
    greedy, sampled = np.asarray(reference["greedy_tokens"]), np.asarray(reference["sampled_tokens"])
    np.testing.assert_array_equal(greedy[0::2], greedy[1::2])  # greedy: a prompt's 2 samples alike
    assert not np.array_equal(sampled[0::2], sampled[1::2])  # sampled: they differ
    # the rollout step: each update's global batch (the processes' rows in process order) is the
    # one-process update's: the same prompts, samples, rewards' advantages and log-probs
    assert len(reference["updates"]) == len(two[0]["updates"]) == len(two[1]["updates"]) == 2
    for u, want in enumerate(reference["updates"]):
        for key, value in want.items():
            got = np.concatenate([np.asarray(two[p]["updates"][u][key]) for p in range(2)])
            if key in ("input_ids", "attention_mask", "response_mask"):
                np.testing.assert_array_equal(got, value, err_msg=f"update {u}: {key}")
            else:
                np.testing.assert_allclose(got, value, atol=1e-5, err_msg=f"update {u}: {key}")
    adv = np.concatenate([u["advantages"] for u in reference["updates"]])
    assert np.any(adv != 0)  # the rewards vary within groups: the comparison sees them
    for r in two:  # totals over both processes' rows (reward mean, accuracy, lengths)
        assert r["metrics"].keys() == reference["metrics"].keys()
        for key, value in reference["metrics"].items():
            assert r["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
