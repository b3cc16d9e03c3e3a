"""One process of the two-process export test (run by test_export_multihost.py, not by
pytest): a random Qwen2 loaded onto an fsdp mesh over both processes (4 CPU devices each),
exported with ``save_hf`` several ways and converted from an Orbax checkpoint with
``orbax_to_hf``. Every array this process gets back from the per-tensor gather is tracked, and
a warm export runs under tracemalloc, to show how much of the model this process ever holds.
Last, ``rmr1 convert orbax-to-hf`` with process 0's final write failing with a ValueError (not an
OSError): the worker exits with the command's status, its one error line in ``cli.<pid>.json``."""

import contextlib
import io
import json
import os
import sys
import tracemalloc
import weakref

CHATML = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "text", "fixtures", "chatml")


def main():
    hf_dir, ckpt_dir, root = sys.argv[1:4]
    from rmr1_jax.parallel.mesh import initialize_distributed

    initialize_distributed()
    import jax

    import rmr1_jax as rj
    from rmr1_jax.checkpoint import convert, hf_export
    from rmr1_jax.errors import CheckpointError
    from rmr1_jax.parallel import MeshConfig, make_mesh

    assert jax.process_count() == 2 and jax.device_count() == 8, (jax.process_count(), jax.device_count())
    mesh = make_mesh((1, 8, 1))
    model, params = rj.load_hf(hf_dir, mesh=mesh)
    leaves = jax.tree.leaves(params)
    assert not any(x.is_fully_addressable for x in leaves)  # really spread over both processes

    live = {"now": 0, "max": 0, "full": 0}  # bytes of gathered tensors alive on this process
    gather = hf_export.gather_to_writer

    def tracked(x):
        out = gather(x)
        if out is not None:
            live["now"] += out.nbytes
            live["max"] = max(live["max"], live["now"])
            live["full"] += 1
            weakref.finalize(out, lambda n=out.nbytes: live.__setitem__("now", live["now"] - n))
        return out

    hf_export.gather_to_writer = tracked
    hf_export._WRITE_CHUNK_BYTES = 64 * 1024  # the HF-layout copy in pieces much smaller than a tensor

    rj.save_hf(model, params, f"{root}/f32-files", dtype="float32", max_shard_bytes=1_500_000)
    rj.save_hf(model, params, f"{root}/bf16", dtype="bfloat16")
    tracemalloc.start()  # a warm export: every compile is cached, what remains is the export's own
    rj.save_hf(model, params, f"{root}/f32-measured", dtype="float32")
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    convert.orbax_to_hf(ckpt_dir, f"{root}/converted", dtype="float32", mesh_cfg=MeshConfig(1, -1, 1),
                        tokenizer_dir=CHATML)
    try:  # process 0 refuses the non-empty directory: every process must raise, none may hang
        rj.save_hf(model, params, f"{root}/bf16", dtype="bfloat16")
        refused = None
    except CheckpointError as e:
        refused = str(e)
    try:  # the conversion refuses it too, before restoring anything
        convert.orbax_to_hf(ckpt_dir, f"{root}/converted", mesh_cfg=MeshConfig(1, -1, 1), tokenizer_dir=CHATML)
        refused_convert = None
    except CheckpointError as e:
        refused_convert = str(e)
    write = hf_export._SafetensorsStream.write
    calls = [0]

    def full_disk(self, *a):  # process 0's disk fills up at the third tensor
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(28, "No space left on device")
        return write(self, *a)

    hf_export._SafetensorsStream.write = full_disk
    try:
        rj.save_hf(model, params, f"{root}/failed", dtype="float32", max_shard_bytes=1_500_000)
        failed = None
    except CheckpointError as e:
        failed = str(e)
    hf_export._SafetensorsStream.write = write
    res = {"failed": failed, "refused_convert": refused_convert, "max_live": live["max"], "full_tensors": live["full"], "traced_peak": traced_peak, "refused": refused,
           "params_bytes": sum(x.nbytes for x in leaves)}
    with open(f"{root}/result.{jax.process_index()}.json", "w") as f:
        json.dump(res, f)
    return cli_export_failing_on_process_0(ckpt_dir, root)


def cli_export_failing_on_process_0(ckpt_dir, root) -> int:
    """``rmr1 convert orbax-to-hf`` whose final write (config, tokenizer files, rename) raises a
    ValueError on process 0 alone: every process must exit non-zero with one line, none left
    waiting in a collective."""
    import jax

    from rmr1_jax import cli
    from rmr1_jax.checkpoint import hf_export
    from rmr1_jax.parallel import mesh

    def broken(*_):
        raise ValueError("chat template cannot be written\n(second line)")

    if jax.process_index() == 0:
        hf_export._finish = broken
    mesh.initialize_distributed = lambda *a, **k: None  # this process joined the job already
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(["convert", "orbax-to-hf", "--ckpt", ckpt_dir, "--out", f"{root}/cli-failed", "--mesh", "1,-1,1",
                       "--tokenizer", CHATML])
    sys.stderr.write(err.getvalue())
    with open(f"{root}/cli.{jax.process_index()}.json", "w") as f:
        json.dump({"rc": rc, "stderr": err.getvalue()}, f)
    return rc


if __name__ == "__main__":
    sys.exit(main())
