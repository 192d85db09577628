"""The one parser of config arguments: `--config=configs/NAME.py:VARIANT` calls
get_config("VARIANT"), and every config checks it here, so a misspelled variant is an error
naming the valid ones instead of silently giving the default experiment."""

import os


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
