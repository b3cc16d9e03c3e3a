"""The ``rmr1`` command: :func:`main` parses the command line (every parser is built in
:mod:`rmr1_jax.cli.parsers` from the shared options of :mod:`rmr1_jax.cli.options`) and runs
the command's handler, a thin call of a library function (:mod:`rmr1_jax.cli.jobs`,
:mod:`rmr1_jax.cli.evaluate`, :mod:`rmr1_jax.cli.rules`).

Any :class:`~rmr1_jax.errors.UserError` ends the command with one line on stderr and exit
status 2, on every process of a multi-host job (:mod:`rmr1_jax.parallel.agreement`)."""

from __future__ import annotations

import sys

from rmr1_jax.cli.parsers import build_parser
from rmr1_jax.errors import UserError

__all__ = ["build_parser", "main"]


class _QuietReadOnly:
    """Orbax warns each time a checkpoint directory is opened read-only, which is exactly
    what restoring for conversion or judging does."""

    def filter(self, record) -> bool:
        return "read only" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    import logging

    from rmr1_jax.cli.options import check_required
    from rmr1_jax.cli.platforms import skip_absent_tpu

    logging.getLogger("absl").addFilter(_QuietReadOnly())
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (rmr1 plan CONFIG --topology T k=v)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    check_required(args)
    skip_absent_tpu()  # before JAX starts a backend: libtpu's probe is noisy where no TPU is
    try:
        from rmr1_jax.parallel.mesh import initialize_distributed

        initialize_distributed()  # a no-op unless this is one process of a multi-host job
        args.func(args)
    except UserError as e:
        print(f"rmr1 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rmr1 {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
