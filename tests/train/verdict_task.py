"""The bounded learning task the learning and LoRA tests share: judge which of two replies
follows "reply with one word in capital letters" (the synthetic ``caps_word`` kind), the
judge's reply being the verdict alone, with a tokenizer trained on the traces and the demo's
prompt files. Held out: another seed, and no pair whose question and replies occur in training."""

from __future__ import annotations

import dataclasses
import os
import types

from rmr1_jax.worlds import judging_tasks as synthetic
from rmr1_jax.demos.rmr1 import PROTOCOL_SYMBOLS, _pair_key, write_demo_prompts
from rmr1_jax.schema import PromptSpec
from rmr1_jax.text.tokenizer import train_sentencepiece

KIND = ("caps_word",)


def build(root: str):
    """``pairs`` (2,000 training pairs), ``held`` (64), ``template``, ``prompt``, ``traces``
    (verdict-only distillation traces of the first 1,500 pairs), ``verdict_traces(pairs, seed)``,
    ``tok_dir`` and ``tokenizer``."""
    pairs = synthetic.generate_pairs(2000, seed=0, kinds=KIND)
    seen = {_pair_key(p) for p in pairs}
    held = [p for p in synthetic.generate_pairs(600, seed=7919, kinds=KIND) if _pair_key(p) not in seen][:64]
    files, template = write_demo_prompts(os.path.join(root, "prompts"))

    def verdict_traces(ps, seed):
        exs = synthetic.make_distillation_examples(ps, seed=seed, template=template, style="compact")
        return [dataclasses.replace(ex, target=f"<answer>[[{ex.winner}]]</answer>") for ex in exs]

    traces = verdict_traces(pairs[:1500], 0)
    texts = [t for ex in traces[:600] for t in [m["content"] for m in ex.messages] + [ex.target]]
    tok_dir = os.path.join(root, "tok")
    tokenizer = train_sentencepiece(texts, tok_dir, vocab_size=512, extra_symbols=PROTOCOL_SYMBOLS)
    prompt = PromptSpec(variant="instruct", system_file=files["system"], user_file=files["user"],
                        user_multiturn_file=files["user_multiturn"])
    return types.SimpleNamespace(pairs=pairs, held=held, template=template, prompt=prompt, traces=traces,
                                 verdict_traces=verdict_traces, tok_dir=tok_dir, tokenizer=tokenizer)
