"""``rmr1 serve``: one trained model behind HTTP, in the shapes RL frameworks call (OpenRLHF's
remote reward, vLLM's classify and score, OpenAI's chat completions) and a ``/judge`` route
of its own (:mod:`rmr1_jax.serve.app`). Requests arriving together run as one call of the
model (:mod:`rmr1_jax.serve.batcher`) on the generation engine or the scalar scorer
(:mod:`rmr1_jax.serve.backend`)."""

from __future__ import annotations


def serve(path: str, *, host: str = "127.0.0.1", port: int = 8000, mesh=None, tokenizer_path: str | None = None,
          max_batch: int = 64, max_queue: int = 256, timeout: float = 600.0, max_body_bytes: int = 8 << 20,
          max_slots: int = 32, max_new_tokens: int = 1024, prompt_variant: str | None = None,
          system_file: str | None = None, user_file: str | None = None, log=print) -> None:
    """Load ``path`` (an Orbax checkpoint or HF directory: a causal LM is served as a judge, a
    scalar head as a reward model) and serve it until interrupted. A judge's prompt template:
    the checkpoint's unless ``prompt_variant``, ``system_file`` or ``user_file`` say otherwise."""
    import os

    import jax
    import uvicorn

    from rmr1_jax.errors import UserError
    from rmr1_jax.parallel import make_mesh
    from rmr1_jax.serve.app import make_app
    from rmr1_jax.serve.backend import Backend
    from rmr1_jax.serve.batcher import Batcher

    if jax.process_count() > 1:
        raise UserError("rmr1 serve runs in one process (it may use every local device through --mesh)")
    backend = Backend(path, mesh if mesh is not None else make_mesh(), tokenizer_path=tokenizer_path,
                      max_slots=max_slots, batch_size=max_batch, prompt_variant=prompt_variant,
                      system_file=system_file, user_file=user_file)
    batcher = Batcher(backend.run, max_batch=max_batch, max_queue=max_queue)
    name = os.path.basename(os.path.normpath(path))
    app = make_app(backend, batcher, name=name, timeout=timeout, max_body_bytes=max_body_bytes, max_units=max_batch,
                   max_new_tokens=max_new_tokens)
    log(f"serving {path} ({backend.kind}) on http://{host}:{port}")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        batcher.close()
