"""How far torchao's configs are from mpsearch's formats: the numbers of the README's torchao table.

For each format, on the CPU, torchao's quantization of a weight (and for W8A8/W4A4 of an activation) against
mpsearch's: the share of elements whose dequantized value differs, the largest difference (relative to the
tensor's largest magnitude), and for the layers torchao runs on the CPU the output gap against mpsearch's own
error to full precision. Weights: seeded Linear(256 -> 64) layers at several magnitudes in float32 and bfloat16,
and every eligible Linear of the embedded default DiT (real trained weights).

    python scripts/bench_torchao.py          # prints a markdown table (a minute on 2 CPU cores)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchao.prototype.mx_formats.inference_workflow import NVFP4WeightOnlyConfig
from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

import mpsearch
from mpsearch.formats import get_format
from mpsearch.runtime.qmodules import quantized_module


def _copy(lin):
    new = torch.nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None, dtype=lin.weight.dtype)
    new.load_state_dict(lin.state_dict())
    return new


def seeded(dtype):
    for seed in range(12):
        torch.manual_seed(seed)
        lin = torch.nn.Linear(256, 64)
        with torch.no_grad():
            lin.weight.mul_(10.0 ** (seed % 6 - 3))
        yield lin.to(dtype)


def default_linears():
    den = mpsearch.models.get_denoiser(mpsearch.load_pipeline("default"))
    for m in den.modules():
        if isinstance(m, torch.nn.Linear) and m.in_features % 128 == 0 and m.out_features % 16 == 0:
            yield m


def weight_gap(fmt, config, layers):
    """(share of differing dequantized weights, max |difference| / max |w|) over ``layers``."""
    differ = total = 0
    worst = 0.0
    for lin in layers:
        theirs = _copy(lin)
        quantize_(theirs, config())
        ours = get_format(fmt).dequantize(get_format(fmt).quantize(lin.weight.detach())).float()
        w = theirs.weight
        if fmt == "int4":
            with torch.no_grad():
                mine = F.linear(torch.eye(lin.in_features, dtype=lin.weight.dtype), w).t().float()
        else:
            mine = w.dequantize(lin.weight.dtype).float()
        d = (mine - ours).abs()
        differ += int((d > 0).sum())
        total += d.numel()
        worst = max(worst, float(d.max() / lin.weight.detach().abs().max().float()))
    return differ / total, worst


def activation_gap():
    fmt = get_format("nvfp4")
    torch.manual_seed(1)
    differ = total = 0
    for _ in range(16):
        x = torch.randn(64, 256) * torch.rand(64, 1) * 3
        t = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=per_tensor_amax_to_scale(x.abs().max()),
                                 is_swizzled_scales=True, use_triton_kernel=False)
        d = t.dequantize(torch.float32) != fmt.quantize_activation(x)
        differ += int(d.sum())
        total += d.numel()
    return differ / total


def nvfp4_sweep():
    """A wider float32 sweep: 200 tensors (64, 256), rows scaled by U(0, 1), magnitudes 1e-3 to 10: the share of
    elements and of block scales where torchao's NVFP4 and mpsearch's differ (rounding ties and boundaries)."""
    fmt = get_format("nvfp4")
    torch.manual_seed(0)
    el = bs = n_el = n_bs = 0
    for _ in range(200):
        w = torch.randn(64, 256) * torch.rand(64, 1) * 10 ** torch.empty(1).uniform_(-3, 1)
        p = fmt.quantize(w)
        t = NVFP4Tensor.to_nvfp4(w, per_tensor_scale=per_tensor_amax_to_scale(w.abs().max()), is_swizzled_scales=False,
                                 use_triton_kernel=False)
        el += int((t.dequantize(torch.float32) != fmt.dequantize(p)).sum())
        bs += int((t.scale.reshape(64, 16).view(torch.uint8) != p.tensors["block_scale"].view(torch.uint8)).sum())
        n_el += w.numel()
        n_bs += 64 * 16
    return el / n_el, bs / n_bs


def output_gap(fmt, config):
    """max over seeded float32 layers of max|y_torchao - y_mpsearch| / max|y_mpsearch - y_fp|."""
    worst = 0.0
    for lin in seeded(torch.float32):
        theirs = _copy(lin)
        quantize_(theirs, config())
        ours = quantized_module(lin, get_format(fmt).quantize(lin.weight.detach()))
        torch.manual_seed(7)
        x = torch.randn(32, 256)
        with torch.no_grad():
            y_fp, y_t, y_o = lin(x), theirs(x), ours(x)
        worst = max(worst, float((y_t - y_o).abs().max() / (y_o - y_fp).abs().max()))
    return worst


def main():
    rows = []
    cfgs = {"nvfp4": NVFP4WeightOnlyConfig, "int8": Int8DynamicActivationInt8WeightConfig,
            "int4": lambda: PrototypeInt4WeightOnlyConfig(group_size=128)}
    real = list(default_linears())
    for fmt, cfg in cfgs.items():
        for name, layers in (("seeded fp32", list(seeded(torch.float32))),
                             ("seeded bf16", list(seeded(torch.bfloat16))),
                             ("default DiT", real)):
            share, worst = weight_gap(fmt, cfg, layers)
            rows.append((fmt, name, f"{share:.2e}", f"{worst:.2e}"))
    print("| format | weights | share of weights that differ | max difference / max abs(w) |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nnvfp4 activations (seeded, float32): share of elements that differ {activation_gap():.2e}")
    el, bs = nvfp4_sweep()
    print(f"nvfp4 wide float32 sweep (200 tensors): share of dequantized elements that differ {el:.2e}, "
          f"of block scales {bs:.2e}")
    print(f"int8 (W8A8, CPU) outputs: max |torchao - mpsearch| / max |mpsearch - fp| = "
          f"{output_gap('int8', Int8DynamicActivationInt8WeightConfig):.2f}")
    print(f"int4 (CPU tinygemm) outputs: max |torchao - mpsearch| / max |mpsearch - fp| = "
          f"{output_gap('int4', lambda: PrototypeInt4WeightOnlyConfig(group_size=128)):.3f}")


if __name__ == "__main__":
    main()
