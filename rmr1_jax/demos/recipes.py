"""Where a demo's recipe lives (``configs/<name>`` of this checkout) and how ``--quick``
overrides it (``quick.yaml``: ``{section: [key=value, ...]}``; other override files of a
recipe, such as RAMO's ``hard.yaml``, have the same layout)."""

from __future__ import annotations

import os


def recipe_dir(name: str = "demo") -> str:
    """``configs/<name>`` of this checkout (``demo``: the RM-R1 demo, ``demo_ramo``: RAMO's)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # rmr1_jax/
    return os.path.join(os.path.dirname(package), "configs", name)


def read_quick(directory: str, sections: tuple[str, ...], quick: bool = True,
               filename: str = "quick.yaml") -> dict[str, list[str]]:
    """``quick.yaml`` (or ``filename``) of a demo recipe directory: ``{section: [key=value, ...]}``
    (empty when not ``quick``); a missing directory or an unknown section is one ConfigError line."""
    from rmr1_jax.config import load_yaml
    from rmr1_jax.errors import ConfigError

    if not os.path.isdir(directory):
        raise ConfigError(f"{directory}: the demo recipe directory is missing (configs/ of the rmr1_jax checkout)")
    over = load_yaml(os.path.join(directory, filename)) if quick else {}
    for key, value in over.items():
        if key not in sections or not isinstance(value, list):
            raise ConfigError(f"{directory}/{filename}: {key!r} must be one of {', '.join(sections)}, "
                              f"holding a list of key=value overrides")
    return over
