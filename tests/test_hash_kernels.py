"""The fused hash-grid kernels against the tensor version of the encoding. Without a CUDA device they run in
Triton's interpreter (on CPU tensors), so the same checks pin the kernels' arithmetic on every machine."""

import sys
from collections.abc import Iterator

import pytest
import torch

from dreamfusion import hash_kernels
from dreamfusion.field import FieldConfig, HashGridConfig, HashGridEncoding, NeRFField
from dreamfusion.hash_kernels import fused_encode

pytest.importorskip("triton", reason="the fused kernels need Triton (pip install triton)")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Dense and hashed levels both; a table small enough that hashed levels collide.
CONFIG = HashGridConfig(levels=4, features_per_level=2, log2_table_size=10, base_resolution=4, max_resolution=48, kernel="torch")


@pytest.fixture(autouse=True, scope="module")
def kernels_for_this_machine() -> Iterator[None]:
    """Compiled kernels on a CUDA device, interpreted ones otherwise (Triton reads the switch when it builds them)."""
    def forget() -> None:
        hash_kernels._kernels.cache_clear()
        sys.modules.pop("dreamfusion.hash_triton", None)

    forget()
    with pytest.MonkeyPatch.context() as patch:
        if DEVICE.type == "cpu":
            patch.setenv("TRITON_INTERPRET", "1")
        yield
    forget()


def _encoding() -> HashGridEncoding:
    torch.manual_seed(0)
    encoding = HashGridEncoding(CONFIG).to(DEVICE)
    with torch.no_grad():
        encoding.tables.uniform_(-1, 1)  # well away from the tiny initial values, so mistakes show
    assert 0 < encoding.dense_levels < CONFIG.levels
    return encoding


def _points(count: int = 300) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    points = torch.rand(count, 3, generator=generator)
    points[:4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.5], [0.25, 0.5, 0.75]])  # edges, grid lines
    # Two rays of closely spaced samples, as a render queries them: runs of points share a cell of each coarse level.
    for start in (37, 150):
        origin, direction = torch.rand(3, generator=generator) * 0.5, torch.nn.functional.normalize(torch.rand(3, generator=generator), dim=0)
        points[start : start + 64] = (origin + torch.linspace(0, 0.5, 64)[:, None] * direction).clamp(0, 1)
    return points.to(DEVICE)


def _fused(encoding: HashGridEncoding, points: torch.Tensor, with_jacobian: bool):
    return fused_encode(points, encoding.tables.reshape(-1, CONFIG.features_per_level), encoding.layout, with_jacobian)


def test_features_and_jacobian_match_the_tensor_version() -> None:
    encoding, points = _encoding(), _points()
    features, jacobian = _fused(encoding, points, with_jacobian=True)
    want_features, want_jacobian = encoding.forward_with_jacobian(points)
    assert torch.allclose(features, want_features, atol=1e-5)
    assert torch.allclose(jacobian, want_jacobian, atol=1e-4 * CONFIG.max_resolution)
    only_features, none = _fused(encoding, points, with_jacobian=False)
    assert none is None and torch.allclose(only_features, encoding(points), atol=1e-5)


def test_table_gradients_match_the_tensor_version() -> None:
    encoding, points = _encoding(), _points()
    generator = torch.Generator().manual_seed(2)
    width = CONFIG.output_dim
    weight_features = torch.randn(points.shape[0], width, generator=generator).to(DEVICE)
    weight_jacobian = torch.randn(points.shape[0], 3, width, generator=generator).to(DEVICE)

    def table_gradient(features: torch.Tensor, jacobian: torch.Tensor | None) -> torch.Tensor:
        loss = (features * weight_features).sum() + (0.0 if jacobian is None else (jacobian * weight_jacobian).sum())
        (gradient,) = torch.autograd.grad(loss, encoding.tables)
        return gradient

    want = table_gradient(*encoding.forward_with_jacobian(points))
    got = table_gradient(*_fused(encoding, points, with_jacobian=True))
    assert want.abs().max() > 0
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-4)
    # Features alone, and the Jacobian alone: each output's gradient is scattered on its own.
    assert torch.allclose(table_gradient(_fused(encoding, points, False)[0], None), table_gradient(encoding(points), None), atol=1e-4)
    _, jacobian = _fused(encoding, points, with_jacobian=True)
    assert jacobian is not None
    (alone,) = torch.autograd.grad((jacobian * weight_jacobian).sum(), encoding.tables)
    (want_alone,) = torch.autograd.grad((encoding.forward_with_jacobian(points)[1] * weight_jacobian).sum(), encoding.tables)
    assert torch.allclose(alone, want_alone, atol=1e-3, rtol=1e-4)


def test_no_points_and_points_that_need_a_gradient() -> None:
    encoding = _encoding()
    features, jacobian = _fused(encoding, torch.zeros(0, 3, device=DEVICE), with_jacobian=True)
    assert features.shape == (0, CONFIG.output_dim) and jacobian is not None and jacobian.shape == (0, 3, CONFIG.output_dim)
    with pytest.raises(ValueError, match="points"):
        _fused(encoding, _points().requires_grad_(True), with_jacobian=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the field uses the fused kernels on CUDA devices only")
def test_a_cuda_field_renders_the_same_with_either_kernel() -> None:
    """The whole field (density, albedo, analytic normals) and its parameter gradients, fused against tensor ops."""
    fields = []
    for kernel in ("fused", "torch"):
        torch.manual_seed(0)
        encoding = HashGridConfig(levels=8, log2_table_size=14, base_resolution=8, max_resolution=128, kernel=kernel)
        fields.append(NeRFField(FieldConfig(encoding=encoding)).to(DEVICE))
        with torch.no_grad():
            fields[-1].encoding.tables.uniform_(-0.1, 0.1)
    points = (torch.rand(20_000, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1).to(DEVICE)
    outputs, gradients = [], []
    for field in fields:
        out = field(points, with_normals=True)
        assert out.normals is not None
        loss = out.density.sum() + out.albedo.sum() + (out.normals * torch.linspace(-1, 1, 3, device=DEVICE)).sum()
        gradients.append(torch.autograd.grad(loss, list(field.parameters())))
        outputs.append(out)
    fused, tensor = outputs
    assert torch.allclose(fused.density, tensor.density, rtol=1e-4, atol=1e-4)
    assert torch.allclose(fused.albedo, tensor.albedo, atol=1e-5)
    assert torch.allclose(fused.normals, tensor.normals, atol=1e-3)
    for got, want in zip(*gradients, strict=True):
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-3 * want.abs().max().item())
