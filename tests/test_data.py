"""Tests for cm/data/sources.py: sources, the deterministic resumable order, sharding, flips,
errors."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from cm import keys
from cm.data import batches, sources
from configs.common import base_config


def data_config(**overrides):
    cfg = base_config().data
    cfg.update(overrides)
    return cfg


def random_source(n=50, size=6, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)  # [N,S,S,C]
    return sources.ArraySource(images, rng.integers(0, 10, n))


# --- digits -------------------------------------------------------------------------------


def test_digits_splits_shapes_and_values():
    train = sources.load_source(data_config(name="digits", split="train"))
    test = sources.load_source(data_config(name="digits", split="test"))
    assert (len(train), len(test)) == (1500, 297)
    images, labels = train.get(np.arange(len(train)))
    assert images.shape == (1500, 8, 8, 1) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255  # 16 -> 255
    assert labels.dtype == np.int32 and set(labels.tolist()) == set(range(10))
    assert set(test.get(np.arange(len(test)))[1].tolist()) == set(range(10))
    assert sources.image_shape(data_config(name="digits")) == (8, 8, 1)
    with pytest.raises(ValueError, match="train"):
        sources.load_source(data_config(name="digits", split="validation"))


# --- order ----------------------------------------------------------------------------------


def test_global_batch_indices_deterministic_and_epochwise():
    a = batches.global_batch_indices(3, 4, 10, seed=7)
    assert a.dtype == np.int64 and a.shape == (4,)
    np.testing.assert_array_equal(a, batches.global_batch_indices(3, 4, 10, seed=7))
    # Two batches of 5 cover one epoch of 10: every example exactly once.
    epoch0 = np.concatenate([batches.global_batch_indices(s, 5, 10, seed=1) for s in range(2)])
    assert sorted(epoch0.tolist()) == list(range(10))
    # Different seeds give different orders.
    assert not np.array_equal(
        epoch0, np.concatenate([batches.global_batch_indices(s, 5, 10, 2) for s in range(2)])
    )


def test_global_batch_indices_straddles_epochs():
    perm0 = np.random.default_rng(keys.numpy_seed(3, "epoch_permutation", 0)).permutation(10)
    perm1 = np.random.default_rng(keys.numpy_seed(3, "epoch_permutation", 1)).permutation(10)
    # Step 2 with batch 4 is stream positions 8..11: the end of epoch 0 and the start of epoch 1.
    np.testing.assert_array_equal(
        batches.global_batch_indices(2, 4, 10, seed=3), np.concatenate([perm0[8:], perm1[:2]])
    )
    # A batch larger than the dataset spans several epochs.
    big = batches.global_batch_indices(0, 25, 10, seed=3)
    assert sorted(np.bincount(big, minlength=10).tolist()) == [2] * 5 + [3] * 5
    assert sorted(big[:20].tolist()) == sorted(list(range(10)) * 2)


# --- batches, sharding, flips ---------------------------------------------------------------


def test_batch_at_process_shards_concatenate_to_global_batch():
    source = random_source()
    for step in (0, 5, 11):  # 11 straddles an epoch boundary (50 examples, batch 16)
        whole = batches.batch_at(source, step, 16, seed=4, random_flip=True)
        parts = [
            batches.batch_at(source, step, 16, 4, True, process_index=p, process_count=2)
            for p in range(2)
        ]
        assert parts[0]["image"].shape == (8, 6, 6, 3)
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([q[key] for q in parts]), whole[key])
    assert whole["image"].dtype == np.float32 and whole["label"].dtype == np.int32
    assert whole["image"].min() >= -1.0 and whole["image"].max() <= 1.0
    with pytest.raises(ValueError, match="divisible"):
        batches.batch_at(source, 0, 16, 0, False, process_index=0, process_count=3)


def test_batch_at_flips_about_half_the_rows():
    source = random_source(n=400)
    plain = batches.batch_at(source, 2, 400, seed=0, random_flip=False)
    flipped = batches.batch_at(source, 2, 400, seed=0, random_flip=True)
    np.testing.assert_array_equal(plain["label"], flipped["label"])
    mirrored = plain["image"][:, :, ::-1]
    same = np.all(flipped["image"] == plain["image"], axis=(1, 2, 3))
    flip = np.all(flipped["image"] == mirrored, axis=(1, 2, 3))
    assert np.all(same ^ flip)  # every row is either untouched or mirrored left-right
    assert 0.4 < flip.mean() < 0.6
    # Pixel values map uint8 0..255 to [-1, 1].
    images, _ = source.get(batches.global_batch_indices(2, 400, 400, 0))
    np.testing.assert_allclose(plain["image"], images / 127.5 - 1.0, atol=1e-6)


def test_batch_iterator_resumes_exactly():
    source = random_source(n=30)
    kwargs = dict(global_batch=8, seed=5, random_flip=True, process_index=1, process_count=2)
    with batches.BatchIterator(source, 0, **kwargs) as first:
        for _ in range(4):
            next(first)
        expected = [next(first) for _ in range(5)]  # steps 4..8
        assert first.step == 9
    with batches.BatchIterator(source, 4, **kwargs, prefetch=3) as resumed:
        for want in expected:
            got = next(resumed)
            np.testing.assert_array_equal(got["image"], want["image"])
            np.testing.assert_array_equal(got["label"], want["label"])
    with pytest.raises(StopIteration):
        next(resumed)


def test_batch_iterator_raises_source_errors():
    class Broken:
        num_classes = 1

        def __len__(self):
            return 10

        def get(self, indices):
            raise OSError("disk gone")

    with (
        batches.BatchIterator(Broken(), 0, 2, 0, False) as it,
        pytest.raises(OSError, match="gone"),
    ):
        next(it)


# --- npz ------------------------------------------------------------------------------------


def test_npz_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 5, 5), dtype=np.uint8)  # [N,H,W]: no channel axis
    labels = np.arange(12) % 4
    path = str(tmp_path / "x.npz")
    np.savez(path, images=images, labels=labels)
    source = sources.load_source(data_config(name="npz", path=path, image_size=5, channels=1))
    got_images, got_labels = source.get(np.array([3, 0, 11]))
    np.testing.assert_array_equal(got_images[..., 0], images[[3, 0, 11]])
    np.testing.assert_array_equal(got_labels, labels[[3, 0, 11]])

    missing = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz") as e:
        sources.load_source(data_config(name="npz", path=missing))
    assert "'images'" in str(e.value) and "'labels'" in str(e.value)

    with pytest.raises(ValueError) as e:
        sources.load_source(data_config(name="npz", path=path, image_size=8, channels=3))
    message = str(e.value)
    assert "(5, 5, 1)" in message and "(8, 8, 3)" in message
    assert "data.image_size" in message and "data.channels" in message

    np.savez(path, pixels=images)
    with pytest.raises(ValueError, match="pixels"):
        sources.load_source(data_config(name="npz", path=path, image_size=5, channels=1))

    np.savez(path, images=images, labels=np.arange(12))  # 12 classes
    with pytest.raises(ValueError, match="data.num_classes"):
        sources.load_source(data_config(name="npz", path=path, image_size=5, channels=1))


@pytest.mark.parametrize(
    "labels, match",
    [
        (np.arange(5), r"labels of shape \[5\] for 6 images"),
        (np.zeros((6, 1), np.int64), r"labels of shape \[6, 1\] for 6 images"),
        (np.array([0.0, 1.0, 2.0, 0.5, 1.0, 2.0]), r"dtype float64, not integers"),
        (np.arange(6, dtype=np.float32), r"dtype float32, not integers"),  # whole numbers too
        (np.array([0, 1, -1, 2, 0, 1]), r"labels from -1 to 2, outside \[0, 10\)"),
        (np.array([0, 1, 10, 2, 0, 1]), r"labels from 0 to 10, outside \[0, 10\)"),
    ],
)
def test_npz_bad_labels_refused_when_opened(tmp_path, labels, match):
    path = str(tmp_path / "x.npz")
    np.savez(path, images=np.zeros((6, 5, 5), np.uint8), labels=labels)
    cfg = data_config(name="npz", path=path, image_size=5, channels=1, num_classes=10)
    with pytest.raises(ValueError, match=match) as e:
        sources.load_source(cfg)
    message = str(e.value)
    assert f"data.path={path!r}" in message and message.count(". ") == 0  # one sentence


def test_npz_labels_of_an_unlabelled_run(tmp_path):
    """data.num_classes = 0: labels are not used, so any non-negative ones load; negative
    labels are still no class index."""
    path = str(tmp_path / "x.npz")
    np.savez(path, images=np.zeros((3, 5, 5), np.uint8), labels=np.array([0, 40, 2]))
    cfg = data_config(name="npz", path=path, image_size=5, channels=1, num_classes=0)
    assert len(sources.load_source(cfg)) == 3
    np.savez(path, images=np.zeros((3, 5, 5), np.uint8), labels=np.array([0, -1, 2]))
    with pytest.raises(ValueError, match=r"outside \[0, \.\.\.\) of data.num_classes=0"):
        sources.load_source(cfg)


def test_npz_unreadable_file_is_one_sentence(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=r"is not a readable .npz file .*np.savez"):
        sources.load_source(data_config(name="npz", path=str(path)))


# --- folder ---------------------------------------------------------------------------------


def write_image(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_labels_center_crop_and_resize(tmp_path):
    # 30 wide, 10 high: red | green | blue thirds; the center square is the green third.
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, :10, 0] = wide[:, 10:20, 1] = wide[:, 20:, 2] = 255
    write_image(str(tmp_path / "cat" / "a.png"), wide)
    write_image(str(tmp_path / "dog" / "b.jpg"), np.full((16, 16, 3), 200, np.uint8))
    write_image(str(tmp_path / "dog" / "deeper" / "c.png"), np.full((9, 9, 3), 50, np.uint8))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")

    source = sources.load_source(data_config(name="folder", path=str(tmp_path), channels=3))
    assert len(source) == 3 and source.class_names == ["cat", "dog"]
    images, labels = source.get(np.arange(3))
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 1]
    green = images[0].astype(int)
    assert green[..., 1].min() > 200 and green[..., [0, 2]].max() < 50
    assert np.abs(images[1].astype(int) - 200).max() <= 3  # jpeg
    np.testing.assert_array_equal(source.get(np.array([2, 2]))[0][0], images[2])  # cached

    gray = sources.load_source(data_config(name="folder", path=str(tmp_path / "dog"), channels=1))
    gray_images, gray_labels = gray.get(np.arange(2))
    assert gray_images.shape == (2, 8, 8, 1)
    assert gray_labels.tolist() == [0, 0]  # b.jpg at the top level: an unlabelled folder

    with pytest.raises(FileNotFoundError, match="nowhere"):
        sources.load_source(data_config(name="folder", path=str(tmp_path / "nowhere")))


def test_folder_with_corrupt_images_names_them_when_opened(tmp_path):
    for k in range(4):
        write_image(str(tmp_path / "good" / f"g{k}.png"), np.full((9, 9, 3), 30 * k, np.uint8))
    png = (tmp_path / "good" / "g0.png").read_bytes()
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(
        jpeg, format="JPEG"
    )
    bad = {
        "bad/a_garbage.png": b"this is not an image",
        "bad/b_truncated.png": png[: len(png) // 2],
        "bad/c_checksum.png": png[:40] + bytes([png[40] ^ 0xFF]) + png[41:],  # in IHDR/IDAT
        "bad/d_truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "bad/e_empty.webp": b"",
    }
    (tmp_path / "bad").mkdir()
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError) as e:
        sources.load_source(data_config(name="folder", path=str(tmp_path), channels=3))
    message = str(e.value)
    assert "holds 5 image files that cannot be read" in message
    for name in sorted(bad)[:3]:  # the first three by path, then "..."
        assert str(tmp_path / name) in message
    assert message.endswith(", ...); delete or replace them.") and "good" not in message
    for name in bad:  # with the bad files gone, the same folder loads
        (tmp_path / name).unlink()
    assert len(sources.load_source(data_config(name="folder", path=str(tmp_path), channels=3))) == 4


def test_folder_file_damaged_after_opening_names_it(tmp_path):
    write_image(str(tmp_path / "a.png"), np.zeros((9, 9, 3), np.uint8))
    source = sources.load_source(data_config(name="folder", path=str(tmp_path), channels=3))
    (tmp_path / "a.png").write_bytes(b"gone bad")
    source._load.cache_clear()
    with pytest.raises(ValueError, match=r"a.png cannot be decoded .* run the same command"):
        source.get(np.array([0]))


# --- tfds -----------------------------------------------------------------------------------


def test_tfds_unprepared_says_how_to_prepare(tmp_path):
    cfg = data_config(name="tfds", tfds_name="cifar10", tfds_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        sources.load_source(cfg)
    message = str(e.value)
    assert f"tfds build cifar10 --data_dir={tmp_path} --file_format=array_record" in message
    assert "data.tfds_dir" in message and message.count(". ") == 0  # one sentence
    with pytest.raises(ValueError, match="not a tfds dataset"):
        sources.load_source(data_config(name="tfds", tfds_name="no_such_dataset_xyz"))


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
    """A 3-class 4x4 RGB tfds dataset prepared locally (no download) as array_record."""
    import tensorflow_datasets as tfds

    class CmTestTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "image": tfds.features.Image(shape=(4, 4, 3)),
                "label": tfds.features.ClassLabel(num_classes=3),
            }
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6), "test": self._generate_examples(2)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((4, 4, 3), 10 * i, np.uint8), "label": i % 3}

    root = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder(
        "cm_test_tiny_images", data_dir=root, file_format="array_record"
    ).download_and_prepare()
    tfrecord_root = str(tmp_path_factory.mktemp("tfds_tfrecord"))
    tfds.builder("cm_test_tiny_images", data_dir=tfrecord_root).download_and_prepare()
    return root, tfrecord_root


def test_tfds_reads_prepared_dataset(tiny_tfds_dir):
    root, tfrecord_root = tiny_tfds_dir
    cfg = data_config(
        name="tfds", tfds_name="cm_test_tiny_images", tfds_dir=root, image_size=4, channels=3
    )
    source = sources.load_source(cfg)
    assert len(source) == 6 and source.num_classes == 3
    images, labels = source.get(np.arange(6))
    assert images.shape == (6, 4, 4, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    # Records may be stored in any order; each image encodes its example number i, label i % 3.
    numbers = images[:, 0, 0, 0] // 10
    assert sorted(numbers.tolist()) == list(range(6))
    np.testing.assert_array_equal(labels, numbers % 3)
    batch = batches.batch_at(source, 1, 4, seed=0, random_flip=True)
    assert batch["image"].shape == (4, 4, 4, 3)

    cfg.split = "test"
    assert len(sources.load_source(cfg)) == 2
    cfg.split = "validation"
    with pytest.raises(ValueError, match="train"):
        sources.load_source(cfg)
    cfg.split, cfg.tfds_dir = "train", tfrecord_root
    with pytest.raises(ValueError, match="file_format=array_record"):
        sources.load_source(cfg)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        sources.load_source(data_config(name="mnist"))
    for name in ("digits", "tfds", "npz", "folder"):
        assert name in str(e.value)
