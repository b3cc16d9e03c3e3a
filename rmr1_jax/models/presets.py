"""Architecture presets. A real checkpoint's own ``config.json`` always wins on load; presets
are for planning (``rmr1 plan``), random initialization and tests."""

from __future__ import annotations

from rmr1_jax.errors import ConfigError
from rmr1_jax.models.config import ModelConfig


def _qwen(h, f, l, n, k, vocab, tied, eps=1e-6, theta=1e6, eos=151645, bos=151643, max_pos=32768):
    return dict(model_type="qwen2", hidden_size=h, intermediate_size=f, num_hidden_layers=l,
                num_attention_heads=n, num_key_value_heads=k, vocab_size=vocab, tie_word_embeddings=tied,
                rms_norm_eps=eps, rope_theta=theta, attention_bias=True, bos_token_id=bos, eos_token_id=eos,
                pad_token_id=None, max_position_embeddings=max_pos)


def _llama(h, f, l, n, k, tied, factor, head_dim=None):
    scaling = (("factor", factor), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
               ("original_max_position_embeddings", 8192), ("rope_type", "llama3"))
    return dict(model_type="llama", hidden_size=h, intermediate_size=f, num_hidden_layers=l,
                num_attention_heads=n, num_key_value_heads=k, vocab_size=128256, tie_word_embeddings=tied,
                rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=scaling, attention_bias=False,
                head_dim=head_dim, bos_token_id=128000, eos_token_id=(128001, 128008, 128009),
                max_position_embeddings=131072)


PRESETS: dict[str, dict] = {
    "qwen2.5-0.5b-instruct": _qwen(896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-1.5b-instruct": _qwen(1536, 8960, 28, 12, 2, 151936, True),
    "qwen2.5-3b-instruct": _qwen(2048, 11008, 36, 16, 2, 151936, True),
    "qwen2.5-7b-instruct": _qwen(3584, 18944, 28, 28, 4, 152064, False),
    "qwen2.5-14b-instruct": _qwen(5120, 13824, 48, 40, 8, 152064, False),
    "qwen2.5-32b-instruct": _qwen(5120, 27648, 64, 40, 8, 152064, False),
    "deepseek-r1-distill-qwen-7b": _qwen(3584, 18944, 28, 28, 4, 152064, False, theta=1e4, eos=151643,
                                         bos=151646, max_pos=131072),
    "deepseek-r1-distill-qwen-14b": _qwen(5120, 13824, 48, 40, 8, 152064, False, eps=1e-5, eos=151643,
                                          bos=151646, max_pos=131072),
    "deepseek-r1-distill-qwen-32b": _qwen(5120, 27648, 64, 40, 8, 152064, False, eps=1e-5, eos=151643,
                                          bos=151646, max_pos=131072),
    "llama-3.1-8b": _llama(4096, 14336, 32, 32, 8, False, 8.0),
    "llama-3.2-3b": _llama(3072, 8192, 28, 24, 8, True, 32.0, head_dim=128),
    # ~100M parameters: the benchmark model.
    "bench-100m": _qwen(768, 2048, 12, 12, 4, 32000, False, max_pos=4096),
    # about a million parameters (with a 1K vocabulary): the demo judge.
    "demo": _qwen(128, 384, 4, 4, 2, 1024, False, theta=1e4, max_pos=2048),
    # a few hundred thousand parameters: tests.
    "tiny": _qwen(64, 128, 2, 4, 2, 512, False, max_pos=2048),
    "tiny-llama": _llama(64, 128, 2, 4, 2, False, 8.0),
}


def preset(name: str, **overrides) -> ModelConfig:
    key = name.lower()
    if key not in PRESETS:
        raise ConfigError(f"model.preset={name!r} is not a known preset; choose one of: {', '.join(PRESETS)}")
    kw = dict(PRESETS[key])
    kw.update(overrides)
    if key == "tiny-llama":
        kw.setdefault("vocab_size", 512)
        kw["vocab_size"] = overrides.get("vocab_size", 512)
    return ModelConfig(**kw)
