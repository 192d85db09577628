"""Everything a search has finished, in <workdir>/<lcsc.name>/state.json, so that a killed
search resumes where it stopped and evaluates nothing twice.

JSON, not pickle: loading a state file never runs code. The optimizer itself is not stored;
search.run_search rebuilds it by replaying the finished generations from the cache. The file
is rewritten atomically (cm/io/fileio.py) after every evaluation, by process 0 only.
"""

import dataclasses
import json

import jax

from cm.io import fileio

FILE = "state.json"
LEGACY_FILE = "state.pkl"  # written by earlier versions; never read (pickle can run code)
VERSION = 1


@dataclasses.dataclass
class SearchState:
    steps: list  # snapshot steps searched over
    settings: dict  # the lcsc fields that define the search (run.SEARCH_FIELDS)
    start: list | None = None  # [K] the optimizer's start vector, fixed at the first search
    cache: dict = dataclasses.field(default_factory=dict)  # rounded vector [K] -> search fitness
    others: dict = dataclasses.field(default_factory=dict)  # candidates.key -> search fitness
    history: list = dataclasses.field(default_factory=list)  # one dict per finished generation
    heldout: dict = dataclasses.field(default_factory=dict)  # held-out key -> metrics


def to_json(st: SearchState) -> str:
    value = dataclasses.asdict(st)
    value["cache"] = [[list(k), v] for k, v in st.cache.items()]  # JSON keys are strings
    return json.dumps({"version": VERSION, **value})


def from_json(text: str, where: str) -> SearchState:
    try:
        value = json.loads(text)
        if value.pop("version") != VERSION:
            raise ValueError("version")
        value["cache"] = {tuple(k): v for k, v in value["cache"]}
        return SearchState(**value)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{where} is not a state file of this version of the LCSC search ({e}); delete it or "
            "use another --config.lcsc.name."
        ) from e


def load_or_new(path, steps, settings: dict, name: str) -> SearchState:
    """The saved state at `path` (refused when it searched other snapshots or settings), or an
    empty one when there is none."""
    path = fileio.path(path)
    legacy = path.parent / LEGACY_FILE
    if not fileio.exists(path) and fileio.exists(legacy):
        raise ValueError(
            f"{legacy} was written by an older version, whose pickle state is no longer read; "
            f"delete it to search again or use another --config.lcsc.name (now {name!r})."
        )
    if not fileio.exists(path):
        return SearchState(list(steps), settings)
    saved = from_json(fileio.read_text(path), str(path))
    if saved.steps != list(steps):
        raise ValueError(
            f"{path} holds a search over the snapshots {saved.steps[0]}..{saved.steps[-1]} "
            f"({len(saved.steps)}), not {steps[0]}..{steps[-1]} ({len(steps)}); use another "
            f"--config.lcsc.name (now {name!r}) or the old lcsc.first_step / last_step."
        )
    for key, value in settings.items():
        if saved.settings.get(key) != value:
            raise ValueError(
                f"{path} holds a search with lcsc.{key}={saved.settings.get(key)}, not {value}; "
                f"use another --config.lcsc.name (now {name!r}) or set lcsc.{key} back."
            )
    return saved


def save(st: SearchState, path):
    """Writes `st` to `path` atomically (process 0 only)."""
    if jax.process_index() == 0:
        fileio.write_text_atomic(path, to_json(st))
