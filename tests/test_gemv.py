"""The compiled kernel for 1 to 8 rows (biogpt.cpu._cpu) and the GemvLinear layers decoding puts
it in."""

from __future__ import annotations

import platform
import shutil

import pytest
import torch

from biogpt import BioGPT, cpu
from biogpt.config import ModelConfig
from biogpt.cpu import gemv, packing
from biogpt.cpu.fused import FusedStep
from biogpt.cpu.layers import GemvLinear, GemvQKV, HalfLinear, PackedLinear

needs_kernel = pytest.mark.skipif(
    not gemv.available(), reason="gemv kernel not built or no AVX-512"
)


def _could_be_built_here() -> bool:
    """x86-64 Linux with a C compiler and the AVX-512 subsets the kernel uses."""
    if platform.system() != "Linux" or platform.machine() != "x86_64" or not shutil.which("cc"):
        return False
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = next((line for line in f if line.startswith("flags")), "").split()
    return {"avx512f", "avx512bw", "avx512vl", "fma"} <= set(flags)


# (rows, columns): row counts off the groups of four, columns off the 16 lanes, one of each.
SHAPES = [(1, 1), (2, 3), (3, 15), (4, 16), (5, 17), (7, 33), (64, 48), (131, 1000), (9, 4096)]


def reference(w: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = w.double() @ x.double()
    return y if b is None else y + b.double()


@needs_kernel
def test_hand_computed_case() -> None:
    w = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    y = gemv.gemv(w, torch.ones(3), torch.tensor([0.5, -1.0]))
    assert y.tolist() == [6.5, 14.0]
    assert gemv.gemv(w.bfloat16(), torch.tensor([1.0, 0.0, -1.0])).tolist() == [-2.0, -2.0]
    x = torch.tensor([0.5, 0.25, -2.0]).bfloat16()
    assert gemv.gemv(w.bfloat16(), x).tolist() == [-5.0, -8.75]  # 0.5+0.5-6, 2+1.25-12


# weight and row dtypes: fp32 x fp32, bf16 x fp32 (widened), bf16 x bf16 (pair products)
KINDS = [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.bfloat16,) * 2]


@needs_kernel
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [*SHAPES, (6, 31), (6, 32), (6, 33), (6, 63)])
def test_matches_float64_for_every_shape(
    shape: tuple[int, int], kind: tuple[torch.dtype, torch.dtype]
) -> None:
    torch.manual_seed(sum(shape))
    n, k = shape
    w, x, b = torch.randn(n, k).to(kind[0]), torch.randn(k).to(kind[1]), torch.randn(n)
    for bias in (None, b):
        got = gemv.gemv(w, x, bias)
        want = reference(w, x, bias)
        assert got.dtype == torch.float32 and got.shape == (n,)
        # fp32 sums of k products: within a few ulps of the sum of magnitudes
        bound = 1e-6 * (w.double().abs() @ x.double().abs()) * max(1.0, k**0.5) + 1e-6
        assert ((got.double() - want).abs() <= bound).all()
        assert not torch.equal(got, torch.zeros(n))


@needs_kernel
@pytest.mark.parametrize("kind", KINDS)
def test_results_do_not_depend_on_threads_or_on_the_other_rows(
    kind: tuple[torch.dtype, torch.dtype],
) -> None:
    torch.manual_seed(0)
    w, x, b = torch.randn(203, 777).to(kind[0]), torch.randn(777).to(kind[1]), torch.randn(203)
    threads = torch.get_num_threads()
    try:
        outputs = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            outputs.append(gemv.gemv(w, x, b))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    alone = torch.cat([gemv.gemv(w[i : i + 1], x, b[i : i + 1]) for i in range(203)])
    assert torch.equal(alone, outputs[0])  # each output is one dot product in a fixed order


@needs_kernel
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(131, 1000), (6, 33), (9, 4096), (5, 17)])
def test_several_rows_match_float64_and_each_row_alone(
    shape: tuple[int, int], kind: tuple[torch.dtype, torch.dtype]
) -> None:
    # One pass over the weights for up to MAX_ROWS rows of x (a short prompt); the kernels
    # for six rows and more take the groups two weight rows at a time.
    torch.manual_seed(sum(shape))
    n, k = shape
    w, b = torch.randn(n, k).to(kind[0]), torch.randn(n)
    matrix = gemv.Matrix(w, b)
    for m in range(1, gemv.MAX_ROWS + 1):
        x = torch.randn(m, k).to(kind[1])
        got = matrix(x)
        assert got.shape == (m, n) and got.dtype == torch.float32
        want = x.double() @ w.double().T + b.double()
        bound = 1e-6 * (x.double().abs() @ w.double().abs().T) * max(1.0, k**0.5) + 1e-6
        assert ((got.double() - want).abs() <= bound).all(), m
        alone = torch.stack([matrix(x[i]) for i in range(m)])
        assert torch.equal(got, alone), m  # the same sums in the same order
    assert matrix(torch.randn(2, 3, k).to(kind[1])).shape == (2, 3, n)
    layer = GemvLinear(w, b.to(kind[0]))  # no rows at all take PyTorch's path, as before
    assert layer(torch.randn(0, k).to(kind[0])).shape == (0, n)


@needs_kernel
@pytest.mark.parametrize("shape", [(131, 1000), (9, 4096), (5, 17)])
def test_many_fp32_rows_match_float64_and_each_row_alone(shape: tuple[int, int]) -> None:
    # 9 to 64 rows of fp32 x (a short prompt): six rows at a time over each group of four
    # weight rows read once, with blocks of 1 to 5 at the end; every row as it is alone.
    torch.manual_seed(sum(shape))
    n, k = shape
    w, b = torch.randn(n, k), torch.randn(n)
    matrix = gemv.Matrix(w, b)
    assert matrix.max_rows == gemv.MAX_FP32_ROWS == 64
    assert gemv.Matrix(w.bfloat16(), b).max_rows == gemv.MAX_ROWS
    for m in (9, 12, 13, 17, 29, 64):
        x = torch.randn(m, k)
        got = matrix(x)
        want = x.double() @ w.double().T + b.double()
        bound = 1e-6 * (x.double().abs() @ w.double().abs().T) * max(1.0, k**0.5) + 1e-6
        assert ((got.double() - want).abs() <= bound).all(), m
        assert torch.equal(got, torch.stack([matrix(x[i]) for i in range(m)])), m
    layer = GemvLinear(w, b)  # a prompt of up to 64 tokens takes the kernel, 65 PyTorch's
    x = torch.randn(1, 65, k)
    assert torch.equal(layer(x[:, :64]), matrix(x[0, :64])[None])
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, w, b))


@needs_kernel
def test_bad_arguments_are_refused() -> None:
    w = torch.randn(8, 16)
    with pytest.raises(ValueError, match="contiguous"):
        gemv.gemv(w.t(), torch.randn(8))
    with pytest.raises(ValueError, match="16 columns"):
        gemv.gemv(w, torch.randn(15))
    with pytest.raises(ValueError, match="8 rows"):
        gemv.gemv(w, torch.randn(16), torch.randn(7))
    with pytest.raises(ValueError, match="float16"):
        gemv.gemv(w.half(), torch.randn(16))
    with pytest.raises(ValueError, match="1 to 64"):
        gemv.gemv(w, torch.randn(65, 16))
    with pytest.raises(ValueError, match="1 to 8"):  # only fp32 weights take more rows
        gemv.gemv(w.bfloat16(), torch.randn(9, 16))
    with pytest.raises(ValueError, match="16 columns"):
        gemv.gemv(w, torch.randn(16, 1))  # 16 elements, but not a row of 16


@needs_kernel
def test_int8_weights_hand_computed_case() -> None:
    w = torch.tensor([[1, -2, 3], [127, 0, -127]], dtype=torch.int8)
    scale = torch.tensor([0.5, 0.25])
    # row 0: (1 + 2 * 2 + 3 * -1) * 0.5 + 1 = 2; row 1: (127 - 127 * -1) * 0.25 - 1 = 62.5
    y = gemv.gemv(w, torch.tensor([1.0, -2.0, -1.0]), torch.tensor([1.0, -1.0]), scale)
    assert y.tolist() == [2.0, 62.5]


@needs_kernel
@pytest.mark.parametrize("shape", [*SHAPES, (6, 33)])
def test_int8_weights_match_float64_for_every_shape_and_row_count(shape: tuple[int, int]) -> None:
    torch.manual_seed(sum(shape))
    n, k = shape
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    scale, b = torch.rand(n) / 100 + 1e-3, torch.randn(n)
    matrix = gemv.Matrix(w, b, scale)
    dense = w.double() * scale.double()[:, None]
    for m in (1, 2, 5, 6, 8):  # four weight rows a pass up to five rows of x, two beyond
        x = torch.randn(m, k)
        got = matrix(x)
        want = x.double() @ dense.T + b.double()
        bound = 1e-6 * (x.double().abs() @ dense.abs().T) * max(1.0, k**0.5) + 1e-6
        assert got.dtype == torch.float32 and ((got.double() - want).abs() <= bound).all(), m
        assert torch.equal(got, torch.stack([matrix(row) for row in x])), m
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = matrix(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, got)


@needs_kernel
def test_int8_weights_need_their_scales_and_only_they_take_them() -> None:
    w = torch.randint(-127, 128, (8, 16), dtype=torch.int8)
    with pytest.raises(ValueError, match="scale"):
        gemv.gemv(w, torch.randn(16))
    with pytest.raises(ValueError, match="scale"):
        gemv.gemv(w.float(), torch.randn(16), scale=torch.ones(8))
    with pytest.raises(ValueError, match="scale has 7"):
        gemv.gemv(w, torch.randn(16), scale=torch.ones(7))


# --- GemvLinear in a model ------------------------------------------------------------------


def model(dtype: torch.dtype = torch.float32) -> BioGPT:
    torch.manual_seed(0)
    return BioGPT(ModelConfig.from_name("tiny")).eval().to(dtype)


@needs_kernel
def test_one_row_packs_to_gemv_layers_with_no_copy_of_the_tied_head() -> None:
    m = model()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    embedding = m.biogpt.embed_tokens.weight
    assert cpu.prepare(m, 1)
    assert sum(isinstance(x, GemvQKV) for x in m.modules()) == 2
    assert sum(isinstance(x, GemvLinear) for x in m.modules()) == 2 * 4 + 1
    # the head multiplies by the embedding itself, and the layers hold their own weights
    assert m.output_projection.weight.data_ptr() == embedding.data_ptr()
    packed_state = m.state_dict()
    assert packed_state.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(packed_state[k], v), k
    cpu.release(m)
    assert m.output_projection.weight is m.biogpt.embed_tokens.weight  # tied again


@needs_kernel
def test_gemv_layers_keep_the_weights_they_replace_without_copying() -> None:
    m = model()
    fc1 = m.biogpt.layers[0].fc1.weight
    cpu.prepare(m, 1)
    assert m.biogpt.layers[0].fc1.weight.data_ptr() == fc1.data_ptr()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_decoding_steps_match_the_unpacked_model(dtype: torch.dtype) -> None:
    m = model(dtype)
    ids = torch.randint(4, 512, (1, 12))
    with torch.inference_mode():
        want = m(ids).logits.float()
        cpu.prepare(m, 1)
        cache = m.new_cache(1, 12)
        got = [m(ids[:, :4], cache=cache).logits]  # a 4-token prompt: several rows
        for t in range(4, 12):
            got.append(m(ids[:, t : t + 1], cache=cache).logits)  # one row: the kernel
    got = torch.cat(got, dim=1)
    assert got.dtype == torch.float32  # fp32 logits, bf16 model or not
    tolerance = 1e-5 if dtype == torch.float32 else 0.05  # bf16 activations either way
    assert (got - want).abs().max() < tolerance
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@needs_kernel
def test_bf16_logits_are_fp32_products_for_one_row_and_for_many() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 300, bias=False).bfloat16()
    head = GemvLinear(linear.weight, None, out_dtype=torch.float32)
    head.HEAD_BLOCK_ROWS = 128  # three blocks for the many-row path
    x = torch.randn(12, 64).bfloat16()  # more rows than the kernel takes
    want = x.double() @ linear.weight.double().T
    few = torch.cat([head(x[i : i + 4]) for i in range(0, 12, 4)])  # the kernel, 4 rows a call
    for got in (head(x), few, torch.cat([head(x[i : i + 1]) for i in range(12)])):
        assert got.dtype == torch.float32
        # a bf16 result would be off by up to half a bf16 step (2^-9 relative)
        assert ((got.double() - want).abs() <= 1e-5 * want.abs().max()).all()


@needs_kernel
def test_greedy_and_beam_share_the_kernel_and_many_rows_switch_layouts(monkeypatch) -> None:
    m = model()
    prompt = torch.tensor([[2, 17, 93, 40]])
    prompts = torch.tensor([[2, 17, 93, 40], [2, 5, 300, 8], [2, 44, 9, 120]])
    with monkeypatch.context() as patch:  # the oracle: plain nn.Linear layers, op by op
        patch.setattr(packing, "can_prepare", lambda _: False)
        patch.setattr(FusedStep, "build", classmethod(lambda cls, model, rows=1: None))
        want_greedy = m.generate(prompt, max_new_tokens=8).clone()
        want_beam = m.generate(prompt, max_new_tokens=8, num_beams=3).clone()
        want_many = m.generate(prompts, max_new_tokens=8, num_beams=3).clone()
    assert torch.equal(m.generate(prompt, max_new_tokens=8), want_greedy)
    head = m.output_projection
    assert isinstance(head, GemvLinear)
    assert torch.equal(m.generate(prompt, max_new_tokens=8, num_beams=3), want_beam)
    assert m.output_projection is head  # beam search's 3 rows: the same layers, not repacked
    assert torch.equal(m.generate(prompts, max_new_tokens=8, num_beams=3), want_many)
    assert isinstance(m.output_projection, PackedLinear)  # 9 rows: more than the kernel takes
    m.generate(prompt, max_new_tokens=2)
    assert m.output_projection.weight.data_ptr() == m.biogpt.embed_tokens.weight.data_ptr()


@needs_kernel
def test_without_the_kernel_one_row_packs_for_onednn_or_fbgemm(monkeypatch) -> None:
    monkeypatch.setattr(gemv, "available", lambda: False)
    m = model()
    cpu.prepare(m, 1)
    assert isinstance(m.output_projection, PackedLinear)
    m = model(torch.bfloat16)
    cpu.prepare(m, 1)
    assert isinstance(m.output_projection, HalfLinear)
    assert cpu.is_prepared(m)


@pytest.mark.skipif(gemv.available() or not _could_be_built_here(), reason="kernel present")
def test_the_kernel_is_built_wherever_it_can_be() -> None:
    """A failed build is silent (the extension is optional): fail here instead, where the
    machine could have built it."""
    pytest.fail(
        "biogpt.cpu._cpu is missing or unusable on an AVX-512 x86-64 machine with a compiler"
    )
