"""The `ops` conformance group's comparison of an implementation against the reference."""
import torch

from portkit.conformance import ops as ops_group
from portkit.conformance.multiprocess import merge, tail
from portkit.conformance.common import Check
from portkit.backends.cpu import CPUBackend
from portkit.ops import norms
from portkit.ops.registry import OpImpl

DTYPES = [torch.float32, torch.bfloat16]


def check(fn, op="rms_norm_fwd"):
    impl = OpImpl(op=op, fn=fn, predicate=lambda b: True, name="vendor." + op)
    return ops_group.impl_check(CPUBackend(), "vendor", impl, DTYPES)


def test_a_faithful_kernel_passes_in_fp32_and_bf16():
    def kernel(x, weight, eps):  # same math, another order of operations
        xf = x.float()
        rstd = 1.0 / torch.sqrt((xf * xf).sum(-1) / x.shape[-1] + eps)
        return (xf * rstd[:, None] * weight.float()).to(x.dtype), rstd
    assert check(kernel).ok


def test_a_wrong_kernel_is_named_with_shape_and_error():
    c = check(lambda x, weight, eps: (x * 2, norms.rms_norm_fwd(x, weight, eps)[1]))
    assert not c.ok and c.name == "rms_norm_fwd [vendor.rms_norm_fwd]"
    assert c.reason.startswith("op rms_norm_fwd on shape (3, 16) float32: output 0 max abs error")
    assert "fix 'vendor.rms_norm_fwd'" in c.reason


def test_wrong_dtype_and_arity_are_reported():
    c = check(lambda x, weight, eps: tuple(t.double() for t in norms.rms_norm_fwd(x, weight, eps)))
    assert "output 0 is (3, 16) torch.float64, the reference gives (3, 16) torch.float32" in c.reason
    c = check(lambda x, weight, eps: norms.rms_norm_fwd(x, weight, eps)[0])
    assert "returned 1 outputs, the reference returns 2" in c.reason


def test_a_backward_kernel_is_checked_on_its_own_inputs():
    assert check(norms.rms_norm_bwd, "rms_norm_bwd").ok
    c = check(lambda dy, x, w, rstd: (norms.rms_norm_bwd(dy, x, w, rstd)[0], w * 0), "rms_norm_bwd")
    assert not c.ok and "output 1 max abs error" in c.reason


def test_an_unknown_op_name_says_which_names_exist():
    c = check(lambda x: x, op="rmsnorm")
    assert not c.ok and "not a portkit registry op" in c.reason and "rms_norm_fwd" in c.reason


def test_nan_is_a_mismatch():
    assert "max abs error nan" in ops_group.mismatch(torch.tensor([float("nan")]), torch.tensor([1.0]), 1e-4)


def test_ranks_merge_and_logs_shrink_to_the_error():
    ranks = [[Check("a", True), Check("b", True)], [Check("a", True), Check("b", False, "timeout")]]
    assert merge(ranks) == [Check("a", True, ""), Check("b", False, "rank 1: timeout")]
    log = "noise\nTraceback (most recent call last):\n  File x\nValueError: bad rank\ntorch.distributed.elastic ChildFailedError:\n"
    assert tail(log) == "ValueError: bad rank"


def test_an_in_place_op_is_checked_on_what_it_writes():
    import importlib
    adamw = importlib.import_module("portkit.ops.adamw")
    assert check(adamw.adamw_step, "adamw_step").ok  # fp32, and bf16 params with fp32 masters

    def forgets_the_second_moment(params, grads, exp_avgs, exp_avg_sqs, *rest):
        saved = [v.clone() for v in exp_avg_sqs]
        adamw.adamw_step(params, grads, exp_avgs, exp_avg_sqs, *rest)
        for v, old in zip(exp_avg_sqs, saved):
            v.copy_(old)
    c = check(forgets_the_second_moment, "adamw_step")
    assert not c.ok and "argument 3[0] (written in place) max abs error" in c.reason
