"""Declared hyperparameters: checks by type and bounds, and command-line strings parsed by declared type."""

from collections.abc import Sequence

import pytest

from bdprune.errors import InvalidInput, UnknownName
from bdprune.params import check_value, convert, parameters, parse_option


def factory(
    size: int = 3,
    alpha: float = 0.2,
    name: str = "x",
    shape: tuple[float, float] = (0.5, 0.9),
    betas: Sequence[float] = (1.0,),
    count: int | None = None,
    flag: bool = False,
    **ignored,
):
    return None


def test_parameters_come_from_the_signature_in_order():
    declared = parameters(factory)
    assert list(declared) == ["size", "alpha", "name", "shape", "betas", "count", "flag"]
    assert declared["count"].default is None and declared["alpha"].annotation is float


@pytest.mark.parametrize(
    "value, annotation, expected",
    [
        (3, int, 3),
        (3.0, int, 3),
        (2, float, 2.0),
        ([0.5, 0.7], tuple[float, float], (0.5, 0.7)),
        (None, int | None, None),
        (True, bool, True),
        ([1, 2], Sequence[float], [1.0, 2.0]),
    ],
)
def test_values_are_converted_to_their_declared_type(value, annotation, expected):
    assert check_value("x", value, annotation) == expected


@pytest.mark.parametrize(
    "value, annotation, meta, message",
    [
        (3.5, int, None, "an integer"),
        (float("nan"), float, None, "finite"),
        (float("inf"), float, None, "finite"),
        (True, int, None, "an integer"),
        ("3", int, None, "an integer"),
        (-1, int, {"ge": 0}, ">= 0"),
        (0.0, float, {"gt": 0.0}, "> 0"),
        ([0.5], tuple[float, float], None, "a list of"),
        ("c", str, {"choices": ("a", "b")}, "one of"),
    ],
)
def test_bad_values_name_the_parameter_and_what_it_must_be(value, annotation, meta, message):
    with pytest.raises(InvalidInput, match=f"owner: p must .*{message}"):
        check_value("owner: p", value, annotation, meta)


def test_command_line_strings_are_parsed_by_declared_type():
    declared = parameters(factory)
    parsed = convert(
        "f",
        declared,
        {
            "size": "5",
            "alpha": "0.5",
            "name": "7",
            "shape": "0.1,0.2",
            "betas": "[1, 2]",
            "count": "none",
            "flag": "true",
        },
    )
    assert parsed == {
        "size": 5,
        "alpha": 0.5,
        "name": "7",
        "shape": (0.1, 0.2),
        "betas": [1.0, 2.0],
        "count": None,
        "flag": True,
    }
    assert parse_option("3", int | None) == 3
    with pytest.raises(UnknownName, match="f has no parameter sise; its parameters: size"):
        convert("f", declared, {"sise": "3"})
    with pytest.raises(InvalidInput, match="finite"):
        convert("f", declared, {"alpha": "nan"})
