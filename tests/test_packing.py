"""Prepacked CPU weights and int8 weight-only layers: results, state dicts, undoing them."""

from __future__ import annotations

import copy
import gc

import pytest
import torch

from biogpt import BioGPT, cpu
from biogpt.config import ModelConfig
from biogpt.cpu import gemv, layers
from biogpt.cpu.layers import HalfLinear, HalfQKV, Int8Linear, Int8QKV, PackedLinear
from biogpt.cpu.packing import can_prepare, is_prepared, is_quantized
from biogpt.decoding.steps import prefill
from biogpt.errors import BioGPTError

pytestmark = pytest.mark.skipif(
    not can_prepare(BioGPT(ModelConfig.from_name("tiny")).eval()), reason="oneDNN not available"
)


def model() -> BioGPT:
    torch.manual_seed(0)
    return BioGPT(ModelConfig.from_name("tiny")).eval()


def test_packed_forward_matches_and_state_dict_is_unchanged() -> None:
    m = model()
    ids = torch.randint(4, 512, (2, 9))
    before = m(ids).logits
    state = {k: v.clone() for k, v in m.state_dict().items()}
    assert cpu.prepare(m, 16) and is_prepared(m)  # up to 8 rows take the gemv kernel (test_gemv.py)
    # Per layer: fused qkv, out, fc1, fc2; plus the head.
    assert sum(isinstance(x, PackedLinear) for x in m.modules()) == 2 * 4 + 1
    assert torch.allclose(m(ids).logits, before, atol=1e-5)
    packed_state = m.state_dict()
    assert packed_state.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(packed_state[k], v), k


@pytest.mark.parametrize("layers", ["packed", "int8"])
def test_a_prepared_model_refuses_training_casting_and_loading_until_released(
    layers: str,
) -> None:
    m = model()
    cpu.prepare(m) if layers == "packed" else m.quantize_int8()
    ids = torch.randint(4, 512, (1, 6))
    with torch.no_grad():
        before = m(ids).logits
    attempts = [
        ("training", lambda: m.train()),
        ("moving or casting", lambda: m.to(torch.bfloat16)),
        ("moving or casting", lambda: m.double()),
        ("loading weights", lambda: m.load_state_dict(model().state_dict())),
    ]
    for what, attempt in attempts:
        with pytest.raises(BioGPTError, match=f"{what} .*biogpt.cpu.release"):
            attempt()
        # refused before anything was touched: same dtype, same layers, same logits
        assert m.biogpt.embed_tokens.weight.dtype == torch.float32
        assert is_prepared(m) and not m.training and not m.biogpt.training
        with torch.no_grad():
            assert torch.equal(m(ids).logits, before)
    with pytest.raises(BioGPTError, match="inference only"):
        m.biogpt.train()  # a part of the model: its engine layers refuse themselves
    m.eval()
    m.to("cpu").float().eval()  # changing nothing is allowed
    cpu.release(m)
    assert not is_prepared(m)
    assert m.output_projection.weight is m.biogpt.embed_tokens.weight  # tied again
    m.train()
    m.to(torch.bfloat16)
    assert m.biogpt.layers[0].fc1.weight.dtype == torch.bfloat16
    m.load_state_dict(model().to(torch.bfloat16).state_dict())


def test_training_mode_is_never_packed() -> None:
    m = model().train()
    assert not cpu.prepare(m)


def test_parameter_count_is_the_same_packed() -> None:
    m = model()
    count = m.num_parameters()
    assert count == m.config.num_parameters()
    cpu.prepare(m)
    assert m.num_parameters() == count


# --- bf16 on fbgemm's fp16-weight kernel ----------------------------------------------------


def test_half_layer_multiplies_in_fp32_and_gives_the_bf16_weight_back_bit_for_bit(
    monkeypatch,
) -> None:
    monkeypatch.setattr(HalfLinear, "BLOCK_ROWS", 16)  # 40 rows: three blocks
    torch.manual_seed(0)
    weight = (torch.randn(40, 48) * 0.02).bfloat16()
    # values fp16 cannot hold: below its subnormal steps, and beyond its range
    weight[0, :4] = torch.tensor([3e-7, -1e-9, 1e5, -7e4]).bfloat16()
    weight[33, 5] = 2e-8
    bias = torch.randn(40).bfloat16()
    layer = HalfLinear(weight, bias)
    assert len(layer.blocks) == 3
    assert sum(len(where) for where, _ in layer.exceptions) == 5
    assert torch.equal(layer.dense_weight(), weight) and layer.dense_weight().dtype == weight.dtype
    assert torch.equal(layer.to_linear().weight, weight)
    ordinary = weight.clone()
    ordinary[0, :4] = 0.01
    ordinary[33, 5] = 0.01
    layer = HalfLinear(ordinary, bias)
    for rows in (1, 3, 7):
        x = torch.randn(rows, 48).bfloat16()
        want = x.double() @ ordinary.double().T + bias.double()  # fp32 products of bf16 data
        got = layer(x)
        assert got.dtype == torch.bfloat16  # the input's dtype back
        assert torch.equal(got, want.float().bfloat16()) or (
            (got.double() - want).abs().max() <= 2**-8 * want.abs().max()
        )
        logits = HalfLinear(ordinary, bias, out_dtype=torch.float32)(x)
        assert logits.dtype == torch.float32
        assert torch.allclose(logits.double(), want, rtol=1e-5, atol=1e-6)
        # a bf16 product would be off by up to half a bf16 step: this is far closer
        assert (logits.double() - want).abs().max() < 2**-12 * want.abs().max()


def test_bf16_model_packed_for_rows_keeps_half_layers_for_one_row_and_its_weights_back() -> None:
    m = model().to(torch.bfloat16)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    ids = torch.randint(4, 512, (1, 9))
    cpu.prepare(m, 16)
    assert sum(isinstance(x, HalfQKV) for x in m.modules()) == 2
    assert sum(isinstance(x, HalfLinear) for x in m.modules()) == 2 * 4 + 1
    assert not any(isinstance(x, PackedLinear) for x in m.modules())
    assert m(ids).logits.dtype == torch.float32  # logits in fp32, the rest in bf16
    assert m.biogpt.layers[0].fc1(torch.zeros(1, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16
    fc1 = m.biogpt.layers[0].fc1
    cpu.prepare(m, 1)  # greedy after a beam: the same layers, not repacked (seconds at 347M)
    assert m.biogpt.layers[0].fc1 is fc1
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k
    cpu.release(m)
    assert m.output_projection.weight is m.biogpt.embed_tokens.weight  # tied again
    assert m.biogpt.layers[1].self_attn.q_proj.weight.dtype == torch.bfloat16


# --- int8 weight-only -----------------------------------------------------------------------


def test_int8_layer_rounds_its_weights_and_multiplies_a_few_rows_by_them_exactly() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(49, 41)  # odd sizes: vector tails, a partial group of rows
    int8 = Int8Linear.from_linear(linear)
    assert int8.weight.dtype == torch.int8 and int8.weight.abs().max() == 127
    dense = int8.dense_weight()
    # Each weight is within half a quantisation step (its row's absmax / 127) of the original,
    # and the largest of a row is kept exactly.
    step = linear.weight.abs().amax(dim=1, keepdim=True) / 127
    error = (dense - linear.weight).abs()
    assert (error <= 0.5 * step * (1 + 1e-5)).all() and error.amax() > 0.1 * step.amin()
    assert torch.equal(int8.to_linear().weight, dense)
    if not gemv.available():
        pytest.skip("kernel not built or no AVX-512")
    for rows in (1, 5, 8):  # one token, a beam, a batch: weight-only
        x = torch.randn(rows, 49)
        want = (x.double() @ dense.double().T + linear.bias.double()).float()
        got = int8(x)
        assert got.dtype == torch.float32 and got.shape == (rows, 41)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)  # fp32 sums' rounding only
        assert torch.equal(got, torch.cat([int8(row) for row in x.split(1)]))  # as alone


@pytest.mark.parametrize("kernel", [True, False])
def test_int8_layer_quantises_each_token_of_a_sequence_and_sums_exactly(kernel: bool) -> None:
    torch.manual_seed(1)
    linear = torch.nn.Linear(49, 41, bias=False)  # outputs that scale with each row
    int8 = Int8Linear.from_linear(linear)
    if not kernel:
        int8.matrix = None  # as where the kernel is missing: every call takes this way
    if not layers.INT8_MATMUL:
        pytest.skip("no VNNI: sequences take the dequantised weights")
    x = torch.randn(37, 49) * torch.logspace(-30, 2, 37)[:, None]  # rows of every scale
    x[3] = 0.0
    # The oracle: each row rounded to its own 8-bit steps, products summed in int64.
    x_scale = (x.abs().amax(dim=1, keepdim=True) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    x_steps = torch.round(x / x_scale).long()
    want = (x_steps @ int8.weight.long().T).double() * x_scale.double() * int8.scale.double()
    got = int8(x[None])[0]  # one sequence of 37 tokens
    size = want.abs().amax(dim=1, keepdim=True)
    assert ((got.double() - want).abs() <= 1e-6 * size).all()  # fp32 rescaling only
    assert torch.equal(got[3], torch.zeros(41)) and (got[:3] != 0).all()  # even at 1e-30
    assert torch.equal(got[5:7], int8(x[None, 5:7])[0])  # a token's result, whatever the rest
    # about 1% of each row's largest output away from the fp32 layer, small rows and large
    full = linear(x)
    error = (got - full).abs().amax(dim=1)
    assert (error <= 0.02 * full.abs().amax(dim=1)).all()
    int8.bias = torch.randn(41)
    assert torch.equal(int8(x[None])[0], got + int8.bias)


def test_int8_decoding_steps_of_any_batch_are_weight_only_row_by_row() -> None:
    if not gemv.available():
        pytest.skip("kernel not built or no AVX-512")
    torch.manual_seed(2)
    int8 = Int8Linear.from_linear(torch.nn.Linear(49, 41))
    x = torch.randn(13, 1, 49)  # 13 rows of one token: two passes of the kernel
    got = int8(x)
    want = (x[:, 0].double() @ int8.dense_weight().double().T + int8.bias.double()).float()
    assert torch.allclose(got[:, 0], want, atol=1e-5, rtol=1e-5)
    assert torch.equal(got, torch.cat([int8(row) for row in x.split(1)]))


def test_int8_without_int8_matmuls_multiplies_the_dequantised_weights(monkeypatch) -> None:
    monkeypatch.setattr(layers, "INT8_MATMUL", False)  # as on a CPU without VNNI
    monkeypatch.setattr(Int8Linear, "BLOCK_ROWS", 16)  # several blocks
    torch.manual_seed(3)
    int8 = Int8Linear.from_linear(torch.nn.Linear(49, 41))
    x = torch.randn(2, 9, 49)
    want = x.double() @ int8.dense_weight().double().T + int8.bias.double()
    assert torch.allclose(int8(x).double(), want, atol=1e-5, rtol=1e-5)


def test_int8_batches_decode_as_their_prompts_do_alone() -> None:
    # Prompts of different lengths, left-padded, and a batch of nine rows (past the fused
    # step's eight): every row's tokens are those of its prompt decoded alone.
    m = model()
    m.quantize_int8()
    prompts = [[2, 40, 41, 42, 43], [2, 7, 8], [2, 300, 301, 302]]
    ids = torch.tensor([[1] * (5 - len(p)) + p for p in prompts])
    options = dict(max_new_tokens=8, min_new_tokens=8)
    with torch.inference_mode():
        together = m.generate(ids, attention_mask=ids != 1, **options)
        for row, prompt in zip(together, prompts, strict=True):
            alone = m.generate(torch.tensor([prompt]), **options)[0]
            assert torch.equal(row[-len(alone) :], alone)
        nine = torch.randint(4, 512, (9, 4))
        nine[:, 0] = 2
        real = torch.ones_like(nine, dtype=torch.bool)
        # the prompts' logits, bit for bit: each token is rounded with its own scale
        batch_logits = prefill(m, nine, real, m.new_cache(9, 4))
        for row, prompt in zip(batch_logits, nine, strict=True):
            assert torch.equal(row[None], prefill(m, prompt[None], real[:1], m.new_cache(1, 4)))
        together = m.generate(nine, **options)
        for row, prompt in zip(together, nine, strict=True):
            assert torch.equal(row, m.generate(prompt[None], **options)[0])


def test_int8_model_stays_close_to_fp32_and_keeps_its_state_dict_keys() -> None:
    m = model()
    ids = torch.randint(4, 512, (2, 9))
    state = m.state_dict()
    with torch.no_grad():
        want = m(ids).logits
        m.quantize_int8()
        got = m(ids).logits.float()
    assert cpu.prepare(m) and is_quantized(m)  # int8 layers serve any rows: kept as they are
    assert m.dtype == torch.float32
    assert sum(isinstance(x, Int8QKV) for x in m.modules()) == 2
    assert sum(isinstance(x, Int8Linear) for x in m.modules()) == 2 * 4 + 1
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9
    assert m.state_dict().keys() == state.keys()
    with torch.inference_mode():  # greedy decoding: one row at a time through the kernel
        out = m.generate(ids[:1], max_new_tokens=6, min_new_tokens=6)
    assert out.shape == (1, 15)


def test_unpacking_int8_gives_fp32_layers_with_the_dequantised_weights() -> None:
    m = model()
    m.quantize_int8()
    fc1 = m.biogpt.layers[0].fc1.dense_weight()
    cpu.release(m)
    assert not is_quantized(m)
    assert torch.equal(m.biogpt.layers[0].fc1.weight, fc1)
    assert m.output_projection.weight is m.biogpt.embed_tokens.weight  # tied again, exact


def test_int8_survives_a_move_to_where_it_is_and_refuses_a_cast() -> None:
    m = model()
    m.quantize_int8()
    ids = torch.randint(4, 512, (1, 7))
    with torch.no_grad():
        before = m(ids).logits
        fc2 = m.biogpt.layers[1].fc2.dense_weight()
        m.to("cpu")
        assert is_quantized(m)
        assert torch.equal(m.biogpt.layers[1].fc2.dense_weight(), fc2)
        assert torch.equal(m(ids).logits, before)
    with pytest.raises(BioGPTError, match="release"):
        m.to(torch.bfloat16)
    assert is_quantized(m) and m.dtype == torch.float32


@pytest.mark.parametrize("layers", ["packed", "int8"])
def test_a_copy_of_a_prepared_model_outlives_the_original(layers: str) -> None:
    # The kernel's layers hand raw addresses to C: a copy must use its own tensors.
    m = model()
    cpu.prepare(m) if layers == "packed" else m.quantize_int8()
    ids = torch.randint(4, 512, (1, 6))
    with torch.no_grad():
        want = m(ids).logits
        twin = copy.deepcopy(m)
        for module in m.modules():  # scribble over the original's tensors, then drop it
            for value in vars(module).values():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    value.fill_(float("nan"))
            if hasattr(module, "matrix"):
                for v in (module.matrix.bias, module.matrix.scale):
                    if v is not None:
                        v.fill_(float("nan"))
        del m
        gc.collect()
        assert torch.equal(twin(ids).logits, want)


def test_int8_needs_the_cpu() -> None:
    m = model().to("meta")
    with pytest.raises(Exception, match="CPU"):
        m.quantize_int8()


def test_a_model_prepared_while_generating_can_train_again_once_released() -> None:
    """`generate` prepares the model under torch.inference_mode; once released, training
    must work (an evaluation hook that generates, inside a training loop)."""
    for dtype in (torch.float32, torch.bfloat16):
        m = model().to(dtype)
        m.generate(torch.tensor([[2, 5, 6]]), max_new_tokens=3)
        assert is_prepared(m)
        cpu.release(m)
        m.train()
        loss = m(torch.tensor([[2, 5, 6, 7]]), labels=torch.tensor([[2, 5, 6, 7]])).loss
        loss.backward()
        assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_fp16_model_gets_half_layers_too_and_keeps_inf_and_nan_weights() -> None:
    m = model().to(torch.float16)
    with torch.no_grad():
        m.biogpt.layers[0].fc2.weight[3, :2] = torch.tensor([float("inf"), float("nan")])
    state = {k: v.clone() for k, v in m.state_dict().items()}
    assert cpu.prepare(m)
    assert isinstance(m.biogpt.layers[0].fc2, HalfLinear)
    layer = m.biogpt.layers[0].fc2
    assert sum(len(where) for where, _ in layer.exceptions) == 2
    for k, v in m.state_dict().items():
        keep = {"nan": 0.0, "posinf": float("inf"), "neginf": float("-inf")}
        assert torch.equal(v.isnan(), state[k].isnan()), k
        assert torch.equal(v.nan_to_num(**keep), state[k].nan_to_num(**keep)), k
    fc1 = m.biogpt.layers[1].fc1
    x = torch.randn(2, 64).half()
    want = x.double() @ state["biogpt.layers.1.fc1.weight"].double().T
    want += state["biogpt.layers.1.fc1.bias"].double()
    assert torch.allclose(fc1(x).double(), want, atol=2e-3)  # fp32 products, fp16 output
    m = model().to(torch.float16)
    out = m.generate(torch.tensor([[2, 5, 6]]), max_new_tokens=4, min_new_tokens=4)
    assert out.shape == (1, 7) and isinstance(m.output_projection, HalfLinear)


def test_half_layers_give_the_same_logits_whatever_the_thread_count() -> None:
    ids = torch.randint(4, 512, (1, 9))
    threads = torch.get_num_threads()
    outputs = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            m = model().to(torch.bfloat16)
            cpu.prepare(m, 16)
            with torch.inference_mode():
                outputs.append(m(ids).logits)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outputs[0], outputs[1])
