import pytest
import yaml
from conftest import tiny_dit, tiny_unet

from mpsearch.errors import PlanError
from mpsearch.models import describe
from mpsearch.plan import Plan


@pytest.fixture
def info():
    return describe(tiny_dit())


def test_uniform_plan_round_trip(tmp_path, info):
    plan = Plan.uniform(info, "nvfp4")
    assert set(plan.layers) == set(info.names)
    assert all(f in ("nvfp4", "fp") for f in plan.layers.values())
    assert plan.predicted_bytes == info.bytes_for(plan.layers)
    path = plan.save(tmp_path / "plans" / "p.yaml")
    again = Plan.load(path)
    assert again.to_dict() == plan.to_dict()
    again.check_model(info)


def _write(tmp_path, data, name="p.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(schema_version=2), "schema_version"),
    (lambda d: d.update(surprise=1), "unknown key 'surprise'"),
    (lambda d: d["layers"].update({next(iter(d["layers"])): "int3"}), "unknown format 'int3'"),
    (lambda d: d.pop("layers"), "lacks the required key 'layers'"),
    (lambda d: d["model"].pop("fingerprint"), "'model' must have exactly"),
    (lambda d: d.update(cache={"compute": [True]}), "cache"),
    (lambda d: d.update(overrides=[{"steps": [3, 1], "activations": {}}]), "steps"),
    (lambda d: d.update(predictions={"bytes": "many"}), "predictions.bytes"),
])
def test_strict_loading(tmp_path, info, mutate, match):
    data = Plan.uniform(info, "int8").to_dict()
    mutate(data)
    with pytest.raises(PlanError, match=match) as e:
        Plan.load(_write(tmp_path, data))
    assert "\n" not in str(e.value)


def test_malformed_and_unsafe_yaml(tmp_path):
    with pytest.raises(PlanError, match="not valid YAML"):
        Plan.load(_write(tmp_path, "layers: [unclosed\n"))
    with pytest.raises(PlanError, match="mapping"):
        Plan.load(_write(tmp_path, "- a list\n"))
    # a python object tag must not be constructed (safe loading)
    with pytest.raises(PlanError, match="not valid YAML"):
        Plan.load(_write(tmp_path, "schema_version: !!python/object/apply:os.system ['true']\n"))
    with pytest.raises(PlanError, match="does not exist"):
        Plan.load(tmp_path / "missing.yaml")


def test_plan_for_another_model_is_refused(info):
    plan = Plan.uniform(info, "int8")
    with pytest.raises(PlanError, match="plan is for a DiTTransformer2DModel"):
        plan.check_model(describe(tiny_unet()))
    data = plan.to_dict()
    data["model"]["fingerprint"] = "sha256:0000"
    with pytest.raises(PlanError, match="fingerprint"):
        Plan.from_dict(data).check_model(info)
    data = plan.to_dict()
    data["layers"]["not.a.layer"] = "fp"
    with pytest.raises(PlanError, match="does not have"):
        Plan.from_dict(data).check_model(info)


def test_ineligible_format_is_refused(info):
    layer = next(l for l in info.layers if "int4" not in l.eligible)
    with pytest.raises(PlanError, match="cannot take"):
        Plan.from_assignment(info, {layer.name: "int4"})


def test_save_is_atomic(tmp_path, info, monkeypatch):
    import mpsearch.io as mio

    target = tmp_path / "p.yaml"
    target.write_text("old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mio.os, "replace", boom)
    with pytest.raises(Exception, match="No space left"):
        Plan.uniform(info, "int8").save(target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["p.yaml"]
