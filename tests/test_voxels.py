import torch

from dreamfusion.voxels import boundary, dilated


def test_dilation_grows_a_cube_of_the_radius_and_stops_at_the_grid() -> None:
    grid = torch.zeros(9, 9, 9, dtype=torch.bool)
    grid[4, 4, 4] = True
    assert int(dilated(grid).sum()) == 27
    assert torch.equal(dilated(grid, 2).nonzero().amin(0), torch.tensor([2, 2, 2]))
    assert int(dilated(grid, 2).sum()) == 125
    corner = torch.zeros(9, 9, 9, dtype=torch.bool)
    corner[0, 0, 0] = True
    assert int(dilated(corner, 2).sum()) == 27


def test_boundary_is_both_sides_of_the_edge() -> None:
    inside = torch.zeros(7, 7, 7, dtype=torch.bool)
    inside[2:5, 2:5, 2:5] = True  # a 3^3 block: its centre voxel is not on the edge
    edge = boundary(inside)
    assert not edge[3, 3, 3] and edge[2, 2, 2] and edge[1, 1, 1] and not edge[0, 0, 0]
    assert int(edge.sum()) == 5**3 - 1
    assert not boundary(torch.ones(4, 4, 4, dtype=torch.bool)).any()
