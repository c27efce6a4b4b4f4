"""Typed plugin parameters: conversion, and values that would silently switch a plugin off."""

from __future__ import annotations

import dataclasses
import math

import pytest

from vlmbench.config import ALLOW_NONFINITE, ConfigError, build_config


@dataclasses.dataclass(frozen=True)
class Example:
    threshold: float = 0.2
    steps: int = 2
    unbounded: float = dataclasses.field(default=1.0, metadata={ALLOW_NONFINITE: True})


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_non_finite_floats_are_refused(raw):
    with pytest.raises(ConfigError, match="must be a finite number") as error:
        build_config(Example, [f"threshold={raw}"], "defense 'x'")
    assert "\n" not in str(error.value) and "'threshold'" in str(error.value)


def test_a_field_may_declare_that_it_allows_infinity():
    assert math.isinf(build_config(Example, ["unbounded=inf"], "defense 'x'").unbounded)


def test_valid_values_are_converted():
    config = build_config(Example, ["threshold=4/255", "steps=3"], "defense 'x'")
    assert config.threshold == pytest.approx(4 / 255) and config.steps == 3


def test_builtin_plugins_refuse_the_values_that_switch_them_off():
    from vlmbench.registry import plugins

    ttc = plugins().defenses.get("ttc")
    with pytest.raises(ConfigError):
        build_config(ttc.Config, ["tau_threshold=nan"], "defense 'ttc'")
    cw = plugins().attacks.get("cw")
    with pytest.raises(ConfigError):
        build_config(cw.Config, ["kappa=inf"], "attack 'cw'")
