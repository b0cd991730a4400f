"""Block/grid partitions and the relative-position index against NumPy loops."""

import numpy as np
import pytest
from conftest import to_numpy

from keras_maxvit.layers import (
    block_partition,
    block_reverse,
    grid_partition,
    grid_reverse,
    relative_position_index,
)


def block_partition_loops(x, p, q):
    b, h, w, c = x.shape
    out = []
    for n in range(b):
        for r in range(h // p):
            for s in range(w // q):
                window = x[n, r * p : (r + 1) * p, s * q : (s + 1) * q]
                out.append(window.reshape(p * q, c))
    return np.stack(out)


def grid_partition_loops(x, p, q):
    b, h, w, c = x.shape
    out = []
    for n in range(b):
        for r in range(h // p):
            for s in range(w // q):
                group = x[n, r :: h // p, s :: w // q]  # a p x q grid
                assert group.shape[:2] == (p, q)
                out.append(group.reshape(p * q, c))
    return np.stack(out)


CASES = [((2, 8, 8, 3), 2), ((1, 12, 12, 4), 3), ((2, 6, 8, 5), (3, 2)), ((1, 14, 21, 2), 7)]


@pytest.mark.parametrize("shape,size", CASES)
def test_block_partition_matches_loops(shape, size, rng):
    x = rng.normal(size=shape).astype("float32")
    p, q = (size, size) if isinstance(size, int) else size
    windows = to_numpy(block_partition(x, size))
    np.testing.assert_array_equal(windows, block_partition_loops(x, p, q))
    back = to_numpy(block_reverse(windows, size, shape[1], shape[2]))
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("shape,size", CASES)
def test_grid_partition_matches_loops(shape, size, rng):
    x = rng.normal(size=shape).astype("float32")
    p, q = (size, size) if isinstance(size, int) else size
    groups = to_numpy(grid_partition(x, size))
    np.testing.assert_array_equal(groups, grid_partition_loops(x, p, q))
    back = to_numpy(grid_reverse(groups, size, shape[1], shape[2]))
    np.testing.assert_array_equal(back, x)


def test_partitions_differ():
    x = np.arange(2 * 8 * 8 * 1, dtype="float32").reshape(2, 8, 8, 1)
    assert not np.array_equal(to_numpy(block_partition(x, 2)), to_numpy(grid_partition(x, 2)))


def test_partition_rejects_indivisible_map():
    x = np.zeros((1, 10, 8, 3), "float32")
    with pytest.raises(ValueError, match="height=10"):
        block_partition(x, 4)
    with pytest.raises(ValueError, match="size"):
        grid_partition(x, 0)


@pytest.mark.parametrize("size", [1, 2, 3, 7, (2, 3), (4, 1)])
def test_relative_position_index_matches_loops(size):
    p, q = (size, size) if isinstance(size, int) else size
    expected = np.zeros((p * q, p * q), "int64")
    for i in range(p):
        for j in range(q):
            for k in range(p):
                for m in range(q):
                    expected[i * q + j, k * q + m] = (k - i + p - 1) * (2 * q - 1) + (m - j + q - 1)
    np.testing.assert_array_equal(relative_position_index(size), expected)


@pytest.mark.parametrize("size", [3, 7, (2, 4)])
def test_relative_position_bias_matches_timm(size):
    """Our constant-index gather equals timm's one-hot einsum lookup."""
    import torch
    from timm.layers.pos_embed_rel import RelPosBiasTf

    p, q = (size, size) if isinstance(size, int) else size
    reference = RelPosBiasTf(window_size=(p, q), num_heads=3)
    with torch.no_grad():
        reference.relative_position_bias_table.normal_()
        expected = reference.get_bias().numpy().reshape(3, p * q, p * q)
    table = reference.relative_position_bias_table.detach().numpy().reshape(3, -1)
    ours = table[:, relative_position_index(size).reshape(-1)].reshape(3, p * q, p * q)
    np.testing.assert_allclose(ours, expected, atol=1e-6)
