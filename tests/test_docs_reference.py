"""The config reference of the documentation site: every field of configs/default.py with its comment and default."""

import pathlib

import pytest

from mbde_jax import config_reference, config_utils

DEFAULT = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"


def test_every_field_of_get_config_has_a_description_and_its_default():
    fields = {field.name: field for field in config_reference.parse_fields(DEFAULT)}
    config = config_utils.load_config(str(DEFAULT))
    defined = dict(config_reference.flatten(config.to_dict()))
    assert sorted(defined) == sorted(fields), "fields get_config() defines that the parser did not find (or back)"
    for name, value in defined.items():
        field = fields[name]
        assert field.description, f"{name} has no comment in configs/default.py"
        assert field.section, f"{name} is in no '# --- Section ---'"
        assert config_reference.default_value(field) == value, name


def test_sections_descriptions_and_placeholders_are_read_from_the_source():
    fields = {field.name: field for field in config_reference.parse_fields(DEFAULT)}
    assert fields["dataset"].section == "Data"
    assert fields["method"].section == "Method"
    assert fields["temperature"].description.startswith("T: every KL term softens both sides by T")
    # a comment spanning several lines is one description, joined in order
    assert "INFERRED, OKDDip: 80" in fields["rampup_epochs"].description
    assert config_reference.placeholder_type(fields["data_dir"]) == "str"
    assert config_reference.placeholder_type(fields["dataset"]) is None


def test_a_field_without_a_comment_is_reported_by_name(tmp_path):
    config_file = tmp_path / "config.py"
    config_file.write_text(
        "from ml_collections import config_dict\n\n\n"
        "def get_config():\n"
        "    config = config_dict.ConfigDict()\n"
        "    # --- Data ---\n"
        "    # The dataset.\n"
        "    config.dataset = 'digits'\n"
        "    config.batch_size = 8  # a trailing comment is not a description\n\n"
        "    # A comment cut off by a blank line describes nothing.\n\n"
        "    config.seed = 0\n"
        "    # --- Model ---\n"
        "    config.arch = 'resnet8'\n"
        "    return config\n")
    fields = config_reference.parse_fields(config_file)
    assert [field.name for field in fields] == ["dataset", "batch_size", "seed", "arch"]
    assert config_reference.undocumented(fields) == ["batch_size", "seed", "arch"]
    assert fields[3].section == "Model" and fields[3].description == ""  # the section title is not its comment


def test_a_file_without_get_config_and_a_default_that_is_no_literal_are_one_line_errors(tmp_path):
    no_function = tmp_path / "empty.py"
    no_function.write_text("X = 1\n")
    with pytest.raises(ValueError, match="empty.py: no get_config"):
        config_reference.parse_fields(no_function)
    computed = tmp_path / "computed.py"
    computed.write_text("def get_config():\n    # Computed.\n    config.size = 2 ** 10\n    return config\n")
    (field,) = config_reference.parse_fields(computed)
    with pytest.raises(ValueError, match="config field size: default '2 \\*\\* 10' is not a literal"):
        config_reference.default_value(field)
