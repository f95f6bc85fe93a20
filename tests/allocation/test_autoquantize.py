"""AutoQuantize as ModelOpt runs it: the gradient score against a brute-force computation, its 0/1 program
against enumeration, the budget re-run; HAWQ's measurement matches the profile's; MixDQ's groups."""

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from mpsearch.allocation.autoquantize import aq_score, autoquantize_search, autoquantize_select, gradient_scores
from mpsearch.allocation.baselines import mixdq_groups
from mpsearch.formats import get_format
from mpsearch.runtime.qmodules import quantized_module

FORMATS = ("fp", "int8", "nvfp4")


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = torch.nn.Linear(32, 32)
        self.b = torch.nn.Linear(32, 16)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _brute(model, batches):
    """Per (layer, format): sum over batches of sum((dL/dY)^2 (Y_q - Y)^2), dL/dY by autograd.grad."""
    out = np.zeros((2, len(FORMATS)))
    for x, target in batches:
        for li, name in enumerate(("a", "b")):
            mod = getattr(model, name)
            keep = {}
            h = mod.register_forward_hook(lambda m, i, o: keep.update(x=i[0].detach(), y=o))  # noqa: B023 (used in this iteration)
            with torch.enable_grad():
                xx = x.clone().requires_grad_(True)  # puts every layer's output on the graph
                loss = F.mse_loss(model(xx), target)
                (g,) = torch.autograd.grad(loss, keep["y"])
            h.remove()
            for fi, f in enumerate(FORMATS):
                if f == "fp":
                    continue
                with torch.no_grad():
                    yq = quantized_module(mod, get_format(f).quantize(mod.weight.detach()))(keep["x"])
                out[li, fi] += float(((g.double() * (yq - keep["y"].detach()).double()) ** 2).sum())
    return out


def test_gradient_score_equals_brute_force():
    model = MLP().eval()
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 32, generator=gen), torch.randn(4, 16, generator=gen)) for _ in range(3)]
    got = gradient_scores(model, [((x,), {}, t) for x, t in batches], [model.a, model.b], FORMATS)
    want = _brute(model, batches)
    assert got[:, 0].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert (got[:, 1:] > 0).all()
    assert all(p.grad is None for p in model.parameters())


def test_aq_score_clamps_like_modelopt():
    import pytest

    assert aq_score(torch.tensor([2.0, 1e6]), torch.tensor([3.0, 1e6])) == pytest.approx(1e20, rel=1e-6)
    assert aq_score(torch.tensor([2.0]), torch.tensor([3.0])) == 36.0


def test_search_matches_enumeration():
    rng = np.random.default_rng(0)
    for _trial in range(5):
        scores = rng.random((4, 3)) * np.array([0.0, 1.0, 3.0])
        scores[rng.integers(0, 4), 2] = np.inf  # one ineligible format
        costs = np.tile([16.0, 8.0, 4.0], (4, 1)) * rng.integers(1, 4, size=(4, 1))
        cap = float(rng.uniform(costs[:, 2].sum(), costs[:, 0].sum()))
        best, best_val = None, np.inf
        for combo in itertools.product(range(3), repeat=4):
            if all(np.isfinite(scores[l, f]) for l, f in enumerate(combo)):
                c = sum(costs[l, f] for l, f in enumerate(combo))
                v = sum(scores[l, f] for l, f in enumerate(combo))
                if c <= cap and v < best_val - 1e-12:
                    best, best_val = combo, v
        choice, status = autoquantize_search(scores, costs, cap)
        if best is None:
            continue
        assert status == "Optimal"
        assert sum(scores[l, f] for l, f in enumerate(choice)) <= best_val + 1e-9


def test_search_sees_tiny_scores():
    # scores at a denoiser's scale (1e-9): the program must still prefer the lower-scored format
    scores = np.array([[0.0, 1e-10, 5e-9], [0.0, 1e-10, 5e-9]])
    costs = np.array([[16.0, 8.0, 4.0], [16.0, 8.0, 4.0]])
    choice, status = autoquantize_search(scores, costs, 16.0)
    assert status == "Optimal" and choice.tolist() == [1, 1]


def test_select_refits_to_real_bytes():
    # nominal costs undercount the 4-bit format's real bytes: at the stated cap the plan is over the budget;
    # the re-run finds a plan whose real bytes fit
    scores = np.array([[0.0, 1.0, 5.0], [0.0, 1.0, 5.0]])
    nominal = np.array([[16, 8, 4], [16, 8, 4]], dtype=float)
    real = np.array([[16, 9, 6], [16, 9, 6]], dtype=float)
    over = autoquantize_select(scores, nominal, real, 0, 12, fit=False)
    assert over["real_bytes"] > 12
    fit = autoquantize_select(scores, nominal, real, 0, 12, fit=True)
    assert fit["real_bytes"] <= 12


def test_mixdq_groups_by_larger_normalized_damage():
    content = np.array([[0, 0.9, np.inf], [0, 0.1, 0.2]])
    quality = np.array([[0, 0.1, np.inf], [0, 0.5, 1.0]])
    assert mixdq_groups(content, quality).tolist() == [True, False]


def test_denoising_batches_names_a_denoiser_called_without_its_noisy_input(monkeypatch):
    """A denoiser called with neither a positional input nor hidden_states=/sample= is a one-line ModelError
    (it was an AttributeError on None.shape)."""
    from types import SimpleNamespace

    import pytest

    import mpsearch.allocation.autoquantize as aq
    from mpsearch.errors import ModelError

    class Den(torch.nn.Module):
        def forward(self, x=None, timestep=None):
            return x

    pipe = SimpleNamespace(unet=Den(), scheduler=SimpleNamespace(alphas_cumprod=torch.linspace(0.9, 0.1, 10)))

    def fake_generate(pipe, labels, seed, steps, guidance_scale):
        pipe.unet(x=torch.zeros(1, 3, 4, 4), timestep=torch.tensor([1]))
        return np.zeros((1, 4, 4, 3), np.float32)

    monkeypatch.setattr(aq, "generate", fake_generate)
    with pytest.raises(ModelError, match=r"without its noisy input .*got keywords \['timestep', 'x'\]"):
        aq.denoising_batches(pipe, [0], [0], steps=1)
