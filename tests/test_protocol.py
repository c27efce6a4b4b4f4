from __future__ import annotations

import math

import pytest

from vlmbench.protocol import (
    DataSpec,
    PluginRef,
    Protocol,
    ProtocolError,
    ThreatModel,
    default_step_size,
    eps_label,
    parse_eps,
)


@pytest.mark.parametrize(
    ("text", "value", "label"),
    [
        ("4/255", 4 / 255, "4/255"),
        ("1/255", 1 / 255, "1/255"),
        (" 2 / 255 ", 2 / 255, "2/255"),
        ("0.5/255", 0.5 / 255, "0.5/255"),
        ("0.25", 0.25, "0.25"),
        (".1", 0.1, "25.5/255"),
        (8 / 255, 8 / 255, "8/255"),
        ("1/3", 1 / 3, "85/255"),
        ("1/7", 1 / 7, repr(1 / 7)),
        ("0.0156862745", 4 / 255, "4/255"),
        ("1e-3", 0.001, "0.001"),
        ("1E-3", 0.001, "0.001"),
        (".5e-2", 0.005, "0.005"),
        ("0.25", 0.25, "0.25"),
    ],
)
def test_parse_eps_accepts_fractions_and_floats(text, value, label):
    parsed, parsed_label = parse_eps(text)
    assert math.isclose(parsed, value, rel_tol=1e-12)
    assert parsed_label == label


@pytest.mark.parametrize("text", ["", "abc", "4//255", "-1/255", "0", "1/0", "nan", "inf", "4/255/2", "1e", "e3", "1e-3e2", "--1"])
def test_parse_eps_rejects_garbage(text):
    with pytest.raises(ProtocolError, match="bad ε"):
        parse_eps(text)


def test_eps_label_falls_back_to_float():
    assert eps_label(0.123456) == "0.123456"


@pytest.mark.parametrize("spellings", [("4/255", "0.0156862745", "8/510", 4 / 255), ("0.001", "1e-3", "1E-3", "1/1000")])
def test_equal_eps_values_give_one_threat_model_and_one_cell(spellings):
    threats = {ThreatModel.build("linf", text, 10) for text in spellings}
    assert len(threats) == 1  # one value, one label: one cell identity


def test_l2_radii_are_labelled_as_floats():
    assert ThreatModel.build("l2", "5e-1", 10).eps_label == "0.5"


def test_eps_above_one_suggests_a_fraction_only_when_it_makes_sense():
    with pytest.raises(ProtocolError) as error:
        ThreatModel.build("linf", "300/255", 10)
    assert "/255?" not in str(error.value) and "1.17647/255" not in str(error.value)
    with pytest.raises(ProtocolError, match=r"did you mean 8/255\?"):
        ThreatModel.build("linf", "8", 10)


@pytest.mark.parametrize(
    ("eps", "steps", "expected"),
    [(1 / 255, 10, 1 / 255), (4 / 255, 10, 1 / 255), (1 / 255, 2, 1 / 255), (2 / 255, 5, 1 / 255),
     (16 / 255, 10, 4 / 255), (0.5 / 255, 10, 0.5 / 255), (4 / 255, 100, 1 / 255)],
)
def test_default_linf_step_size_follows_the_literature(eps, steps, expected):
    assert math.isclose(default_step_size("linf", eps, steps), expected, rel_tol=1e-12)


def test_default_l2_step_size_is_madry_rule():
    assert math.isclose(default_step_size("l2", 0.5, 10), 0.125)


def test_threat_model_rejects_linf_radius_above_one():
    with pytest.raises(ProtocolError, match="did you mean 4/255"):
        ThreatModel.build("linf", "4", 10)


def test_threat_model_allows_large_l2_radius_and_rejects_unknown_norm():
    assert ThreatModel.build("l2", "2.0", 10).eps == 2.0
    with pytest.raises(ProtocolError, match="unknown norm"):
        ThreatModel.build("l3", "1/255", 10)


def test_threat_model_rejects_bad_steps_and_step_size():
    with pytest.raises(ProtocolError):
        ThreatModel.build("linf", "1/255", -1)
    with pytest.raises(ProtocolError):
        ThreatModel.build("linf", "1/255", 10, step_size="-0.1")
    with pytest.raises(ProtocolError):
        ThreatModel.build("linf", "1/255", 10, restarts=0)


def _protocol(**changes) -> Protocol:
    base = dict(
        model=PluginRef("world-vit", "abc"),
        defense=PluginRef("none", "1"),
        attack=PluginRef("pgd-10", "1", {"kappa": 50.0}),
        threat=ThreatModel.build("linf", "4/255", 10),
        data=DataSpec("world-shape", "test", 10, "ff", "first", "native"),
        seed=0,
        batch_size=32,
        versions={"torch": "2.15"},
    )
    base.update(changes)
    return Protocol(**base)


def test_protocol_round_trips_through_json():
    protocol = _protocol()
    assert Protocol.from_json(protocol.to_json()) == protocol


def test_cell_hash_ignores_versions_but_not_the_measurement():
    protocol = _protocol()
    assert protocol.cell_hash() == _protocol(versions={"torch": "9.9"}).cell_hash()
    assert protocol.cell_hash() != _protocol(seed=1).cell_hash()
    assert protocol.cell_hash() != _protocol(threat=ThreatModel.build("linf", "1/255", 10)).cell_hash()
    assert len(protocol.cell_hash()) == 16
