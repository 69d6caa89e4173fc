"""grad_in_layout: the identity forward; the gradient handed on contiguous in the input's layout."""

import torch
import torch.nn.functional as F

from tcnet.models.grad_layout import grad_in_layout


def test_identity_and_gradient_layout():
    x = torch.randn(2, 6, 4, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = grad_in_layout(x)
    assert torch.equal(y, x) and y.data_ptr() == x.data_ptr()  # a view: no copy in the forward
    seen = {}
    y.register_hook(lambda g: seen.setdefault("in", g))
    x.register_hook(lambda g: seen.setdefault("out", g))
    skip = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    up = torch.randn(2, 9, 4, 5).contiguous(memory_format=torch.channels_last)
    torch.cat([y, skip], 1).backward(up)
    # cat hands on a channel slice, contiguous in neither format; the function turns it channels_last
    assert not seen["in"].is_contiguous() and not seen["in"].is_contiguous(memory_format=torch.channels_last)
    assert seen["out"].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x.grad, up[:, :6])


def test_nchw_input_gets_nchw_gradient():
    x = torch.randn(2, 6, 4, 5, requires_grad=True)
    torch.cat([grad_in_layout(x), torch.randn(2, 3, 4, 5)], 1).sum().backward()
    assert x.grad.is_contiguous() and torch.equal(x.grad, torch.ones_like(x))


def test_pass_through_without_grad_or_while_tracing():
    x = torch.randn(1, 2, 3, 3)
    assert grad_in_layout(x) is x  # no gradient needed: nothing wrapped
    with torch.no_grad():
        w = torch.randn(1, 2, 3, 3, requires_grad=True)
        assert grad_in_layout(w) is w
    traced = torch.jit.trace(lambda t: grad_in_layout(F.relu(t)), torch.randn(1, 2, 3, 3, requires_grad=True))
    assert "GradInLayout" not in str(traced.graph)  # the plain graph for export
