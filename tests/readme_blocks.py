"""The README's marked command blocks, read the way a user reads them.

A block is marked by an HTML comment just above its fence, invisible on GitHub:

    <!-- test: quick (...) -->        each command line runs on its own and must exit 0
    ```bash                            (tests/test_readme.py)
    ...
    ```

    <!-- test: own-data (...) -->     the whole block runs as one bash script
    ```bash                            (tests/test_own_data.py)

The tests take the commands from README.md itself, so the README cannot drift from what runs."""

from __future__ import annotations

import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
_MARKED = re.compile(r"<!-- test: (?P<tag>[\w-]+)\b.*?-->\s*```bash\n(?P<code>.*?)```", re.S)
_FENCED = re.compile(r"```bash\n(.*?)```", re.S)


def marked_blocks(tag: str, path: str = README) -> list[str]:
    """The code of every ```bash block that ``<!-- test: TAG ... -->`` marks in ``path``."""
    text = open(path, encoding="utf-8").read()
    return [m.group("code") for m in _MARKED.finditer(text) if m.group("tag") == tag]


def bash_blocks(path: str) -> list[str]:
    """Every ```bash block of a markdown file."""
    return _FENCED.findall(open(path, encoding="utf-8").read())


def command_lines(code: str) -> list[str]:
    """The block's commands: continuation lines (``\\``) joined, blank and comment lines dropped."""
    out, cur = [], ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        if cur.strip() and not cur.lstrip().startswith("#"):
            out.append(cur.strip())
        cur = ""
    return out


def user_env() -> dict:
    """The environment of a user with the project's virtualenv active: its ``rmr1`` and
    ``python`` first on PATH, CPU only."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def clone_inputs(work: str) -> None:
    """Copy what a fresh clone gives the README's commands to read (examples/ and configs/)
    into ``work``, and nothing else: no runs/ of earlier jobs."""
    for name in ("examples", "configs"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(work, name))
