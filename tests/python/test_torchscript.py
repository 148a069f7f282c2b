"""TorchScript in and out: scripting code that calls the operator, saving it,
and running it from C++ with torch::jit::load (examples/run_torchscript)."""

import os
import subprocess
import warnings

import pytest
import torch

import rotary_attention
from conftest import causal_mask, original_sdpa
from rotary_attention import reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_DIR = os.environ.get("RA_BUILD_DIR", os.path.join(ROOT, "build"))


def script(obj):
    # torch.jit.script works on torch 2.14 but warns that TorchScript is deprecated.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(obj)


def rotate_twice(x: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    y = torch.ops.rotary_attention.rotary(x, inv_freq)
    return torch.ops.rotary_attention.rotary(y, inv_freq, offset=3, layout="half")


def test_scripted_function_calls_the_operator_and_round_trips(tmp_path):
    fn = script(rotate_twice)
    assert "rotary_attention::rotary" in str(fn.graph)
    x = torch.randn(2, 5, 3, 8, requires_grad=True)
    f = reference.RotaryEmbedding(8).inv_freq
    torch.testing.assert_close(fn(x, f), rotate_twice(x, f), rtol=0, atol=0)
    fn(x, f).sum().backward()  # C++ autograd: no Python registration involved
    assert x.grad is not None
    path = os.fspath(tmp_path / "fn.pt")
    fn.save(path)
    loaded = torch.jit.load(path)
    torch.testing.assert_close(loaded(x, f), rotate_twice(x, f), rtol=0, atol=0)


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_scripted_layer_matches_the_original_and_has_its_keys(sdpa):
    """torch.jit.script takes the nn.Module itself (its cache-free path)."""
    ref = reference.randomize_weights_(reference.MultiHeadAttention(64, 4), seed=1).eval()
    model = rotary_attention.MultiHeadAttention(64, 4, sdpa=sdpa)
    assert sorted(model.state_dict()) == sorted(ref.state_dict())
    model.load_state_dict(ref.state_dict())
    scripted = script(model.eval())
    x, xa = torch.randn(2, 6, 64), torch.randn(2, 9, 64)
    with original_sdpa(sdpa), torch.no_grad():
        for args in [dict(), dict(mask=causal_mask(8)), dict(xa=xa)]:
            want = ref(x, **args)
            got = scripted(x, **args)
            torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
            assert (got[1] is None) == (want[1] is None)


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_cpp_program_runs_the_scripted_model(tmp_path, sdpa):
    exe = os.path.join(BUILD_DIR, "examples", "run_torchscript")
    assert os.path.exists(exe), f"{exe} is missing: build with scripts/test.sh (or set RA_BUILD_DIR)"
    ref = reference.randomize_weights_(reference.MultiHeadAttention(64, 4), seed=2).eval()
    model = rotary_attention.MultiHeadAttention(64, 4, sdpa=sdpa)
    model.load_state_dict(ref.state_dict())
    script(model.eval()).save(os.fspath(tmp_path / "model.pt"))
    torch.save(ref.state_dict(), tmp_path / "weights.pt")
    x, mask = torch.randn(2, 7, 64), causal_mask(10)
    torch.save({"x": x, "mask": mask}, tmp_path / "inputs.pt")

    subprocess.run(
        [exe] + [os.fspath(tmp_path / n) for n in ("model.pt", "weights.pt", "inputs.pt", "outputs.pt")], check=True
    )

    outputs = torch.load(tmp_path / "outputs.pt", weights_only=True)
    with original_sdpa(sdpa), torch.no_grad():
        want_out, want_qk = ref(x, mask=mask)
    torch.testing.assert_close(outputs["script_out"], want_out, rtol=0, atol=0)
    torch.testing.assert_close(outputs["cpp_out"], want_out, rtol=0, atol=0)
    if sdpa:
        assert "script_qk" not in outputs
    else:
        torch.testing.assert_close(outputs["script_qk"], want_qk, rtol=0, atol=0)
        torch.testing.assert_close(outputs["cpp_qk"], want_qk, rtol=0, atol=0)
