"""The plan's typed records (parsed once, validated in __post_init__), its bounded free-form sections, numbers
that must be sane, and YAML that cannot expand (no anchors or aliases)."""

from __future__ import annotations

import pytest
import yaml
from conftest import tiny_dit

from mpsearch.errors import MpsearchError, PlanError
from mpsearch.io import dump_yaml, load_yaml
from mpsearch.models import describe
from mpsearch.plan import (
    ActivationOverride,
    ActivationWindow,
    CacheSection,
    LayerAssignment,
    Plan,
    Predictions,
)


@pytest.fixture(scope="module")
def info():
    return describe(tiny_dit())


def _plan(info, **kw):
    layer = info.names[0]
    overrides = [{"steps": [0, 3], "activations": {layer: "fp"}}, {"steps": [5, 9], "activations": {layer: "quant"}}]
    return Plan.from_assignment(info, {l.name: "int8" if "int8" in l.eligible else "fp" for l in info.layers},
                                overrides=overrides, **kw)


def test_sections_are_typed_records_and_the_yaml_is_byte_identical(info, tmp_path):
    plan = _plan(info, provenance={"solver": "ilp", "nested": {"a": [1, 2.5, None, True]}})
    assert all(isinstance(a, LayerAssignment) for a in plan.assignments)
    assert [a.name for a in plan.assignments] == list(plan.layers) == list(info.names)
    assert plan.activation_overrides == (ActivationOverride(0, 3, ((info.names[0], "fp"),)),
                                         ActivationOverride(5, 9, ((info.names[0], "quant"),)))
    assert plan.activation_windows() == {info.names[0]: (ActivationWindow(0, 3, False), ActivationWindow(5, 9, True))}
    assert isinstance(plan.predicted, Predictions) and plan.predicted.bytes == plan.predicted_bytes
    assert plan.cache_section is None
    first = plan.save(tmp_path / "a.yaml").read_bytes()
    assert first.decode() == yaml.safe_dump(plan.to_dict(), sort_keys=False, default_flow_style=False,
                                            allow_unicode=True, width=120)  # as mpsearch wrote plans before
    again = Plan.load(tmp_path / "a.yaml")
    assert again.to_dict() == plan.to_dict()
    assert again.save(tmp_path / "b.yaml").read_bytes() == first
    assert [ov.to_dict() for ov in again.activation_overrides] == plan.overrides


def test_an_edited_section_is_parsed_again(info):
    plan = _plan(info)
    plan.overrides = []
    assert plan.activation_windows() == {}
    plan.overrides.append({"steps": [1, 2], "activations": {info.names[1]: "fp"}})  # edited in place
    assert plan.activation_windows() == {info.names[1]: (ActivationWindow(1, 2, False),)}


def test_the_cache_section_is_a_record(info):
    from mpsearch.cache_units import CacheUnit

    unit = CacheUnit("r", "transformer-residual", ("transformer_blocks.0",))
    plan = _plan(info)
    plan.cache = {"method": "dp", "unit": unit.to_dict(), "compute": [True, False, True], "predicted_error": 0.5}
    assert plan.cache_section == CacheSection("dp", unit, (True, False, True), predicted_error=0.5)


# ---- 2b: numbers that must be sane (each case was accepted before)

_LAYER = describe(tiny_dit()).names[0]


def _refused_in_one_line(data: dict, match: str, tmp_path) -> None:
    """``data`` is refused, in one line matching ``match``, from Python and from a file."""
    with pytest.raises(PlanError, match=match) as e:
        Plan.from_dict(data)
    assert "\n" not in str(e.value)
    (tmp_path / "p.yaml").write_text(dump_yaml(data))
    with pytest.raises(PlanError, match=match):
        Plan.load(tmp_path / "p.yaml")


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["predictions"].update(bytes=-1), "predictions.bytes"),
    (lambda d: d["predictions"].update(bytes=10**40), "predictions.bytes"),
    (lambda d: d["predictions"].update(bytes=True), "predictions.bytes"),
    (lambda d: d["predictions"].update(fixed_bytes=-5), "predictions.fixed_bytes"),
    (lambda d: d["predictions"].update(objective=float("nan")), "predictions.objective"),
    (lambda d: d["predictions"].update(objective=float("inf")), "predictions.objective"),
    (lambda d: d.update(budget={"spec": "1GB", "bytes": float("inf")}), "budget.bytes"),
    (lambda d: d["provenance"].update(seconds=float("nan")), "provenance.seconds"),
    (lambda d: d.update(overrides=[{"steps": [0, 10**12], "activations": {}}]), "steps"),
    (lambda d: d.update(overrides=[{"steps": [False, True], "activations": {}}]), "steps"),
    (lambda d: d.update(overrides=[{"steps": [0, True], "activations": {}}]), "steps"),
    (lambda d: d.update(overrides=[{"steps": [0, 2], "activations": {1: "fp"}}]), "activations"),
    (lambda d: d.update(cache={"method": "dp", "compute": [True, True], "predicted_error": float("nan"),
                               "unit": {"name": "r", "kind": "transformer-residual",
                                        "modules": ["transformer_blocks.0"]}}), "predicted_error"),
])
def test_absurd_numbers_are_one_line_errors(info, tmp_path, edit, match):
    data = _plan(info).to_dict()
    edit(data)
    _refused_in_one_line(data, match, tmp_path)


# ---- 2a: provenance is plain, bounded data; YAML has no anchors or aliases

def test_provenance_must_be_plain_bounded_data(info):
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(PlanError, match="nested more than"):
        _plan(info, provenance={"deep": deep})
    with pytest.raises(PlanError, match="more than"):
        _plan(info, provenance={"big": list(range(200_000))})
    with pytest.raises(PlanError, match="plain data"):
        _plan(info, provenance={"obj": object()})
    bomb: list = ["lol"] * 10
    for _ in range(9):  # 10**10 values once written out, a few hundred objects in memory
        bomb = [bomb] * 10
    with pytest.raises(PlanError, match="more than"):
        _plan(info, provenance={"bomb": bomb})


_BOMB = "".join(f"{chr(97 + i + 1)}: &{chr(97 + i + 1)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n"
                for i in range(8))


def test_a_yaml_alias_bomb_under_provenance_is_refused(info, tmp_path):
    text = dump_yaml(_plan(info).to_dict()).replace("provenance:\n", "provenance:\n  a: &a [lol, lol, lol]\n  "
                                                    + _BOMB.replace("\n", "\n  ").rstrip() + "\n", 1)
    assert yaml.safe_load(text)["provenance"]["i"]  # it is valid YAML: safe_load builds it (shared lists)
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(PlanError, match="anchor or alias") as e:
        Plan.load(path)
    assert "\n" not in str(e.value) and "bomb.yaml" in str(e.value)


def test_any_yaml_mpsearch_reads_refuses_aliases_and_duplicate_keys(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("a: &x 1\nb: *x\n")
    with pytest.raises(MpsearchError, match="anchor or alias.*line 1"):
        load_yaml(path)
    path.write_text("a: 1\nb: 2\na: 3\n")
    with pytest.raises(MpsearchError, match="duplicate key 'a'.*line 3"):
        load_yaml(path)
    path.write_text("a: 1\nb: [1, 2]\n")
    assert load_yaml(path) == {"a": 1, "b": [1, 2]}


def test_dump_yaml_writes_shared_values_out_in_full():
    shared = {"k": [1, 2]}
    text = dump_yaml({"x": shared, "y": shared})
    assert "&" not in text and "*" not in text
    assert yaml.safe_load(text) == {"x": shared, "y": shared}


# ---- 2c: a plan lists every eligible layer of the model

def test_a_plan_that_leaves_a_layer_out_is_refused_naming_it(info, tmp_path):
    import mpsearch

    model = tiny_dit()
    data = Plan.uniform(model, "int8").to_dict()
    dropped = list(data["layers"])[3]
    del data["layers"][dropped]
    path = tmp_path / "cut.yaml"
    path.write_text(dump_yaml(data))
    plan = Plan.load(path)  # a valid file on its own
    with pytest.raises(PlanError, match=f"does not list 1 of the model's {len(info.names)} layers.*{dropped}") as e:
        plan.check_model(info)
    assert "\n" not in str(e.value)
    with pytest.raises(PlanError, match=dropped):
        mpsearch.apply_plan(model, plan)
    assert not any(type(m).__name__.startswith("Quant") for m in model.modules())  # nothing applied


# ---- the budget section and schema_version are as strict as the rest (each case was accepted before)

@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(budget={"spec": "1GB", "bytes": 10**9, "extra": 1}), "unknown key 'extra'"),
    (lambda d: d.update(budget={"spec": "1GB", "bytes": -1}), "budget.bytes"),
    (lambda d: d.update(budget={"spec": "1GB", "bytes": True}), "budget.bytes"),
    (lambda d: d.update(budget={"spec": "1GB"}), "lacks the key 'bytes'"),
    (lambda d: d.update(budget={"spec": 5, "bytes": 10**9}), "budget.spec"),
    (lambda d: d.update(schema_version=True), "schema_version"),
    (lambda d: d.update(schema_version=1.0), "schema_version"),
])
def test_budget_and_schema_version_are_strict(info, tmp_path, edit, match):
    data = _plan(info, budget={"spec": "1GB", "bytes": 10**9}).to_dict()
    Plan.from_dict(data)  # the unedited plan loads
    edit(data)
    _refused_in_one_line(data, match, tmp_path)
