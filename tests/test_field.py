import pytest
import torch

from dreamfusion.field import FieldConfig, HashGridConfig, HashGridEncoding, NeRFField, gather_rows
from dreamfusion.geometry import Geometry


def test_dense_level_interpolates_trilinearly() -> None:
    encoding = HashGridEncoding(HashGridConfig(levels=1, features_per_level=1, log2_table_size=12, base_resolution=4, max_resolution=4))
    assert encoding.dense_levels == 1
    # Fill the grid with a linear function of the corner coordinates: trilinear interpolation reproduces it.
    res = 4
    ijk = torch.stack(torch.meshgrid(*(torch.arange(res + 1),) * 3, indexing="ij"), -1).reshape(-1, 3)
    index = ijk[:, 0] + ijk[:, 1] * (res + 1) + ijk[:, 2] * (res + 1) ** 2
    with torch.no_grad():
        encoding.tables.zero_()
        encoding.tables[0, index, 0] = (ijk.float() @ torch.tensor([1.0, 2.0, -0.5])) / res
    x = torch.rand(100, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(encoding(x)[:, 0], x @ torch.tensor([1.0, 2.0, -0.5]), atol=1e-5)


def test_hashed_levels_use_the_whole_table_and_stay_finite() -> None:
    encoding = HashGridEncoding(HashGridConfig(levels=4, log2_table_size=8, base_resolution=8, max_resolution=64))
    assert encoding.dense_levels == 0  # (8 + 1)^3 > 256
    out = encoding(torch.rand(1000, 3))
    assert out.shape == (1000, 8) and torch.isfinite(out).all()


def test_each_corner_reads_its_levels_row_of_the_spatial_hash() -> None:
    """A table whose rows hold their own row number shows which row each corner read: on dense levels the grid
    index, on hashed ones (x ^ y * 2654435761 ^ z * 805459861) mod the table size, each after its level's offset."""
    config = HashGridConfig(levels=4, features_per_level=1, log2_table_size=9, base_resolution=4, max_resolution=16)
    encoding = HashGridEncoding(config)
    assert 0 < encoding.dense_levels < config.levels  # both kinds of level
    size = 2**config.log2_table_size
    with torch.no_grad():
        encoding.tables.copy_(torch.arange(config.levels * size, dtype=torch.float64).reshape(config.levels, size, 1))
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(3))
    rows, _ = encoding._corners(x)
    for level, resolution in enumerate(encoding.resolutions.tolist()):
        low = torch.floor(x * resolution).long()
        for corner in range(8):
            i, j, k = (low[:, axis] + ((corner >> (2 - axis)) & 1) for axis in range(3))
            if level < encoding.dense_levels:
                expected = i + j * (int(resolution) + 1) + k * (int(resolution) + 1) ** 2
            else:
                expected = (i ^ j * 2654435761 ^ k * 805459861) % size
            assert torch.equal(rows[:, level, corner, 0].long(), expected + level * size), (level, corner)


def _tiny_field(**kwargs) -> NeRFField:
    torch.manual_seed(0)
    encoding = HashGridConfig(levels=4, log2_table_size=12, base_resolution=8, max_resolution=64, init_scale=0.5)
    return NeRFField(FieldConfig(encoding=encoding, hidden=16, **kwargs))


def test_autograd_normals_agree_with_finite_differences_and_carry_gradients() -> None:
    field = _tiny_field(normals="autograd")
    finite = _tiny_field(normals="finite_difference", finite_difference_eps=1e-3)
    x = (torch.rand(64, 3, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.6
    exact = field(x, with_normals=True).normals
    approx = finite(x, with_normals=True).normals
    assert ((exact * approx).sum(-1) > 0.95).float().mean() > 0.9
    exact.sum().backward()  # second-order path: losses on normals reach the parameters
    assert field.encoding.tables.grad is not None and field.encoding.tables.grad.abs().sum() > 0


def test_analytic_normals_and_their_parameter_gradients_equal_autograd() -> None:
    # Float64, every bias and activation: the closed-form derivative must equal double backward, in the
    # normals and in the gradient a loss on the normals sends to every parameter.
    x = (torch.rand(200, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.5) * 3.2  # some outside the cube (bound 1.4)
    weights = torch.randn(200, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for bias, activation in (("blob_magic3d", "softplus"), ("blob_dreamfusion", "exp"), ("none", "softplus")):
        fields = {method: _tiny_field(normals=method, density_bias=bias, density_activation=activation).double()
                  for method in ("analytic", "autograd")}
        grads = {}
        for method, field in fields.items():
            out = field(x, with_normals=True)
            ((out.normals * weights).sum() + out.density.sum()).backward()
            grads[method] = (out.normals.detach(), [p.grad.clone() for p in field.parameters()])
        (normals_a, params_a), (normals_b, params_b) = grads["analytic"], grads["autograd"]
        torch.testing.assert_close(normals_a, normals_b, rtol=1e-9, atol=1e-9)
        for grad_a, grad_b in zip(params_a, params_b, strict=True):
            torch.testing.assert_close(grad_a, grad_b, rtol=1e-7, atol=1e-9)
        # Unit normals, except where nothing varies (outside the cube with no bias, or a flat exp clamp).
        assert (normals_a.norm(dim=-1) > 0.99).float().mean() > 0.8 and params_a[0].abs().sum() > 0


def test_encoding_jacobian_matches_autograd() -> None:
    encoding = HashGridEncoding(HashGridConfig(levels=3, log2_table_size=8, base_resolution=4, max_resolution=32, init_scale=1.0)).double()
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    features, jacobian = encoding.forward_with_jacobian(x)
    torch.testing.assert_close(features, encoding(x))
    expected = torch.autograd.functional.jacobian(lambda p: encoding(p).sum(0), x).permute(1, 2, 0)  # N 3 F
    torch.testing.assert_close(jacobian, expected)


def test_blob_biases_density_towards_the_centre() -> None:
    centre, far = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]])
    for bias, activation in (("blob_dreamfusion", "exp"), ("blob_magic3d", "softplus")):
        field = _tiny_field(density_bias=bias, density_activation=activation)
        assert field.density(centre) > 10 * field.density(far)
    assert FieldConfig(density_bias="blob_magic3d").blob == (10.0, 0.5)
    assert FieldConfig(density_bias="blob_dreamfusion").blob == (5.0, 0.2)


def test_gather_rows_is_twice_differentiable_like_indexing() -> None:
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(7, 2, dtype=torch.float64, generator=generator, requires_grad=True)
    index = torch.randint(0, 7, (20,), generator=generator)  # repeats: the scatter must accumulate
    assert torch.equal(gather_rows(table, index), table[index])
    assert torch.autograd.gradcheck(lambda t: gather_rows(t, index), (table,))
    assert torch.autograd.gradgradcheck(lambda t: gather_rows(t, index) ** 2, (table,))
    (grad,) = torch.autograd.grad((gather_rows(table, index) * 3).sum(), table)
    counts = torch.bincount(index, minlength=7).to(grad.dtype)
    assert torch.allclose(grad, 3 * counts[:, None].expand(7, 2))


def test_encoding_of_zero_points_is_empty_and_differentiable() -> None:
    encoding = HashGridEncoding(HashGridConfig(levels=3, log2_table_size=8, base_resolution=4, max_resolution=32))
    features = encoding(torch.zeros(0, 3))
    values, jacobian = encoding.forward_with_jacobian(torch.zeros(0, 3))
    assert features.shape == values.shape == (0, 6) and jacobian.shape == (0, 3, 6)
    (features.sum() + values.sum() + jacobian.sum()).backward()
    assert encoding.tables.grad is not None and not encoding.tables.grad.any()


@pytest.mark.parametrize("method", ["analytic", "autograd", "finite_difference"])
def test_field_of_zero_points_is_empty_and_gradients_still_flow(method: str) -> None:
    field = _tiny_field(normals=method)
    empty, points = torch.zeros(0, 3), (torch.rand(32, 3, generator=torch.Generator().manual_seed(5)) - 0.5)
    assert field.density(empty).shape == (0,)
    plain = field(empty)
    assert plain.density.shape == (0,) and plain.albedo.shape == (0, 3) and plain.normals is None
    with torch.no_grad():
        assert field(empty, with_normals=True).normals.shape == (0, 3)
    nothing, something = field(empty, with_normals=True), field(points, with_normals=True)
    assert nothing.density.shape == (0,) and nothing.albedo.shape == nothing.normals.shape == (0, 3)
    # A loss over both: the empty stage adds nothing and does not break the backward pass.
    loss = sum(out.density.sum() + out.albedo.sum() + out.normals.sum() for out in (nothing, something))
    loss.backward()
    grads = [p.grad for p in field.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert field.encoding.tables.grad.abs().sum() > 0


def test_the_field_is_a_geometry_bounded_by_its_config() -> None:
    field: Geometry = _tiny_field(bound=0.9)
    assert field.bound == 0.9
    points = torch.rand(16, 3) - 0.5
    assert torch.equal(field.density(points), field(points).density) and field(points).normals is None
    normals = field(points, with_normals=True).normals
    assert normals is not None and torch.allclose(normals.norm(dim=-1), torch.ones(16))
