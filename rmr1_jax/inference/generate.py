"""Generation with any causal LM through the engine (:mod:`rmr1_jax.sampling.engine`): token
ids in Python, JSONL files of prompts for ``rmr1 generate``.

::

    import rmr1_jax as rj

    model, params = rj.load_hf("Qwen2.5-0.5B-Instruct")
    tok = load_tokenizer("Qwen2.5-0.5B-Instruct")                 # rmr1_jax.text.tokenizer
    gen = rj.generate(model, params, [tok.encode("Once upon a time"), tok.encode("1, 2, 3,")],
                      rj.SamplingParams(max_new_tokens=64, temperature=0.7, n=4),
                      eos_ids=tok.eos_ids, pad_id=tok.pad_id, tokenizer=tok, max_slots=16)
    gen.tokens, gen.logprobs, gen.lengths, gen.finished, gen.texts   # [2 * 4, 64], [8, 64], [8], [8], 8

    g = load_generator("runs/rm-r1/checkpoints", mesh)     # Orbax checkpoint or HF directory
    generate_file(g, "prompts.jsonl", "out.jsonl", rj.SamplingParams(n=4))   # `rmr1 generate`

A file's rows are ``{"prompt": text or messages}`` (:func:`~rmr1_jax.inference.rows.read_generate_rows`):
messages, and a text without ``raw``, are rendered with the checkpoint's chat template and its
generation prompt; with ``raw`` the text's own tokens are sent, nothing added. Each output row
is its input row plus ``line``, ``completions`` (``n`` texts), ``token_ids``, ``logprobs`` and
``finished`` (``n`` entries each; finished: ended by EOS or a stop string, not the budget).

Samples do not depend on batching: prompt ``i`` of the file (counted from 0) draws with the
key of ``seed`` and row ids ``i * n + j`` (:class:`~rmr1_jax.sampling.sampler.Sampler`'s
scheme), whichever engine call and slot it runs in, so a resumed file equals an uninterrupted
one. In a multi-process job every process reads the file and runs one schedule over every
prompt, each (data, fsdp) shard of ``mesh`` decoding its own slots; process 0 writes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Sequence

from rmr1_jax.data.readers import FileStats
from rmr1_jax.errors import ConfigError, DataError, UserError
from rmr1_jax.sampling.sampler import Generation, SamplingParams

# Fields generate_file adds to each row (an input field of the same name is replaced).
OUTPUT_FIELDS = ("line", "completions", "token_ids", "logprobs", "finished")
# Input rows per engine call, per slot (so the engine can refill its slots as rows end).
ROWS_PER_SLOT = 4


def check_sampling(sp: SamplingParams) -> None:
    """A one-line ConfigError for settings no generation can run with."""
    checks = [(sp.max_new_tokens >= 1, f"max_new_tokens must be at least 1, not {sp.max_new_tokens}"),
              (sp.temperature >= 0, f"temperature must be 0 (greedy) or positive, not {sp.temperature}"),
              (0 < sp.top_p <= 1, f"top_p must lie in (0, 1], not {sp.top_p}"),
              (sp.top_k >= 0, f"top_k must be 0 (off) or positive, not {sp.top_k}"),
              (sp.n >= 1, f"n must be at least 1, not {sp.n}"),
              (all(isinstance(s, str) and s for s in sp.stop_strings), "stop strings must be non-empty texts")]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(f"sampling: {msg}")


def make_engine(model, *, eos_ids: Sequence[int], pad_id: int, mesh=None, cache_dtype: str | None = None,
                weights_dtype: str | None = None, **sizes):
    """An :class:`~rmr1_jax.sampling.engine.Engine` with the :class:`EngineConfig` fields
    ``sizes`` (``max_slots``, ``page_size``, ``kv_pages``, ``prefill_chunk``, ...); an unknown
    or invalid size is a ConfigError."""
    from rmr1_jax.sampling.engine import Engine, EngineConfig

    known = {f.name for f in dataclasses.fields(EngineConfig)}
    unknown = sorted(set(sizes) - known)
    if unknown:
        raise ConfigError(f"unknown engine size {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        config = EngineConfig(**{k: v for k, v in sizes.items() if v is not None})
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return Engine(model, eos_ids=eos_ids, pad_id=pad_id, mesh=mesh, config=config, cache_dtype=cache_dtype,
                  weights_dtype=weights_dtype)


def generate(model, params, prompt_ids: Sequence[Sequence[int]], sp: SamplingParams | None = None, *,
             eos_ids: Sequence[int], pad_id: int, rng=None, seed: int = 0, tokenizer=None,
             prompt_index: Sequence[int] | None = None, mesh=None, cache_dtype: str | None = None,
             weights_dtype: str | None = None, **sizes) -> Generation:
    """``sp.n`` samples of each token-id prompt through a new engine (``sizes``: the fields of
    :class:`~rmr1_jax.sampling.engine.EngineConfig`, e.g. ``max_slots=16, page_size=16``).

    Returns a :class:`~rmr1_jax.sampling.sampler.Generation`, rows prompt-major (prompt ``i``'s
    samples are rows ``i * n`` to ``i * n + n - 1``): ``tokens`` and ``logprobs``
    [rows, max_new_tokens] (pad id and 0 after each row's end), ``lengths``, ``finished``, and
    ``texts`` when a ``tokenizer`` is given (needed for ``stop_strings``). Draws use ``rng``
    (default ``jax.random.key(seed)``) and each prompt's ``prompt_index`` (default its
    position). Each call builds a new engine, whose programs compile again: a loop of calls
    builds one with :func:`make_engine` and calls its ``generate``."""
    import jax

    sp = sp or SamplingParams()
    check_sampling(sp)
    engine = make_engine(model, eos_ids=eos_ids, pad_id=pad_id, mesh=mesh, cache_dtype=cache_dtype,
                         weights_dtype=weights_dtype, **sizes)
    rng = jax.random.key(seed) if rng is None else rng
    return engine.generate(params, [[int(t) for t in p] for p in prompt_ids], sp, rng=rng, tokenizer=tokenizer,
                           prompt_index=prompt_index)


@dataclasses.dataclass
class Generator:
    """A causal LM ready to generate: the model, its parameters and tokenizer, and one engine
    (compiled once, reused by every call)."""

    model: object
    params: object
    tokenizer: object
    engine: object
    source: str
    tokenizer_path: str | None = None

    def prompt_ids(self, prompt, raw: bool = False) -> list[int]:
        """The token ids of a prompt: ``raw`` text as is, else the chat template's rendering of
        the messages (a text is one user message) with the generation prompt."""
        from rmr1_jax.inference.rows import conversation

        tok = self.tokenizer
        if raw:
            return tok.encode(prompt)
        return tok.encode(tok.apply_chat_template(conversation(prompt), add_generation_prompt=True))

    def fingerprint(self, sp: SamplingParams, **options) -> dict:
        """What generated rows depend on besides their prompts (for a resumed output file,
        :mod:`rmr1_jax.data.resumable`): the model, tokenizer and chat template, the sampling
        settings and the ``options`` given (seed, raw, input)."""
        from rmr1_jax.checkpoint.identity import checkpoint_identity, text_digest

        model = checkpoint_identity(self.source) if os.path.isdir(self.source) else self.source
        tok = None if self.tokenizer_path is None else os.path.realpath(self.tokenizer_path)
        return {"model": model, "tokenizer": tok,
                "chat_template": text_digest(getattr(self.tokenizer, "chat_template", None)),
                "max_new_tokens": sp.max_new_tokens, "temperature": sp.temperature, "top_p": sp.top_p,
                "top_k": sp.top_k, "n": sp.n, "stop": list(sp.stop_strings), **options}


def load_generator(path: str, mesh, *, tokenizer_path: str | None = None, dtype: str = "float32",
                   **sizes) -> Generator:
    """A :class:`Generator` from an HF causal-LM directory or an Orbax checkpoint
    (:func:`~rmr1_jax.inference.loading.load_lm`: the tokenizer and chat template it was
    trained with), its engine of ``sizes`` (:func:`make_engine`)."""
    from rmr1_jax.inference.loading import load_lm

    model, params, tok, _ = load_lm(path, mesh, tokenizer_path=tokenizer_path, dtype=dtype)
    engine = make_engine(model, eos_ids=tok.eos_ids, pad_id=tok.pad_id, mesh=mesh, **sizes)
    return Generator(model, params, tok, engine, path, tokenizer_path)


@dataclasses.dataclass
class GenerateStats(FileStats):
    """:class:`FileStats` plus the tokens generated by this run and its seconds."""

    tokens: int = 0
    seconds: float = 0.0


def generate_file(g: Generator, in_path: str, out_path: str, sp: SamplingParams, *, raw: bool = False,
                  seed: int = 0, batch_size: int | None = None, rows: list | None = None,
                  progress: Callable[[int, int], None] | None = None) -> GenerateStats:
    """What ``rmr1 generate`` does: ``sp.n`` completions of every prompt row of the JSONL file
    ``in_path`` (see the module docstring) into ``out_path``, one output row per input row, in
    input order.

    Every row is checked and tokenized before anything is generated (``rows``: the file's rows
    as :func:`~rmr1_jax.inference.rows.read_generate_rows` gave them, if already read).
    Resumable (:class:`~rmr1_jax.data.resumable.ResumableOutput`): rows already in
    ``out_path`` are skipped and the others generated ``batch_size`` prompts per engine call
    (default :data:`ROWS_PER_SLOT` x the engine's slots over the mesh / ``n``), each call's rows appended,
    flushed and fsynced; an output written for another input, model or sampling setting
    (:meth:`Generator.fingerprint`) is an error."""
    import jax

    from rmr1_jax.data.resumable import ResumableOutput
    from rmr1_jax.inference.rows import read_generate_rows

    check_sampling(sp)
    if os.path.abspath(in_path) == os.path.abspath(out_path):
        raise UserError(f"{out_path}: the output file must not be the input file")
    rows = read_generate_rows(in_path, raw) if rows is None else rows
    index = {n: i for i, (n, _) in enumerate(rows)}  # the row's place in the file keys its draws
    if batch_size is None:
        batch_size = max(1, -(-ROWS_PER_SLOT * g.engine.config.max_slots * g.engine.shards // sp.n))
    elif batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be positive")
    fingerprint = g.fingerprint(sp, seed=seed, raw=raw, input=os.path.realpath(in_path))
    vocab = int(g.model.cfg.vocab_size)
    with ResumableOutput(out_path, in_path, dict(rows), fingerprint=fingerprint, output_fields=OUTPUT_FIELDS) as out:
        todo = [(n, row) for n, row in rows if n not in out.done]
        ids = {}
        for n, row in todo:
            ids[n] = g.prompt_ids(row["prompt"], raw)
            if not ids[n]:
                raise DataError(f"{in_path}:{n}: the prompt encodes to no tokens")
            if max(ids[n]) >= vocab:
                raise DataError(f"{in_path}:{n}: token id {max(ids[n])} is outside the model's vocabulary "
                                f"({vocab}); is --tokenizer the model's?")
        stats = GenerateStats(total=len(rows), skipped=len(rows) - len(todo))
        rng = jax.random.key(seed)
        t0 = time.perf_counter()
        for b in range(0, len(todo), batch_size):
            batch = todo[b:b + batch_size]
            gen = g.engine.generate(g.params, [ids[n] for n, _ in batch], sp, rng=rng, tokenizer=g.tokenizer,
                                    prompt_index=[index[n] for n, _ in batch], shared=True)
            done = [_output_row(n, row, gen, i * sp.n, sp.n) for i, (n, row) in enumerate(batch)]
            out.append(done)
            stats.written += len(done)
            stats.tokens += int(gen.lengths.sum())
            if progress:
                progress(stats.skipped + stats.written, stats.total)
        stats.seconds = time.perf_counter() - t0
    return stats


def _output_row(line: int, row: dict, gen: Generation, first: int, n: int) -> dict:
    """The output row of input ``row``: its fields, then its ``n`` samples (rows ``first`` on)."""
    samples = range(first, first + n)
    lengths = [int(gen.lengths[r]) for r in samples]
    return {**{k: v for k, v in row.items() if k not in OUTPUT_FIELDS}, "line": line,
            "completions": [gen.texts[r] for r in samples],
            "token_ids": [gen.tokens[r, :k].tolist() for r, k in zip(samples, lengths)],
            "logprobs": [[float(x) for x in gen.logprobs[r, :k]] for r, k in zip(samples, lengths)],
            "finished": [bool(gen.finished[r]) for r in samples]}
