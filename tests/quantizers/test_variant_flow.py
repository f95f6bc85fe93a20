"""Calibrated variants through the whole flow: profiled (calibration stored once, reused on resume), solved into
a plan that carries its calibration file, applied and exported bit for bit, bytes as predicted."""

import numpy as np
import pytest
import torch

import mpsearch
from mpsearch.errors import FormatError, PlanError
from mpsearch.formats import Packed, available_formats, get_format
from mpsearch.formats.variant import candidate_names
from mpsearch.models import get_denoiser, measured_bytes
from mpsearch.plan import Plan
from mpsearch.profiling.profiler import profile_local
from mpsearch.profiling.store import Profile
from mpsearch.quantizers import quantize_candidate
from mpsearch.runtime import kernels
from mpsearch.runtime.generation import generate

FORMATS = tuple(candidate_names(("int8", "nvfp4", "int4"), ("clip", "smooth", "gptq")))




def _profile(pipe, path, **kw):
    return profile_local(pipe, out=path, formats=FORMATS, steps=3, labels=(0, 1), seeds=(0,), progress=False, **kw)


def test_every_variant_is_a_named_candidate_with_its_base_bytes():
    names = available_formats(calibrated=True)
    assert {"int8:clip", "int8:smooth", "int8:gptq", "nvfp4:clip", "nvfp4:smooth", "nvfp4:gptq", "nvfp4:awq",
            "int4:clip", "int4:gptq", "int4:awq"} <= set(names)
    assert "int4:smooth" not in names  # int4 is weight-only: nothing to smooth
    assert "int8:awq" not in names  # awq is for 4-bit weights
    assert {"int8:smooth-gptq", "nvfp4:smooth-gptq"} <= set(names) and "int4:smooth-gptq" not in names
    shape = (64, 256)
    for name in names:
        base, _, variant = name.partition(":")
        if variant:
            extra = 4 * 256 if variant in ("smooth", "awq", "smooth-gptq") else 0
            assert get_format(name).weight_bytes(shape) == get_format(base).weight_bytes(shape) + extra
    with pytest.raises(FormatError, match="calibrat"):
        get_format("nvfp4:clip").quantize(torch.randn(16, 32))
    with pytest.raises(FormatError, match="calibrat"):
        quantize_candidate("int4:gptq", torch.randn(16, 128))


def test_gptq_is_ineligible_where_no_hessian_is_recorded():
    assert get_format("int4:gptq").why_ineligible((8, 4096)) is not None
    assert get_format("int4:clip").why_ineligible((8, 4096)) is None


def test_profile_solve_apply_export_with_variants(dit_pipe, tmp_path):
    pipe = dit_pipe
    path = tmp_path / "p.sqlite"
    prof = _profile(pipe, path)
    assert set(FORMATS) <= set(prof.formats)
    cal = prof.calibration()
    assert cal and set(cal) <= set(prof.info.names)
    # the plan: every layer in a variant where it may take one (a forced assignment, so the flow is exercised)
    assignment = {}
    cands = ("int8:smooth", "nvfp4:clip", "int4:gptq", "nvfp4:smooth", "int8:gptq", "int4:clip")
    for i, l in enumerate(prof.info.layers):
        for k in range(len(cands)):
            cand = cands[(i + k) % len(cands)]
            if l.why_not(cand) is None:
                assignment[l.name] = cand
                break
    assert {f.partition(":")[2] for f in assignment.values()} == {"smooth", "clip", "gptq"}
    plan = Plan.from_assignment(prof.info, assignment, calibration=prof.calibration())
    assert set(plan.calibration) == set(assignment)
    saved = plan.save(tmp_path / "plans" / "v.yaml")
    side = tmp_path / "plans" / "v.calibration.safetensors"
    assert side.is_file()
    loaded = Plan.load(saved)
    assert set(loaded.calibration) == set(assignment)
    for n in assignment:
        assert torch.equal(loaded.calibration[n].x2, plan.calibration[n].x2)

    labels, seed = [0, 1], 7
    with mpsearch.apply_plan(pipe, loaded, stash="memory"):
        applied = generate(pipe, labels, seed, 3)
        assert measured_bytes(pipe) == loaded.predicted_bytes
    ref = generate(pipe, labels, seed, 3)
    assert not np.array_equal(applied, ref)
    out = tmp_path / "exported"
    mpsearch.export(pipe, loaded, out)
    q = mpsearch.load_pipeline(out)
    assert np.array_equal(generate(q, labels, seed, 3), applied)  # bit for bit
    assert measured_bytes(q) == loaded.predicted_bytes


def test_a_plan_without_its_calibration_file_or_with_another_is_refused(dit_pipe, tmp_path):
    prof = _profile(dit_pipe, tmp_path / "p.sqlite")
    name = next(l.name for l in prof.info.layers if l.why_not("int8:clip") is None)
    plan = Plan.from_assignment(prof.info, {name: "int8:clip"}, calibration=prof.calibration())
    saved = plan.save(tmp_path / "a.yaml")
    side = tmp_path / "a.calibration.safetensors"
    data = side.read_bytes()
    side.write_bytes(data[:-4] + b"\0\0\0\0")
    # loading reads the plan; applying refuses it (after the checks against the model), the model untouched
    before = {k: v.clone() for k, v in get_denoiser(dit_pipe).state_dict().items()}
    with pytest.raises(PlanError, match="not the one it was made with"):
        mpsearch.apply_plan(dit_pipe, Plan.load(saved))
    side.unlink()
    with pytest.raises(PlanError, match="not beside it"):
        mpsearch.apply_plan(dit_pipe, Plan.load(saved))
    after = get_denoiser(dit_pipe).state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    bare = Plan.from_assignment(prof.info, {name: "int8:clip"})  # no calibration given
    with pytest.raises(PlanError, match="holds no calibration"):
        mpsearch.apply_plan(dit_pipe, bare)


def test_resuming_a_profile_reuses_its_stored_calibration(dit_pipe, tmp_path):
    path = tmp_path / "p.sqlite"
    one = profile_local(dit_pipe, out=path, formats=FORMATS, steps=3, labels=(0, 1), seeds=(0, 1), progress=False,
                        shard=(0, 2))
    first = {n: c.x2.clone() for n, c in one.calibration().items()}
    import mpsearch.profiling.profiler as profiler

    def refuse(*a, **k):
        raise AssertionError("the calibration pass ran again on a file that holds one")

    real, profiler.calibrate = profiler.calibrate, refuse
    try:
        two = profile_local(dit_pipe, out=path, formats=FORMATS, steps=3, labels=(0, 1), seeds=(0, 1),
                            progress=False)
    finally:
        profiler.calibrate = real
    assert len(two.units) == 2
    assert all(torch.equal(first[n], c.x2) for n, c in two.calibration().items())


def test_smoothed_kernels_compute_the_reference_product():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    x = torch.randn(10, 64) * torch.linspace(0.1, 8, 64)
    from mpsearch.quantizers import Calibration

    cal = Calibration(x2=x.square().mean(0), xmax=x.abs().amax(0), hessian=(x.t() @ x) / len(x), rows=len(x))
    for name in ("int8:smooth", "nvfp4:smooth"):
        packed = quantize_candidate(name, w, cal)
        assert isinstance(packed, Packed) and "smooth" in packed.tensors
        ref = get_format(name).matmul(x, packed)
        with kernels.reference_only():
            y0 = kernels.linear(x, packed, activations=True)
        y1 = kernels.linear(x, packed, activations=True)
        assert torch.equal(y0, ref)
        assert torch.allclose(y1, ref, rtol=1e-2, atol=1e-2)


def test_migrated_profile_without_calibration_reads_as_none(dit_pipe, tmp_path):
    prof = profile_local(dit_pipe, out=tmp_path / "p.sqlite", formats=("int8",), steps=2, labels=(0,), seeds=(0,),
                         progress=False)
    assert prof.calibration() == {}
    assert Profile.load(tmp_path / "p.sqlite").calibration() == {}


@pytest.mark.parametrize("name", ["int8:clip", "nvfp4:clip", "int4:clip", "int8:smooth", "nvfp4:smooth",
                                  "int8:gptq", "nvfp4:gptq", "int4:gptq", "nvfp4", "int4"])
def test_rows_of_a_candidate_are_the_whole_weights_rows(name):
    from mpsearch.quantizers import Calibration, packed_rows

    g = torch.Generator().manual_seed(3)
    w = torch.distributions.StudentT(3.0).sample((48, 256)) * 0.05
    x = torch.randn(300, 256, generator=g) * torch.linspace(0.2, 6.0, 256)
    cal = Calibration(x2=x.square().mean(0), xmax=x.abs().amax(0), hessian=(x.t() @ x) / len(x), rows=len(x))
    rows = torch.tensor([1, 7, 30, 47])
    part = quantize_candidate(name, w, cal, rows=rows)
    whole = packed_rows(quantize_candidate(name, w, cal), rows)
    assert part.shape == whole.shape == (4, 256) and set(part.tensors) == set(whole.tensors)
    for k in part.tensors:
        a, b = part.tensors[k], whole.tensors[k]
        if name.endswith("gptq") and k == "qweight":  # the same rounding up to a smaller product's float order
            assert (a != b).float().mean() < 0.01
        else:
            assert torch.equal(a, b), k


def test_a_variant_profile_solves_round_to_nearest_only_when_restricted(dit_pipe, tmp_path):
    prof = _profile(dit_pipe, tmp_path / "p.sqlite")
    rtn = prof.select_formats(("int8", "nvfp4", "int4"))
    assert rtn.formats == ("fp", "int8", "nvfp4", "int4") and rtn.digest != prof.digest
    assert np.array_equal(rtn.stats, prof.stats[:, :4], equal_nan=True)
    plan = mpsearch.solve(rtn, budget="60%")
    assert all(":" not in f for f in plan.layers.values()) and not plan.calibration
    with pytest.raises(Exception, match="did not measure"):
        rtn.select_formats(("int8:clip",))
    # a variant that kept round-to-nearest's codes everywhere is no candidate of its own
    from mpsearch.allocation.objective import build_problem

    problem = build_problem(prof, None, role_pins={})
    for fi, f in enumerate(prof.formats):
        base, _, variant = f.partition(":")
        if variant:
            bi = prof.formats.index(base)
            same = np.all(prof.stats[:, fi] == prof.stats[:, bi], axis=(1, 2))
            assert not np.isfinite(problem.cost[same, fi]).any()


def test_the_default_variant_set_and_what_it_says():
    from mpsearch.errors import UsageError
    from mpsearch.profiling.calibrate import choose_variants, parse_variants
    from mpsearch.profiling.profiler import ProfileConfig

    config = ProfileConfig()
    small, line = choose_variants(config)
    assert line is None and small.formats == ("int8", "nvfp4", "int4", "int8:gptq", "int8:smooth-gptq", "nvfp4:gptq",
                                              "nvfp4:smooth-gptq", "int4:gptq")  # exact: the default set
    large, line = choose_variants(config, large=True)
    assert large.formats == config.formats and "no quantizer variants" in line and "--variants default" in line
    chosen, _ = choose_variants(config, "clip,smooth", large=True)
    assert chosen.formats == ("int8", "nvfp4", "int4", "int8:clip", "int8:smooth", "nvfp4:clip", "nvfp4:smooth",
                              "int4:clip")
    assert choose_variants(config, "none")[0].formats == config.formats
    given = ProfileConfig(formats=("int8", "int4:gptq"))
    assert choose_variants(given)[0].formats == given.formats  # formats that name variants are kept
    assert parse_variants("all") == ("clip", "smooth", "gptq", "awq", "smooth-gptq")
    assert parse_variants("default") == ("gptq", "smooth-gptq")
    with pytest.raises(UsageError, match="--variants clip,smooth"):
        parse_variants("clip,sharpen")


def test_cli_profile_refuses_an_unknown_variant_before_loading_anything(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "mpsearch", "profile", "--variants", "fast", "--out",
                        str(tmp_path / "p.sqlite")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "variants must be none, default, all" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "p.sqlite").exists()


def test_a_profile_with_a_corrupt_calibration_row_is_one_profile_error(dit_pipe, tmp_path):
    import sqlite3

    from mpsearch.errors import ProfileError

    path = tmp_path / "p.sqlite"
    _profile(dit_pipe, path)
    with sqlite3.connect(path) as conn:  # a negative mean square: no statistics of real inputs
        data = np.frombuffer(conn.execute("SELECT data FROM calibration WHERE key = 'x2' LIMIT 1").fetchone()[0],
                             dtype="<f4").copy()
        data[0] = -1.0
        conn.execute("UPDATE calibration SET data = ? WHERE rowid = (SELECT rowid FROM calibration WHERE key = 'x2' "
                     "LIMIT 1)", (data.tobytes(),))
    with pytest.raises(ProfileError, match="invalid calibration"):
        Profile.load(path).calibration()


def test_the_calibration_pass_with_its_progress_bar_leaves_the_outputs_alone(dit_pipe, tmp_path, monkeypatch):
    """Its progress hook on the denoiser returned the bar's update value (tqdm says True when it redraws), which
    replaced the denoiser's output: every profile with progress shown (the CLI's, the demo's) failed."""
    import mpsearch.profiling.calibrate as calibrate_module

    class Redrawing:  # a bar that redraws at every update, as tqdm does once its interval has passed
        def __init__(self, *a, **k):
            pass

        def update(self, n=1):
            return True

        def close(self):
            pass

    monkeypatch.setattr(calibrate_module, "tqdm", Redrawing)
    prof = profile_local(dit_pipe, out=tmp_path / "p.sqlite", formats=FORMATS, steps=2, labels=(0,), seeds=(0,),
                         progress=True)
    assert prof.calibration()


def test_the_calibration_pass_records_every_profile_condition_at_the_first_seed(dit_pipe, tmp_path, monkeypatch):
    """It recorded only the first 4 conditions, so on the default DiT 6 of the 10 classes the profile (and the
    test images) use never reached GPTQ's hessian; calibrated on all 10, the same plan's image error fell to
    0.30-0.41x."""
    import mpsearch.profiling.calibrate as calibrate_module

    seen = []

    def recording(pipe, labels, seed, *args):
        seen.append((tuple(labels), seed))
        return generate(pipe, labels, seed, *args)

    monkeypatch.setattr(calibrate_module, "generate", recording)
    labels = (3, 1, 4, 1, 5, 9)
    prof = profile_local(dit_pipe, out=tmp_path / "p.sqlite", formats=("int4", "int4:gptq"), steps=2,
                         labels=labels, seeds=(7, 8), progress=False)
    assert seen == [(labels, 7)]
    assert prof.calibration()
