"""Running the CLI as a new user does: in an empty working directory, relative paths."""

import contextlib
import io
import os

from rmr1_jax import cli


def run_in_empty_dir(tmp_path_factory, name: str, argv: list[str]):
    """A generator for a module-scoped fixture: runs ``rmr1 *argv`` in a fresh empty directory
    (which stays the working directory until the fixture ends) and yields (directory, stdout)."""
    cwd = os.getcwd()
    work = tmp_path_factory.mktemp(name)
    os.chdir(work)
    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            assert cli.main(argv) == 0
        yield work, text.getvalue()
    finally:
        os.chdir(cwd)


def handle(*argv: str):
    """Parse ``rmr1 *argv`` as the command line does and run its handler, returning what it
    returns; errors propagate (unlike :func:`rmr1_jax.cli.main`, which turns them into exit 2)."""
    from rmr1_jax.cli.options import check_required

    args = cli.build_parser().parse_args(list(argv))
    check_required(args)
    return args.func(args)
