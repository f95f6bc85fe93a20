"""A backward pass through quantized layers: the forward values are the quantized ones bit for bit, and the
gradient is the straight-through estimator's (the float product with the dequantized weight)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.formats import get_format
from mpsearch.runtime.qmodules import QuantConv2d, QuantLinear


@pytest.mark.parametrize("fmt", ["int8", "nvfp4", "int4-g32"])
def test_linear_and_conv_backward_pass_straight_through(fmt):
    f = get_format(fmt)
    torch.manual_seed(0)
    lin = nn.Linear(64, 16)
    conv = nn.Conv2d(32, 8, 3, padding=1)
    for layer, make, shape in ((lin, QuantLinear.from_module, (3, 64)), (conv, QuantConv2d.from_module, (1, 32, 5, 5))):
        packed = f.quantize(layer.weight.detach())
        q = make(layer, packed)
        x = torch.randn(*shape, requires_grad=True)
        y = q(x)
        with torch.no_grad():
            assert torch.equal(y.detach(), q(x))  # the forward values: the quantized layer's, bit for bit
        g = torch.randn_like(y)
        y.backward(g)
        # the straight-through gradient: the float layer with the dequantized weight
        wd = f.dequantize(packed).reshape(layer.weight.shape)
        x2 = x.detach().clone().requires_grad_(True)
        ref = x2 @ wd.t() if layer is lin else nn.functional.conv2d(x2, wd, None, 1, 1)
        ref.backward(g)
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
