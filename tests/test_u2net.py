"""U2-Net / U2-NetP: reference key layout and outputs, ONNX export parity, output contract, training loss."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from shared.matting.u2net import (
    ONNX_INPUT_NAME,
    ONNX_OUTPUT_NAMES,
    U2NET,
    U2NETP,
    build_model,
    deep_supervision_loss,
    export_onnx,
    load_reference_state_dict,
)
from tests.support import u2net_reference as reference
from tests.support.threads import one_torch_thread  # noqa: F401 (autouse)

# The transcribed reference keeps its original, deprecated F.upsample calls.
pytestmark = pytest.mark.filterwarnings("ignore:`nn.functional.upsample` is deprecated:UserWarning")


VARIANTS: list[tuple[type[nn.Module], Callable[[], nn.Module]]] = [
    (U2NET, reference.U2NET),
    (U2NETP, reference.U2NETP),
]
VARIANT_IDS = ["u2net", "u2netp"]


def _randomise_batchnorm(model: nn.Module) -> None:
    """Give BN layers non-trivial statistics and affine terms, so eval-mode outputs depend on them."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
            assert module.num_batches_tracked is not None
            module.num_batches_tracked.fill_(123)


def _reference_model(factory: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = factory()
    _randomise_batchnorm(model)
    return model.eval()


def _max_abs_diff(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    assert len(a) == len(b)
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("ours_cls", "ref_factory"), VARIANTS, ids=VARIANT_IDS)
def test_reference_checkpoint_loads_strictly_and_gives_the_same_outputs(
    ours_cls: type[nn.Module], ref_factory: Callable[[], nn.Module], tmp_path: Path
) -> None:
    ref = _reference_model(ref_factory)
    ours = ours_cls()

    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert our_shapes == ref_shapes

    # The official checkpoints were saved from nn.DataParallel, hence "module." on every key.
    wrapped = nn.DataParallel(ref).state_dict()
    assert all(k.startswith("module.") for k in wrapped)
    checkpoint = tmp_path / "weights.pth"
    torch.save(wrapped, checkpoint)
    assert load_reference_state_dict(ours, checkpoint) is ours
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key

    # Sides that are not multiples of 32 exercise ceil-mode pooling and resize-to-target upsampling.
    x = torch.rand(1, 3, 61, 83, generator=torch.Generator().manual_seed(2))
    ours.eval()
    with torch.no_grad():
        expected = ref(x)
        got = ours(x)
    assert _max_abs_diff(got, expected) <= 1e-5


def test_plain_state_dict_without_batch_counters_loads() -> None:
    ref = _reference_model(reference.U2NETP)
    # Checkpoints written by PyTorch < 0.4.1 carry no BatchNorm num_batches_tracked entries.
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    ours = load_reference_state_dict(U2NETP(), state)
    assert torch.equal(
        ours.state_dict()["stage1.rebnconvin.bn_s1.running_var"], state["stage1.rebnconvin.bn_s1.running_var"]
    )


def test_incompatible_state_dicts_are_refused_with_the_offending_keys() -> None:
    state = U2NETP().state_dict()
    del state["side3.weight"]
    state["refconv.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \(1\): side3\.weight") as err:
        load_reference_state_dict(U2NETP(), state)
    assert "unexpected keys (1): refconv.weight" in str(err.value)

    narrow = U2NETP().state_dict()
    narrow["side1.weight"] = narrow["side1.weight"][:, :32]
    expected = r"shape mismatches \(1\): side1\.weight: checkpoint \(1, 32, 3, 3\), model \(1, 64, 3, 3\)"
    with pytest.raises(ValueError, match=expected):
        load_reference_state_dict(U2NETP(), narrow)

    # The usual mistake: u2netp.pth for a u2net model. Same key names, other widths.
    with pytest.raises(ValueError, match=r"shape mismatches \(\d+\): stage1\.rebnconv1\.conv_s1\.weight"):
        load_reference_state_dict(U2NET(), U2NETP().state_dict())


def test_parameter_counts_and_build_model() -> None:
    def count(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    u2net, u2netp = build_model("u2net"), build_model("u2netp")
    assert isinstance(u2net, U2NET)
    assert isinstance(u2netp, U2NETP)
    # The sizes the paper reports: 44.0 M and 1.13 M parameters.
    assert count(u2net) == 44_009_869
    assert count(u2netp) == 1_131_181
    with pytest.raises(ValueError, match="unknown U2-Net variant"):
        build_model("u2netx")  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 45, 70)])
def test_seven_sigmoid_maps_at_input_size(shape: tuple[int, int, int, int]) -> None:
    torch.manual_seed(0)
    model = U2NETP().eval()
    with torch.no_grad():
        outputs = model(torch.randn(*shape))
    assert len(outputs) == 7
    batch, _, height, width = shape
    for d in outputs:
        assert d.shape == (batch, 1, height, width)
        assert float(d.min()) >= 0.0
        assert float(d.max()) <= 1.0


@pytest.fixture(scope="module")
def exported_u2netp(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = U2NETP()
    _randomise_batchnorm(model)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "nested" / "u2netp.onnx")
    assert model.training, "export_onnx must restore the training mode"
    return model.eval(), path


def test_onnx_graph_contract(exported_u2netp: tuple[nn.Module, Path]) -> None:
    _, path = exported_u2netp
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [model_input] = session.get_inputs()
    assert model_input.name == ONNX_INPUT_NAME == "input"
    assert model_input.shape == ["batch", 3, "height", "width"]
    outputs = session.get_outputs()
    assert [o.name for o in outputs] == list(ONNX_OUTPUT_NAMES) == [f"d{i}" for i in range(7)]
    assert all(o.shape == ["batch", 1, "height", "width"] for o in outputs)


@pytest.mark.parametrize("shape", [(1, 3, 96, 96), (3, 3, 96, 96), (2, 3, 70, 93)])
def test_onnx_runtime_matches_pytorch(
    exported_u2netp: tuple[nn.Module, Path], shape: tuple[int, int, int, int]
) -> None:
    model, path = exported_u2netp
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
    got = session.run(None, {ONNX_INPUT_NAME: x.numpy()})
    assert len(got) == 7
    for ort_out, torch_out in zip(got, expected, strict=True):
        assert ort_out.shape == tuple(torch_out.shape)
        assert float(np.abs(ort_out - torch_out.numpy()).max()) <= 1e-4


def test_deep_supervision_loss_is_the_papers_and_training_reduces_it() -> None:
    torch.manual_seed(0)
    # A bright square on a dark background, the simplest salient object.
    target = torch.zeros(2, 1, 64, 64)
    target[:, :, 16:48, 20:44] = 1.0
    image = 0.2 + 0.6 * target.expand(-1, 3, -1, -1) + 0.05 * torch.randn(2, 3, 64, 64)

    model = U2NETP().train()
    outputs = model(image)
    loss0, total = deep_supervision_loss(outputs, target)
    bce = nn.BCELoss()
    assert torch.allclose(loss0, bce(outputs[0], target))
    assert torch.allclose(total, sum((bce(d, target) for d in outputs), torch.tensor(0.0)))
    with pytest.raises(ValueError, match="expected 7 outputs"):
        deep_supervision_loss(outputs[:6], target)

    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        optimiser.zero_grad()
        _, total = deep_supervision_loss(model(image), target)
        total.backward()
        optimiser.step()
        losses.append(total.item())
    assert losses[-1] < 0.8 * losses[0], losses
