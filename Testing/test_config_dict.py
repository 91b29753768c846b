"""Typed dict-to-dataclass loading, and the one sentence for a refused setting."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pytest

from SCPMNoduleLib.config_dict import check_choice, dataclass_from_dict, invalid_setting
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.model import SCPMNetConfig
from SCPMNoduleLib.preprocess import PreprocessConfig


@dataclass(frozen=True)
class Inner:
    size: int = 1
    scale: float = 1.0
    pair: tuple[int, float] = (0, 0.5)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise invalid_setting(self, "size", "is not at least 1")
        if self.scale > 100:
            raise ValueError("scale is too large.")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    flag: bool = False
    cap: int | None = None
    steps: tuple[tuple[int, float], ...] = ((0, 1.0),)
    inner: Inner = field(default_factory=Inner)


def test_nested_dicts_and_lists_become_dataclasses_and_tuples():
    built = dataclass_from_dict(Outer, {"steps": [[0, 1], [5, 0.5]], "cap": 3,
                                        "inner": {"scale": 2, "pair": [4, 1]}}, "config")
    assert built == Outer(steps=((0, 1.0), (5, 0.5)), cap=3, inner=Inner(scale=2.0, pair=(4, 1.0)))
    assert isinstance(built.inner.scale, float) and isinstance(built.steps[1][0], int)
    assert dataclass_from_dict(Outer, asdict(built), "config") == built


@pytest.mark.parametrize("data, sentence", [
    ([1], "config: expected an object, got list."),
    ({"nme": "y"}, "config: unknown key(s) nme; known: cap, flag, inner, name, steps."),
    ({"inner": {"size": 1.5}}, "config.inner.size: 1.5 is not an integer."),
    ({"inner": {"size": True}}, "config.inner.size: True is not an integer."),
    ({"flag": "False"}, "config.flag: 'False' is not a boolean (true or false)."),
    ({"name": 3}, "config.name: 3 is not a string."),
    ({"steps": [[0, "fast"]]}, "config.steps: 'fast' is not a number."),
    ({"steps": 5}, "config.steps: 5 is not an array."),
    ({"inner": {"pair": [1, 2, 3]}}, "config.inner.pair: [1, 2, 3] has 3 items, not 2."),
    ({"inner": 4}, "config.inner: expected an object, got int."),
    ({"inner": {"scale": 500}}, "config.inner: scale is too large."),
    ({"inner": {"size": 0}}, "Inner.size: 0 is not at least 1."),
])
def test_refusals_name_the_key(data, sentence):
    with pytest.raises(UserInputError) as raised:
        dataclass_from_dict(Outer, data, "config")
    assert str(raised.value) == sentence


def test_the_preprocessing_config_is_loaded_with_the_same_rules():
    values = {**PreprocessConfig().to_dict(), "spacing_xyz_mm": [1, 1, 2], "hu_min": -1000}
    config = PreprocessConfig.from_dict(values)
    assert config.spacing_xyz_mm == (1.0, 1.0, 2.0) and config.hu_min == -1000.0
    with pytest.raises(UserInputError, match="^pre-processing config: unknown key\\(s\\) spacing; known: "):
        PreprocessConfig.from_dict({"spacing": [1, 1, 1]})
    with pytest.raises(UserInputError, match=r"^pre-processing config.lung_mask: 1 is not a boolean"):
        PreprocessConfig.from_dict({"lung_mask": 1})


def test_a_network_config_is_checked_by_its_own_rules_in_its_own_sentence():
    assert dataclass_from_dict(SCPMNetConfig, asdict(SCPMNetConfig.tiny()), "m.pt") == SCPMNetConfig.tiny()
    with pytest.raises(UserInputError) as raised:
        dataclass_from_dict(SCPMNetConfig, {"head_levels": 5}, "m.pt")
    assert str(raised.value) == "SCPMNetConfig.head_levels: 5 is not between 1 and 2 (the decoder's levels)."


def test_check_choice_refuses_a_string_option_outside_its_choices_in_one_sentence():
    @dataclass
    class Painting:
        color: str = "red"

    check_choice(Painting(), "color", ("red", "blue"))
    with pytest.raises(UserInputError, match=r"^Painting.color: 'green' is not one of red, blue\.$"):
        check_choice(Painting("green"), "color", ("red", "blue"))
