"""Random tiny Hugging Face models, built offline with ``transformers`` and saved to a directory.

These are the outside reference for the checkpoint and sharding tests: the torch model a
helper returns is what our import must reproduce, logit for logit.

* ``make_qwen2``: Qwen2 with q/k/v biases; biases ~ N(0, 0.5) and RMSNorm weights
  1 + N(0, 0.1) so that a loader that drops or misplaces them is caught. ``tied=True`` ties the
  LM head to the embeddings (no ``lm_head.weight`` in the file).
* ``make_llama3``: Llama with GQA (4 heads, 2 KV heads) and Llama-3 rope scaling whose
  ``original_max_position_embeddings`` (64) is small enough that the scaling changes the
  frequencies that matter at test sequence lengths.
* ``layout="v5"`` keeps what transformers 5 writes (``rope_parameters``, ``dtype``);
  ``layout="classic"`` rewrites ``config.json`` to the transformers-4 layout (``rope_theta`` /
  ``rope_scaling`` at top level, ``torch_dtype``, no ``rope_parameters``).
* ``make_sharded`` saves with a small ``max_shard_size``: several safetensors files plus
  ``model.safetensors.index.json``.
* ``make_answer_judge``: a Qwen2 rule-scoring judge for a given tokenizer whose answer words
  get large, prompt-dependent probabilities (a random head gives every token about 1/vocab
  everywhere, and a comparison of answer probabilities could hardly fail).
"""

from __future__ import annotations

import json
import os

import torch
import transformers

VOCAB = 300
# a ChatML tokenizer (tokenizer.json and its chat template) that transformers' AutoTokenizer loads
CHATML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "text", "fixtures", "chatml")
HIDDEN = 64
INTERMEDIATE = 128
HEADS = 4
KV_HEADS = 2
# A wider initialization than HF's default 0.02 keeps logits O(1), so that parity tolerances
# are meaningful (with 0.02 every logit is ~0 and anything matches).
INIT_RANGE = 0.08

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Make biases and norm weights non-trivial (HF initializes them to 0 and 1)."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.1)


def _finish(model, path, layout: str, max_shard_size=None):
    model.eval()
    os.makedirs(path, exist_ok=True)
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, **kw)
    if layout == "classic":
        to_classic_layout(path)
    elif layout != "v5":
        raise ValueError(f"layout must be 'v5' or 'classic', not {layout!r}")
    return model


def to_classic_layout(path) -> dict:
    """Rewrite ``path/config.json`` from the transformers-5 layout to the classic one."""
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    rope = cfg.pop("rope_parameters", None) or {}
    cfg["rope_theta"] = rope.get("rope_theta", 10000.0)
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    cfg["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    cfg.pop("layer_types", None)
    cfg["transformers_version"] = "4.46.0"
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    return cfg


def qwen2_config(*, tied=False, layers=2, vocab_size=VOCAB) -> transformers.Qwen2Config:
    return transformers.Qwen2Config(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
        tie_word_embeddings=tied, initializer_range=INIT_RANGE, bos_token_id=1, eos_token_id=2,
        use_sliding_window=False,
    )


def llama3_config(*, layers=3, attention_bias=False) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512,
        rms_norm_eps=1e-5, rope_parameters={"rope_theta": 500000.0, **LLAMA3_SCALING},
        tie_word_embeddings=False, initializer_range=INIT_RANGE, bos_token_id=1, eos_token_id=[2, 3],
        attention_bias=attention_bias, mlp_bias=False,
    )


def _build(config, seed: int):
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, seed)
    return model


def make_qwen2(path, *, tied=False, layout="v5", seed=0, max_shard_size=None, vocab_size=VOCAB):
    """Random tiny Qwen2 (q/k/v biases; ``tied``: tied embeddings; ``vocab_size``: to fit a
    tokenizer saved beside it) saved to ``path``."""
    return _finish(_build(qwen2_config(tied=tied, vocab_size=vocab_size), seed), path, layout, max_shard_size)


def make_llama3(path, *, layout="v5", seed=0, max_shard_size=None, attention_bias=False):
    """Random tiny Llama with GQA and Llama-3 rope scaling saved to ``path`` (``attention_bias``:
    q/k/v and o_proj biases, as HF's Llama has them then)."""
    return _finish(_build(llama3_config(attention_bias=attention_bias), seed), path, layout, max_shard_size)


def make_sharded(path, *, kind="qwen2", layout="v5", seed=0, max_shard_size="40KB"):
    """Like ``make_qwen2``/``make_llama3`` but saved as several safetensors files plus an index."""
    maker = {"qwen2": make_qwen2, "llama3": make_llama3}[kind]
    model = maker(path, layout=layout, seed=seed, max_shard_size=max_shard_size)
    files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
    assert os.path.isfile(os.path.join(path, "model.safetensors.index.json")), os.listdir(path)
    assert len(files) >= 3, files
    return model


MAKERS = {
    "qwen2-bias": lambda path, **kw: make_qwen2(path, tied=False, **kw),
    "qwen2-tied": lambda path, **kw: make_qwen2(path, tied=True, **kw),
    "llama3-gqa": lambda path, **kw: make_llama3(path, **kw),
}


def hf_logits(model, ids, mask, position_ids=None):
    """float32 numpy logits of a transformers model for numpy ``ids``/``mask`` [B, T]."""
    with torch.no_grad():
        kw = {}
        if position_ids is not None:
            kw["position_ids"] = torch.as_tensor(position_ids, dtype=torch.long)
        out = model(input_ids=torch.as_tensor(ids, dtype=torch.long),
                    attention_mask=torch.as_tensor(mask, dtype=torch.long), use_cache=False, **kw)
    return out.logits.float().numpy()


def make_answer_judge(path, tok, answers, texts, *, seed=0, spread=10.0):
    """A random Qwen2 LM for ``tok`` (saved with the tokenizer files to ``path``) whose head rows
    for the ``answers`` words (each as a piece alone and after SentencePiece's space) point
    along the directions in which the final hidden state varies over ``texts`` (its principal
    axes, orthogonal to its mean), scaled so the answers' logits spread by about ``spread`` from
    prompt to prompt. Returns the torch model (eval mode)."""
    config = qwen2_config()
    config.vocab_size = tok.vocab_size
    config.max_position_embeddings = 2048
    config.pad_token_id, config.eos_token_id, config.bos_token_id = tok.pad_id, tok.eos_id, None
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, seed)
    with torch.no_grad():
        hs = torch.stack([model(input_ids=torch.tensor([tok.encode(t)]), output_hidden_states=True)
                          .hidden_states[-1][0, -1] for t in texts])
        mean = hs.mean(0)
        _, sv, vt = torch.linalg.svd(hs - mean, full_matrices=False)
        w = model.lm_head.weight
        for k, answer in enumerate(answers):
            v = vt[k] - (vt[k] @ mean) / (mean @ mean) * mean
            for piece in (answer, "\u2581" + answer):
                w[tok.token_to_id(piece)] = v * (spread * len(hs) ** 0.5 / sv[k])
    model.eval()
    model.save_pretrained(path)
    tok.save(path)
    return model


def make_chatml_qwen2(path, *, seed=0):
    """A random tiny Qwen2 LM for the ChatML tokenizer fixture, saved with the tokenizer's files
    to ``path``. Returns (the torch model, transformers' tokenizer)."""
    import shutil

    theirs = transformers.AutoTokenizer.from_pretrained(CHATML)
    model = make_qwen2(path, vocab_size=len(theirs), seed=seed)
    for name in os.listdir(CHATML):
        shutil.copy(os.path.join(CHATML, name), path)
    return model, theirs


def make_chatml_scalar_qwen2(path, *, seed=1):
    """A random tiny Qwen2ForSequenceClassification (one label) for the ChatML tokenizer fixture,
    saved with the tokenizer's files to ``path``. Returns (the torch model, transformers'
    tokenizer)."""
    import shutil

    theirs = transformers.AutoTokenizer.from_pretrained(CHATML)
    cfg = qwen2_config(vocab_size=len(theirs))
    cfg.num_labels, cfg.pad_token_id = 1, theirs.pad_token_id or 0
    torch.manual_seed(0)
    model = transformers.Qwen2ForSequenceClassification(cfg).eval()
    randomize(model, seed)
    model.save_pretrained(path)
    for name in os.listdir(CHATML):
        shutil.copy(os.path.join(CHATML, name), path)
    return model, theirs
