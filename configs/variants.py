"""The one parser of config arguments: `--config=configs/NAME.py:VARIANT` calls
get_config("VARIANT"), and every config checks it here against its module's VARIANTS, so a
misspelled variant is an error naming the valid ones instead of silently giving the default
experiment. `shipped()` lists every config file and its variants (for tests and benchmarks)."""

import importlib
import os
import pathlib

CONFIG_DIR = pathlib.Path(__file__).resolve().parent


def parse_variant(config_file: str, arg, variants: tuple[str, ...] = ()) -> str:
    """The variant `arg` ("" when none was given) if `variants` lists it, else one ValueError.

    config_file: the caller's __file__ (for the message); variants: the non-default names.
    """
    name = f"configs/{os.path.basename(config_file)}"
    chosen = "" if arg is None else str(arg).strip()
    if chosen and chosen not in variants:
        if not variants:
            raise ValueError(f"{name} takes no variant (got {chosen!r}); use --config={name}.")
        valid = ", ".join(f"{name}:{v}" for v in variants)
        raise ValueError(
            f"{name} has no variant {chosen!r}; use {name} for the default or one of: {valid}."
        )
    return chosen


def _has_get_config(path: pathlib.Path) -> bool:
    return any(line.startswith("def get_config(") for line in path.read_text().splitlines())


def shipped() -> dict:
    """{config name: its VARIANTS} of every file in configs/ that has a get_config."""
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if _has_get_config(p))
    return {name: importlib.import_module(f"configs.{name}").VARIANTS for name in names}


def specs() -> list:
    """Every shipped experiment as "name" or "name:variant"."""
    return [f"{n}{':' + v if v else ''}" for n, vs in shipped().items() for v in ("", *vs)]
