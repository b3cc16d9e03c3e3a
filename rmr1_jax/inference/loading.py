"""Load a judge for inference from an Orbax training checkpoint or a Hugging Face directory,
together with its tokenizer and judge prompt template. The tokenizer comes from
:func:`rmr1_jax.checkpoint.introspect.load_checkpoint_tokenizer`, the one way every consumer of
a checkpoint (judges, ``score-rm``, ``rules score``, ``rules apply``, the HF export) gets it:
the files the run's config names, rendering with the chat template the run trained with
(recorded as text in the checkpoint metadata), so scoring sees the text training saw.

The judge's generation: :func:`rmr1_jax.inference.judge.judge_pairs`; any causal LM's
(:func:`load_lm`): :mod:`rmr1_jax.inference.generate`."""

from __future__ import annotations

import dataclasses
import os

from rmr1_jax.checkpoint.introspect import load_checkpoint_tokenizer
from rmr1_jax.errors import UserError


@dataclasses.dataclass
class LoadedJudge:
    """A judge ready to generate: the model and its parameters, the tokenizer and the judge
    prompt template it renders pairs with."""

    model: object
    params: object
    tokenizer: object
    template: object
    source: str
    sampler: object = None  # created on first use, then reused (compiled once)
    mesh: object = None  # the mesh the parameters live on (generation shards its rows over it)

    def fingerprint(self, **options) -> dict:
        """What a judgment depends on besides the pair (for a resumed output file,
        :mod:`rmr1_jax.data.resumable`): the model, the judge template and the chat template it
        is rendered with, and the generation ``options`` given."""
        from rmr1_jax.checkpoint.identity import checkpoint_identity, text_digest

        t = self.template
        model = checkpoint_identity(self.source) if os.path.isdir(self.source) else self.source
        return {"model": model, "chat_template": text_digest(getattr(self.tokenizer, "chat_template", None)),
                "template": text_digest("\n\0".join([t.variant, t.system or "", t.user, t.user_multiturn])),
                **options}


def load_lm(path: str, mesh, *, tokenizer_path: str | None = None, dtype: str = "float32"):
    """``(model, params, tokenizer, run config)`` of a causal LM: an HF directory (has
    config.json; ``dtype`` is its parameter dtype) or an Orbax checkpoint directory written by
    training (its own parameter dtype; ``dtype`` is the compute dtype), with the tokenizer it
    was trained with (``tokenizer_path`` names other files; see the module docstring). The run
    config is that of an Orbax checkpoint, else empty."""
    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.checkpoint.reading import read_config

    if not os.path.isdir(path):
        raise UserError(f"{path}: checkpoint directory not found")
    run_cfg: dict = {}
    if os.path.isfile(os.path.join(path, "config.json")):
        model, params = load_model(path, "lm", kind="hf", mesh=mesh, param_dtype=dtype, scan_layers=False)
    else:
        model, params = load_model(path, "lm", kind="orbax", mesh=mesh, dtype=dtype, scan_layers=False)
        run_cfg = read_config(path) or {}
    return model, params, load_checkpoint_tokenizer(path, tokenizer_path), run_cfg


def load_judge(path: str, mesh, *, tokenizer_path: str | None = None, prompt_variant: str | None = None,
               system_file: str | None = None, user_file: str | None = None,
               user_multiturn_file: str | None = None, dtype: str = "float32") -> LoadedJudge:
    """``path`` is an HF directory (has config.json) or an Orbax checkpoint directory written by
    training (its saved run config names the tokenizer and prompt files). Explicit arguments
    override what the checkpoint says."""
    from rmr1_jax.text.prompts import JudgeTemplate

    model, params, tokenizer, run_cfg = load_lm(path, mesh, tokenizer_path=tokenizer_path, dtype=dtype)
    prompt_cfg = run_cfg.get("prompt") or {}
    template = JudgeTemplate.from_files(
        prompt_variant or prompt_cfg.get("variant", "instruct"),
        system_file=system_file or prompt_cfg.get("system_file"),
        user_file=user_file or prompt_cfg.get("user_file"),
        user_multiturn_file=user_multiturn_file or prompt_cfg.get("user_multiturn_file"))
    return LoadedJudge(model, params, tokenizer, template, path, mesh=mesh)
