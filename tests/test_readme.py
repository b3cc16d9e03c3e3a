"""The README's commands run as written.

* The five-minute tour: every command of the blocks README.md marks ``<!-- test: quick -->``
  (see tests/readme_blocks.py) runs, in order, from a fresh directory that holds only copies of
  the clone's examples/ and configs/ (the tour says "from the clone's root"; the copies stand in
  for a fresh clone, with no runs/ from earlier jobs), with the relative paths as written, and
  must exit 0. These are kept short (help, rules select/label on the example files, a tokenizer,
  a plan on simulated CPU devices): tens of seconds in all.
* Every ``rmr1 ...`` line in a bash block of README.md and docs/*.md parses with the current
  command line: no option that does not exist, no old spelling that prints a deprecation note.
  So no page can teach a command the CLI no longer takes.
"""

import contextlib
import glob
import io
import json
import os
import shlex
import subprocess

import pytest

from readme_blocks import README, ROOT, bash_blocks, clone_inputs, command_lines, marked_blocks, user_env


def test_the_tour_runs_as_written(tmp_path):
    commands = [c for block in marked_blocks("quick") for c in command_lines(block)]
    assert len(commands) >= 6, "README.md lost its marked tour block"
    clone_inputs(str(tmp_path))
    for cmd in commands:
        p = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=user_env(), capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, f"README command failed (exit {p.returncode}): {cmd}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    labels = [json.loads(line) for line in open(tmp_path / "runs/tour/labels.jsonl")]
    assert len(labels) == 12 and all(r["rule_winner"] == r["winner"] for r in labels)
    assert (tmp_path / "runs/tour/tokenizer/tokenizer.model").exists()


def _rmr1_lines():
    pages = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    for page in pages:
        for block in bash_blocks(page):
            for cmd in command_lines(block):
                if cmd.startswith("rmr1 "):
                    yield os.path.relpath(page, ROOT), cmd


@pytest.mark.parametrize("page, cmd", list(_rmr1_lines()))
def test_documented_commands_parse(page, cmd):
    from rmr1_jax.cli import build_parser
    from rmr1_jax.cli.options import check_required

    argv = shlex.split(cmd, comments=True)[1:]
    if "--help" in argv or "--version" in argv:
        return  # run by the tour
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args, extra = build_parser().parse_known_args(argv)
            check_required(args)
        except SystemExit as e:
            pytest.fail(f"{page}: `{cmd}` does not parse (exit {e.code}): {err.getvalue().strip()}")
    bad = [e for e in extra if not (hasattr(args, "overrides") and "=" in e and not e.startswith("-"))]
    assert not bad, f"{page}: `{cmd}`: unrecognized arguments {bad}"
    assert "deprecated" not in err.getvalue(), f"{page}: `{cmd}` uses an old spelling: {err.getvalue().strip()}"
