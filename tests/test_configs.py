"""Every experiment config: one shared variant parser (a misspelled `:VARIANT` is an error that
names the valid ones) and tfds preparation commands that write the array_record format."""

import importlib

import pytest

from configs import variants
from configs.variants import parse_variant

VARIANTS = variants.shipped()  # every config file and its variants besides the default


def _module(name):
    return importlib.import_module(f"configs.{name}")


def test_every_config_file_declares_its_variants():
    files = {p.stem for p in variants.CONFIG_DIR.glob("*.py") if "get_config(arg" in p.read_text()}
    assert files == set(VARIANTS) and len(files) >= 12
    assert VARIANTS["cifar10_edm"] == ("cond", "ve", "ve_cond") and VARIANTS["demo"] == ()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_load_and_a_misspelled_one_is_an_error_naming_the_valid_ones(name):
    module = _module(name)
    default = module.get_config()
    assert module.get_config("").to_dict() == default.to_dict()
    for variant in VARIANTS[name]:
        module.get_config(variant)
    with pytest.raises(ValueError, match=f"configs/{name}.py") as error:
        module.get_config("deeep")
    message = str(error.value)
    assert "'deeep'" in message
    for variant in VARIANTS[name]:
        assert f"configs/{name}.py:{variant}" in message


def test_cifar10_ict_deeep_is_not_ict():
    from configs import cifar10_ict

    assert cifar10_ict.get_config("deep").model.num_blocks == 8
    with pytest.raises(ValueError, match=r"no variant 'deeep'; .* configs/cifar10_ict.py:deep\."):
        cifar10_ict.get_config("deeep")


def test_parse_variant_messages():
    assert parse_variant("/x/configs/a.py", None, ("b",)) == ""
    assert parse_variant("/x/configs/a.py", " b ", ("b",)) == "b"
    with pytest.raises(ValueError, match=r"^configs/a.py takes no variant \(got 'b'\); use"):
        parse_variant("/x/configs/a.py", "b")


@pytest.mark.parametrize("path", sorted(variants.CONFIG_DIR.glob("*.py")), ids=lambda p: p.name)
def test_tfds_commands_write_array_record(path):
    # Random access (array_record) is what makes resuming exact (cm/data/sources.py); every tfds
    # config
    # shows the command that prepares its data.
    text = path.read_text()
    commands = [line for line in text.splitlines() if "tfds build" in line]
    assert commands or 'c.data.name = "tfds"' not in text
    for line in commands:
        assert "--file_format=array_record" in line, line
