"""The supported range is one range: setup.cfg's lower bounds are the oldest versions CI pins and tests."""

import configparser
import pathlib

from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def _requirements() -> list[Requirement]:
    parser = _setup_cfg()
    lines = parser["options"]["install_requires"].splitlines()
    for extra in parser["options.extras_require"].values():
        lines += extra.splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def _oldest_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints" / "oldest.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pins[requirement.name.lower()] = spec.version
    return pins


def test_every_requirement_is_a_closed_range_from_the_oldest_pin():
    pins = _oldest_pins()
    for requirement in _requirements():
        operators = {spec.operator: spec.version for spec in requirement.specifier}
        assert set(operators) == {">=", "<"}, f"{requirement}: give a range from the oldest tested release"
        name = requirement.name.lower()
        assert pins.get(name) == operators[">="], f"{name}: constraints/oldest.txt must pin {operators['>=']}"
        assert requirement.specifier.contains(pins[name])


def test_the_constraints_pin_nothing_setup_cfg_does_not_require():
    required = {requirement.name.lower() for requirement in _requirements()}
    assert set(_oldest_pins()) == required


def test_python_range_starts_at_3_11_and_is_open():
    assert _setup_cfg()["options"]["python_requires"] == ">=3.11"
