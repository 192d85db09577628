"""Tests for cm/io/fileio.py, the one file layer, and a scan that keeps every other module on it."""

import io
import os
import pathlib
import re
import tokenize

import numpy as np
import pytest
from etils.epath import gpath
from etils.epath import testing as epath_testing
from PIL import Image

from cm.data import sources
from cm.io import fileio, images
from configs.common import base_config

ROOT = pathlib.Path(__file__).resolve().parent.parent

# --- every path goes through cm/io/fileio.py ---------------------------------------------------


# Calls that touch a path without cm/io/fileio.py: builtin open, os file and path functions,
# glob, shutil, tempfile, pathlib and epath used directly, and numpy reading or writing a file
# (numpy on an in-memory io.BytesIO is fine).
FORBIDDEN = re.compile(
    r"(?<![\w.])open\("
    r"|\bos\.(makedirs|mkdir|replace|rename|remove|unlink|rmdir|walk|listdir|scandir)\b"
    r"|\bos\.path\b"
    r"|\bglob\.i?glob\b"
    r"|\bshutil\b"
    r"|\btempfile\b"
    r"|\bpathlib\b"
    r"|\bepath\b"
    r"|\bnp\.(load|save|savez|savez_compressed|loadtxt|savetxt|fromfile)\((?!\s*io\.BytesIO\()"
)


def code_lines(source: str) -> list[str]:
    """The lines of a Python source with strings and comments blanked out, so that a message
    or docstring that mentions open( is not a call."""
    lines = [list(line) for line in source.splitlines(keepends=True)]
    hidden = {tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", None)}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in hidden:
            continue
        (r0, c0), (r1, c1) = tok.start, tok.end
        for r in range(r0, r1 + 1):
            line = lines[r - 1]
            lo, hi = (c0 if r == r0 else 0), (c1 if r == r1 else len(line))
            for c in range(lo, hi):
                if line[c] != "\n":
                    line[c] = " "
    return ["".join(line) for line in lines]


def violations(relative: str, source: str) -> list[str]:
    """'file:line: code' for each line whose code (not strings or comments) is FORBIDDEN."""
    original = source.splitlines()
    return [
        f"{relative}:{number}: {original[number - 1].strip()}"
        for number, line in enumerate(code_lines(source), 1)
        if FORBIDDEN.search(line)
    ]


def test_no_module_touches_files_without_fileio():
    found = []
    for file in sorted((ROOT / "cm").rglob("*.py")):
        relative = file.relative_to(ROOT).as_posix()
        if relative == "cm/io/fileio.py":
            continue
        found += violations(relative, file.read_text())
    assert not found, "file access outside cm/io/fileio.py:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "line",
    [
        "with open(path) as f:",
        "x = open(path, 'wb')",
        "os.makedirs(d, exist_ok=True)",
        "os.replace(tmp, path)",
        "os.rename(a, b)",
        "os.remove(p)",
        "p = os.path.join(a, 'b')",
        "os.path.abspath(workdir)",
        "for d, _, f in os.walk(root):",
        "names = os.listdir(d)",
        "files = glob.glob('*.png')",
        "shutil.rmtree(d)",
        "import shutil",
        "with np.load(path) as f:",
        "np.savez(path, a=a)",
        "np.savez_compressed(path + '.npz', a=a)",
        "np.save(path, a)",
        "epath.Path(p).write_bytes(b)",
        "pathlib.Path(p).mkdir()",
    ],
)
def test_scan_catches_forbidden_calls(line):
    assert violations("x.py", line + "\n") == [f"x.py:1: {line}"]


@pytest.mark.parametrize(
    "line",
    [
        "with fileio.open_file(p) as f, Image.open(f) as im:",
        "archive.open(name)",
        "np.load(io.BytesIO(data))",
        "np.savez(io.BytesIO(), a=a)",
        "raise ValueError(f'cannot open({path}) with np.load(path)')",
        "x = 1  # os.path.join would break gs:// paths",
        "fileio.makedirs(d)",
    ],
)
def test_scan_ignores_allowed_code_strings_and_comments(line):
    assert violations("x.py", line + "\n") == []


# --- atomic writes --------------------------------------------------------------------------


def test_atomic_write_replaces_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    fileio.write_bytes_atomic(str(target), b"first")  # creates the folder
    fileio.write_bytes_atomic(str(target), b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["f.bin"]
    fileio.write_json_atomic(tmp_path / "c.json", {"a": [1, 2]})
    assert fileio.read_json(tmp_path / "c.json") == {"a": [1, 2]}
    assert fileio.write_new(tmp_path / "n", b"x") and not fileio.write_new(tmp_path / "n", b"y")
    assert (tmp_path / "n").read_bytes() == b"x"


@pytest.mark.parametrize("fail", ["fsync", "replace"])
def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch, fail):
    target = tmp_path / "f.bin"
    fileio.write_bytes_atomic(target, b"old")

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, fail, broken)
    with pytest.raises(OSError, match="disk full"):
        fileio.write_bytes_atomic(target, b"new content")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]  # the temporary is removed too


def test_npz_round_trip_subset_and_no_pickles(tmp_path):
    path = tmp_path / "a.npz"
    arrays = {"x": np.arange(6.0).reshape(2, 3), "y": np.array([1, -2], np.int32)}
    fileio.save_npz_atomic(path, **arrays)
    loaded = fileio.load_npz(str(path))
    assert set(loaded) == {"x", "y"}
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype
        np.testing.assert_array_equal(loaded[k], v)
    assert list(fileio.load_npz(path, keys=["y"])) == ["y"]
    with pytest.raises(KeyError):
        fileio.load_npz(path, keys=["z"])
    fileio.save_npz_atomic(path, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        fileio.load_npz(path)


# --- folders and paths ----------------------------------------------------------------------


def test_listdir_sorted_and_empty_for_missing(tmp_path):
    for name in ("b", "a", "c"):
        (tmp_path / name).write_text(name)
    assert fileio.listdir(tmp_path) == ["a", "b", "c"]
    assert fileio.listdir(tmp_path / "missing") == []
    fileio.remove(tmp_path / "a")
    fileio.remove(tmp_path / "a")  # already gone: no error
    assert fileio.listdir(tmp_path) == ["b", "c"]


def test_walk_files_order_and_symlinked_folders(tmp_path):
    for relative in ("z.png", "a.png", "b/x.png", "b/c/y.png", "a/q.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("")
    (tmp_path / "a" / "link").symlink_to(tmp_path / "b")
    # Files of a folder first, then its subfolders, all by name; the link is followed.
    assert fileio.walk_files(tmp_path) == [
        "a.png",
        "z.png",
        "a/q.png",
        "a/link/x.png",
        "a/link/c/y.png",
        "b/x.png",
        "b/c/y.png",
    ]
    assert fileio.walk_files(tmp_path / "missing") == []


def test_local_absolute_leaves_urls_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(fileio.local_absolute("gs://bucket/run")) == "gs://bucket/run"
    assert str(fileio.path("gs://bucket/~x")) == "gs://bucket/~x"  # no '~' expansion in URLs
    assert fileio.local_absolute("run") == tmp_path.resolve() / "run"
    assert str(fileio.path("~/x")) == os.path.expanduser("~/x")
    assert fileio.is_remote("gs://b/x") and not fileio.is_remote(tmp_path)


# --- the same calls on a bucket -------------------------------------------------------------


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """gs:// paths served from tmp_path/'gs:' by epath's local mock (and not by TensorFlow's
    GCS client, which epath would otherwise pick), so the object-store branches run. As on a
    bucket, writing an object needs no folder."""

    def open_object(original, path, mode):
        if "w" in mode:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        return original(path, mode)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    with epath_testing.mock_epath(open=open_object):
        yield tmp_path / "gs:" / "bucket"


def test_bucket_writes_are_one_upload(bucket, monkeypatch):
    def no_rename(*args):
        raise AssertionError("an object store has no atomic rename")

    monkeypatch.setattr(fileio.os, "replace", no_rename)
    fileio.save_npz_atomic("gs://bucket/run/a.npz", x=np.arange(3))
    assert os.listdir(bucket / "run") == ["a.npz"]
    np.testing.assert_array_equal(fileio.load_npz("gs://bucket/run/a.npz")["x"], np.arange(3))
    np.testing.assert_array_equal(
        fileio.load_npz("gs://bucket/run/a.npz", keys=["x"])["x"], np.arange(3)
    )
    assert fileio.listdir("gs://bucket/run") == ["a.npz"]
    assert fileio.walk_files("gs://bucket") == ["run/a.npz"]


def test_png_grid_saved_to_a_bucket(bucket):
    grid = np.random.default_rng(0).integers(0, 256, (5, 7, 3), np.uint8)
    images.save_png("gs://bucket/samples/grid.png", grid, upscale=2)
    with Image.open(bucket / "samples" / "grid.png") as im:
        back = np.asarray(im)
    np.testing.assert_array_equal(back, grid.repeat(2, 0).repeat(2, 1))


def test_data_sources_read_from_a_bucket(bucket):
    rng = np.random.default_rng(0)
    pics = rng.integers(0, 256, (4, 6, 6, 3), np.uint8)
    fileio.save_npz_atomic("gs://bucket/d.npz", images=pics, labels=np.arange(4))
    cfg = base_config().data
    cfg.update(name="npz", path="gs://bucket/d.npz", image_size=6, channels=3)
    np.testing.assert_array_equal(sources.load_source(cfg).get(np.arange(4))[0], pics)
    for i, name in enumerate(["cat/a.png", "dog/b.png"]):
        images.save_png(f"gs://bucket/folder/{name}", pics[i])
    cfg.update(name="folder", path="gs://bucket/folder")
    source = sources.load_source(cfg)
    got, labels = source.get(np.arange(2))
    np.testing.assert_array_equal(got, pics[:2])
    assert labels.tolist() == [0, 1] and source.class_names == ["cat", "dog"]
