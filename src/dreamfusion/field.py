"""The NeRF field: a multiresolution hash-grid encoding (Instant-NGP) in plain PyTorch and a small MLP giving
density (with the DreamFusion "blob" bias) and albedo, plus normals from the density gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from dreamfusion.hash_kernels import GridLayout, fused_encode, triton_available

EncodingKernel = Literal["fused", "torch"]
DensityBias = Literal["blob_dreamfusion", "blob_magic3d", "none"]
DensityActivation = Literal["exp", "softplus"]
NormalMethod = Literal["analytic", "autograd", "finite_difference"]

_PRIMES = (1, 2654435761, 805459861)


class _GatherRows(torch.autograd.Function):
    """``table[index]`` whose backward scatters with ``index_add_`` (atomic adds on CUDA) instead of the
    sort-based accumulation of advanced indexing, which dominated the renderer's GPU time. Scatter and gather
    are each other's backward, so the normals' double backward works too."""

    @staticmethod
    def forward(ctx: Any, table: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.rows = table.shape[0]
        return table.index_select(0, index)  # on a CPU three times faster than table[index]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        return _ScatterRows.apply(grad, index, ctx.rows), None


class _ScatterRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, values: Tensor, index: Tensor, rows: int) -> Tensor:
        ctx.save_for_backward(index)
        return values.new_zeros(rows, values.shape[1]).index_add_(0, index, values)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (index,) = ctx.saved_tensors
        return _GatherRows.apply(grad, index), None, None


def gather_rows(table: Float[Tensor, "T F"], index: Tensor) -> Float[Tensor, "N F"]:
    """Rows of ``table`` at ``index``, differentiable (twice) with respect to ``table``."""
    return _GatherRows.apply(table, index)


@dataclass(frozen=True)
class HashGridConfig:
    """Multiresolution hash encoding (Mueller et al. 2022)."""

    levels: int = 16
    features_per_level: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 256
    """Finest grid resolution over the bounding cube; the per-level growth factor follows from it. Keep its cell
    near half a training pixel's footprint on the object (256 for 64 px renders): the prior cannot see finer
    detail, so finer levels only learn noise, which shows as dark speckle in shaded views (with the embedded
    prior, 2048 -> 256 took the shading speckle of eval-3d from 0.074 to 0.044 over 3 bench prompts)."""
    init_scale: float = 1e-4
    kernel: EncodingKernel = "fused"
    """"fused": on CUDA, the Triton kernels of ``hash_kernels`` (where Triton is installed and the points need no
    gradient, as in every render): a default training step on an H200 took 9.0 ms with them, 15.1 ms with tensor
    operations (the kernels themselves 0.8 ms); "torch": tensor operations everywhere. Both give the same
    features up to the order of float sums."""

    def __post_init__(self) -> None:
        if min(self.levels, self.features_per_level, self.log2_table_size, self.base_resolution) <= 0:
            raise ValueError("hash grid levels, features, table size and base resolution must be positive")
        if self.max_resolution < self.base_resolution:
            raise ValueError("hash grid max_resolution must be >= base_resolution")

    @property
    def output_dim(self) -> int:
        return self.levels * self.features_per_level


class HashGridEncoding(nn.Module):
    """Trilinearly interpolated features from one hashed (or dense, where it fits) table per level.

    Inputs are points in [0, 1]^3. Plain PyTorch so it runs on CPU and CUDA and supports double
    backward, which the normals of the orientation loss need.
    """

    def __init__(self, config: HashGridConfig) -> None:
        super().__init__()
        self.config = config
        table_size = 2**config.log2_table_size
        growth = math.exp(
            (math.log(config.max_resolution) - math.log(config.base_resolution)) / max(config.levels - 1, 1)
        )
        resolutions = [int(math.floor(config.base_resolution * growth**level)) for level in range(config.levels)]
        # Coarse levels whose grid fits the table are indexed densely (no collisions); the rest are hashed.
        self.dense_levels = sum((res + 1) ** 3 <= table_size for res in resolutions)
        self.table_size = table_size
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.float32), persistent=False)
        multipliers = [
            [1, res + 1, (res + 1) ** 2] if level < self.dense_levels else list(_PRIMES)
            for level, res in enumerate(resolutions)
        ]
        self.register_buffer("axis_multipliers", torch.tensor(multipliers, dtype=torch.int64), persistent=False)
        self.register_buffer(
            "level_offsets", torch.arange(config.levels, dtype=torch.int64) * table_size, persistent=False
        )
        self.tables = nn.Parameter(
            (torch.rand(config.levels, table_size, config.features_per_level) * 2 - 1) * config.init_scale
        )

    @property
    def layout(self) -> GridLayout:
        return GridLayout(self.resolutions, self.axis_multipliers, self.level_offsets, self.dense_levels, self.table_size,
                          self.config.features_per_level)  # fmt: skip

    def _fuses(self, x: Tensor) -> bool:
        """Whether to encode ``x`` with the fused kernels (see ``HashGridConfig.kernel``). Never inside
        torch.compile, which fuses the tensor version itself."""
        return (self.config.kernel == "fused" and x.is_cuda and not x.requires_grad and triton_available()
                and not torch.compiler.is_compiling())  # fmt: skip

    def _corners(self, x: Float[Tensor, "N 3"]) -> tuple[Float[Tensor, "N L 8 F"], Float[Tensor, "N L 3 2"]]:
        """Features at the 8 grid corners around each point, per level, and the per-axis (1 - f, f) pairs."""
        levels, features = self.config.levels, self.config.features_per_level
        scaled = x[:, None, :] * self.resolutions[None, :, None]  # N L 3
        base = torch.floor(scaled.detach())
        frac = scaled - base  # keeps the gradient with respect to x
        # Integer coordinates of the two grid lines around x on each axis: N L 3 2.
        coords = base.long()[..., None] + torch.arange(2, device=x.device)
        # Per-axis index terms, combined over the 8 corners by broadcasting (bit 2: x, bit 1: y, bit 0: z):
        # far cheaper than forming all 8 x 3 corner coordinates first.
        terms = coords * self.axis_multipliers[None, :, :, None]
        dense_levels = self.dense_levels
        # Hashed levels: XOR commutes with the table-size mask, so each axis term is masked before the 8-corner
        # broadcast. Each level's table offset, a multiple of the table size, joins the x term: on hashed levels
        # it shares no bit with the masked terms, so adding it equals XOR-ing it into the hash afterwards.
        terms[:, dense_levels:] &= self.table_size - 1
        first = terms[:, :, 0] + self.level_offsets[None, :, None]
        tx, ty, tz = first[:, :, :, None, None], terms[:, :, 1, None, :, None], terms[:, :, 2, None, None, :]
        index = torch.cat(
            (
                (tx[:, :dense_levels] + ty[:, :dense_levels] + tz[:, :dense_levels]),
                (tx[:, dense_levels:] ^ ty[:, dense_levels:] ^ tz[:, dense_levels:]),
            ),
            dim=1,
        )
        flat = index.reshape(-1)
        values = gather_rows(self.tables.reshape(-1, features), flat).reshape(x.shape[0], levels, 8, features)
        return values, torch.stack((1 - frac, frac), dim=-1)

    @staticmethod
    def _trilinear(wx: Float[Tensor, "N L 2"], wy: Float[Tensor, "N L 2"], wz: Float[Tensor, "N L 2"]) -> Float[Tensor, "N L 8"]:
        """Corner weights as an outer product of per-axis pairs, in the corner order of ``_corners``; cheaper
        to differentiate than a product over axes."""
        return (wx[..., :, None, None] * (wy[..., :, None] * wz[..., None, :])[..., None, :, :]).reshape(*wx.shape[:-1], 8)

    def forward(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N F"]:
        if self._fuses(x):
            return fused_encode(x, self.tables.reshape(-1, self.config.features_per_level), self.layout, False)[0]
        values, pairs = self._corners(x)
        weights = self._trilinear(pairs[:, :, 0], pairs[:, :, 1], pairs[:, :, 2])
        # A broadcast product and sum, not einsum: einsum lowers this to millions of 1x8 @ 8xF batched matmuls.
        # Sizes are spelled out: reshape cannot infer a -1 dimension of an empty batch (no samples).
        return (weights[..., None] * values).sum(dim=2).reshape(x.shape[0], self.config.output_dim)

    def forward_with_jacobian(self, x: Float[Tensor, "N 3"]) -> tuple[Float[Tensor, "N F"], Float[Tensor, "N 3 F"]]:
        """Features and their derivatives with respect to each coordinate of ``x``, in closed form.

        Trilinear interpolation as three nested linear interpolations (z, then y, then x); the derivative along
        an axis interpolates the differences across that axis over the other two. Same gathered corners as
        ``forward``, about half its elementwise work again instead of double backward's several times.
        """
        if self._fuses(x):
            features, jacobian = fused_encode(x, self.tables.reshape(-1, self.config.features_per_level), self.layout, True)
            assert jacobian is not None
            return features, jacobian
        values, pairs = self._corners(x)
        fx, fy, fz = (pairs[:, :, axis, 1, None] for axis in range(3))  # N L 1 each
        v = values.unflatten(2, (2, 2, 2))  # N L x y z F
        along_z = v[:, :, :, :, 1] - v[:, :, :, :, 0]  # N L 2 2 F
        yz = v[:, :, :, :, 0] + fz[..., None, None] * along_z
        along_y = yz[:, :, :, 1] - yz[:, :, :, 0]  # N L 2 F
        xz = yz[:, :, :, 0] + fy[..., None] * along_y
        along_x = xz[:, :, 1] - xz[:, :, 0]  # N L F
        features = xz[:, :, 0] + fx * along_x
        dz_x = along_z[:, :, :, 0] + fy[..., None] * (along_z[:, :, :, 1] - along_z[:, :, :, 0])  # N L 2 F
        dz = dz_x[:, :, 0] + fx * (dz_x[:, :, 1] - dz_x[:, :, 0])
        dy = along_y[:, :, 0] + fx * (along_y[:, :, 1] - along_y[:, :, 0])
        # d frac / dx = resolution of the level.
        jacobian = torch.stack((along_x, dy, dz), dim=1) * self.resolutions[None, None, :, None]  # N 3 L F
        dim = self.config.output_dim
        return features.reshape(x.shape[0], dim), jacobian.reshape(x.shape[0], 3, dim)


@dataclass(frozen=True)
class FieldConfig:
    """Density and albedo of the scene inside the bounding sphere."""

    encoding: HashGridConfig = HashGridConfig()
    hidden: int = 64
    layers: int = 2
    bound: float = 1.4
    """Radius of the scene's bounding sphere; also the half side of the cube the encoding covers."""
    density_activation: DensityActivation = "softplus"
    density_bias: DensityBias = "blob_magic3d"
    """"blob_dreamfusion": + lambda * exp(-|x|^2 / (2 sigma^2)) (paper); "blob_magic3d": + lambda * (1 - |x| / sigma)."""
    blob_density: float | None = None
    """lambda of the blob; None gives 5 for the paper's blob and 10 for Magic3D's."""
    blob_radius: float | None = None
    """sigma of the blob; None gives 0.2 for the paper's blob and 0.5 for Magic3D's."""
    normals: NormalMethod = "analytic"
    """How normals (minus the normalized density gradient) are computed: "analytic" carries the derivative
    through the encoding and MLP in closed form, so losses on normals need one backward pass; "autograd"
    differentiates with create_graph (double backward); "finite_difference" probes 6 more densities."""
    finite_difference_eps: float = 1e-2

    def __post_init__(self) -> None:
        if self.hidden <= 0 or self.layers <= 0 or self.bound <= 0:
            raise ValueError("field hidden, layers and bound must be positive")
        if self.finite_difference_eps <= 0:
            raise ValueError("field finite_difference_eps must be positive")

    @property
    def blob(self) -> tuple[float, float]:
        defaults = {"blob_dreamfusion": (5.0, 0.2), "blob_magic3d": (10.0, 0.5), "none": (0.0, 1.0)}
        lam, sigma = defaults[self.density_bias]
        return (lam if self.blob_density is None else self.blob_density, sigma if self.blob_radius is None else self.blob_radius)


@dataclass
class FieldOutput:
    density: Float[Tensor, " N"]
    albedo: Float[Tensor, "N 3"]
    normals: Float[Tensor, "N 3"] | None


class NeRFField(nn.Module):
    def __init__(self, config: FieldConfig) -> None:
        super().__init__()
        self.config = config
        self.encoding = HashGridEncoding(config.encoding)
        dims = [config.encoding.output_dim] + [config.hidden] * config.layers
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(d_in, d_out), nn.SiLU()]
        layers.append(nn.Linear(dims[-1], 4))
        self.mlp = nn.Sequential(*layers)

    @property
    def bound(self) -> float:
        """Radius of the bounding sphere (see ``geometry.Geometry``)."""
        return self.config.bound

    def density_bias(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        lam, sigma = self.config.blob
        if self.config.density_bias == "blob_dreamfusion":
            return lam * torch.exp(-(x**2).sum(-1) / (2 * sigma**2))
        if self.config.density_bias == "blob_magic3d":
            return lam * (1 - x.norm(dim=-1) / sigma)
        return torch.zeros_like(x[:, 0])

    def _raw(self, x: Float[Tensor, "N 3"]) -> tuple[Float[Tensor, " N"], Float[Tensor, "N 3"]]:
        unit = ((x / self.config.bound) + 1) / 2
        out = self.mlp(self.encoding(unit.clamp(0.0, 1.0)))
        raw_density = out[:, 0] + self.density_bias(x)
        return raw_density, out[:, 1:]

    def _activate(self, raw_density: Tensor) -> Tensor:
        if self.config.density_activation == "exp":
            return torch.exp(raw_density.clamp(max=15.0))  # clamped: exp overflows long before it helps
        return torch.nn.functional.softplus(raw_density)

    def density(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        return self._activate(self._raw(x)[0])

    def forward(self, x: Float[Tensor, "N 3"], with_normals: bool = False) -> FieldOutput:
        if not with_normals:
            raw, albedo_raw = self._raw(x)
            return FieldOutput(self._activate(raw), torch.sigmoid(albedo_raw), None)
        if self.config.normals == "analytic":
            raw, albedo_raw, raw_gradient = self._raw_with_gradient(x)
            density = self._activate(raw)
            gradient = self._activation_slope(raw)[:, None] * raw_gradient
        elif self.config.normals == "finite_difference":
            raw, albedo_raw = self._raw(x)
            density = self._activate(raw)
            gradient = self._finite_difference_gradient(x)
        else:
            create_graph = torch.is_grad_enabled()
            with torch.enable_grad():
                x = x if x.requires_grad else x.detach().requires_grad_(True)
                raw, albedo_raw = self._raw(x)
                density = self._activate(raw)
                # create_graph lets losses on the normals (orientation, shading) train the density.
                (gradient,) = torch.autograd.grad(density.sum(), x, create_graph=create_graph)
        # Normals point against the density gradient: out of the surface.
        return FieldOutput(density, torch.sigmoid(albedo_raw), -torch.nn.functional.normalize(gradient, dim=-1))

    def _raw_with_gradient(
        self, x: Float[Tensor, "N 3"]
    ) -> tuple[Float[Tensor, " N"], Float[Tensor, "N 3"], Float[Tensor, "N 3"]]:
        """``_raw`` plus the gradient of the raw density with respect to x, carried forward through the MLP
        as three tangents (forward-mode differentiation written out for Linear and SiLU layers)."""
        bound = self.config.bound
        unit = ((x / bound) + 1) / 2
        hidden, tangent = self.encoding.forward_with_jacobian(unit.clamp(0.0, 1.0))
        inside = ((unit >= 0) & (unit <= 1)).to(x.dtype)  # the clamp passes no gradient outside the cube
        tangent = tangent * (inside / (2 * bound))[:, :, None]  # N 3 F
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                hidden = layer(hidden)
                tangent = tangent @ layer.weight.T
            elif isinstance(layer, nn.SiLU):
                gate = torch.sigmoid(hidden)
                tangent = tangent * (gate * (1 + hidden * (1 - gate)))[:, None, :]
                hidden = hidden * gate
            else:
                raise TypeError(f"analytic normals do not support {type(layer).__name__} layers")
        bias = self.density_bias(x)
        return hidden[:, 0] + bias, hidden[:, 1:], tangent[:, :, 0] + self._density_bias_gradient(x, bias)

    def _density_bias_gradient(self, x: Float[Tensor, "N 3"], bias: Float[Tensor, " N"]) -> Float[Tensor, "N 3"]:
        """Gradient of ``density_bias`` at x, given its value there."""
        lam, sigma = self.config.blob
        if self.config.density_bias == "blob_dreamfusion":
            return bias[:, None] * (-x / sigma**2)
        if self.config.density_bias == "blob_magic3d":
            return -lam / sigma * x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return torch.zeros_like(x)

    def _activation_slope(self, raw_density: Tensor) -> Tensor:
        """Derivative of ``_activate`` (zero where the exp activation's clamp holds it flat)."""
        if self.config.density_activation == "exp":
            return torch.where(raw_density <= 15.0, torch.exp(raw_density.clamp(max=15.0)), 0.0)
        return torch.sigmoid(raw_density)

    def _finite_difference_gradient(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        eps = self.config.finite_difference_eps
        offsets = torch.eye(3, dtype=x.dtype, device=x.device) * eps
        probes = torch.cat((x[:, None] + offsets, x[:, None] - offsets), dim=1).reshape(-1, 3)
        density = self.density(probes).reshape(x.shape[0], 2, 3)
        return (density[:, 0] - density[:, 1]) / (2 * eps)
