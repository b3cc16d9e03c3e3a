"""The options several ``rmr1`` commands share, declared once so that they read the same
everywhere: one name and one default per meaning.

The vocabulary:

* ``--ckpt DIR``: every model a command reads (Orbax checkpoint, LoRA adapter run, or a
  Hugging Face directory; the kind is detected from the directory).
* ``--tokenizer DIR``: a tokenizer other than the checkpoint's own.
* ``--in FILE``: the JSONL rows a command reads; ``--out FILE``: the one file it writes
  (``--out DIR`` for ``convert``, whose one output is a checkpoint directory);
  ``--out-dir DIR``: a directory of several outputs (``eval`` reports, ``demo`` runs).
* ``--batch-size`` (default 16): rows per forward pass or per generation batch.
* ``--max-new-tokens`` (default 4096): the generation budget of a judgment (or completion).
* ``--max-length N`` and ``--overlong error|truncate``: the longest row in tokens and what a
  longer one does, the names ``data.max_length`` / ``data.overlong`` have in recipes.
* ``--mesh DATA,FSDP,TENSOR``: the device mesh (default: every device on the data axis).

An old spelling keeps working for one release and prints a one-line note naming the new one
(:func:`renamed`)."""

from __future__ import annotations

import argparse
import sys

BATCH_SIZE = 16
MAX_NEW_TOKENS = 4096
MAX_LENGTH = 4096


def _deprecated(base: type[argparse.Action], new: str) -> type[argparse.Action]:
    class Renamed(base):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"rmr1: note: {option_string} is deprecated and will be removed in the next release; "
                  f"use {new}", file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)

    return Renamed


def renamed(parser, old: str, new: str, dest: str, *, const=None) -> None:
    """Accept the old spelling ``old`` of ``new`` (same ``dest``), hidden from ``--help``.
    With ``const`` the old spelling was a flag that stands for ``new const``."""
    if const is None:
        parser.add_argument(old, dest=dest, help=argparse.SUPPRESS, action=_deprecated(argparse._StoreAction, new))
    else:
        parser.add_argument(old, dest=dest, const=const, help=argparse.SUPPRESS,
                            action=_deprecated(argparse._StoreConstAction, f"{new} {const}"))


def require(parser, *flags: str) -> None:
    """Options that must be given, checked after parsing (:func:`check_required`) so that an
    old spelling (:func:`renamed`) satisfies them too."""
    parser.set_defaults(_required=tuple(flags), _parser=parser)


def check_required(args) -> None:
    missing = [f for f in getattr(args, "_required", ()) if getattr(args, _dest(f)) in (None, [])]
    if missing:
        args._parser.error(f"the following arguments are required: {', '.join(missing)}")


def _dest(flag: str) -> str:
    name = flag.lstrip("-").replace("-", "_")
    return "inp" if name == "in" else name


def ckpt(parser, help: str, *, old: str | None = None) -> None:
    parser.add_argument("--ckpt", default=None, metavar="DIR", help=help)
    if old:
        renamed(parser, old, "--ckpt", "ckpt")


def tokenizer(parser, help: str = "tokenizer directory (default: the checkpoint's own)", *,
              old: str | None = None) -> None:
    parser.add_argument("--tokenizer", default=None, metavar="DIR", help=help)
    if old:
        renamed(parser, old, "--tokenizer", "tokenizer")


def in_file(parser, help: str, *, old: str | None = None) -> None:
    parser.add_argument("--in", dest="inp", default=None, metavar="FILE", help=help)
    if old:
        renamed(parser, old, "--in", "inp")


def out_file(parser, help: str) -> None:
    parser.add_argument("--out", default=None, metavar="FILE", help=help)


def out_dir(parser, help: str) -> None:
    parser.add_argument("--out-dir", default=None, metavar="DIR", help=help)
    renamed(parser, "--out", "--out-dir", "out_dir")


def batch_size(parser, help: str = "rows per forward pass") -> None:
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"{help} (default {BATCH_SIZE})")


def max_new_tokens(parser, what: str = "judgment") -> None:
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                        help=f"generation budget of each {what} in tokens (default {MAX_NEW_TOKENS})")


def overlong(parser, *, max_length: int | None = MAX_LENGTH, what: str = "") -> None:
    """``--max-length`` and ``--overlong``, the flags of ``data.max_length`` / ``data.overlong``;
    ``--truncate`` is the old spelling of ``--overlong truncate``."""
    dflt = "the checkpoint's training data.max_length" if max_length is None else str(max_length)
    parser.add_argument("--max-length", type=int, default=max_length,
                        help=f"{what}longest row in tokens (default {dflt})")
    parser.add_argument("--overlong", default="error", choices=("error", "truncate"),
                        help=f"{what}a longer row: fail naming it, or truncate it to --max-length tokens")
    renamed(parser, "--truncate", "--overlong", "overlong", const="truncate")


def mesh(parser) -> None:
    parser.add_argument("--mesh", default=None, metavar="DATA,FSDP,TENSOR",
                        help="device mesh (default: every device on the data axis; one entry may be -1)")


def mesh_of(args):
    """The ``jax.sharding.Mesh`` of ``--mesh``: the one place a command line's mesh is parsed."""
    from rmr1_jax.parallel.mesh import make_mesh, parse_mesh

    return make_mesh(parse_mesh(getattr(args, "mesh", None)))


def mesh_config(args):
    """``--mesh`` as a :class:`~rmr1_jax.parallel.MeshConfig` (for jobs that build the mesh later)."""
    from rmr1_jax.parallel.mesh import parse_mesh

    return parse_mesh(getattr(args, "mesh", None))


def prompt_template(parser) -> None:
    """The judge prompt options of ``judge`` and ``eval``."""
    parser.add_argument("--prompt-variant", choices=["instruct", "reasoning"], default=None,
                        help="judge prompt family (default: the checkpoint's)")
    parser.add_argument("--system-file", default=None, metavar="FILE", help="judge system prompt template")
    parser.add_argument("--user-file", default=None, metavar="FILE", help="judge user prompt template")
