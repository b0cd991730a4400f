"""Block and grid partition ops of Multi-Axis attention, on channels-last maps.

Both partitions split a `(B, H, W, C)` map into groups of `size * size`
tokens that attend to each other:

* block partition: non-overlapping `size x size` windows of neighbouring
  pixels (local attention);
* grid partition: a fixed `size x size` grid whose cells are `H / size` and
  `W / size` apart, so each group spans the whole map (dilated, global
  attention).

`size` is an int or a `(rows, cols)` pair. Each op returns
`(B * groups, rows * cols, C)`; its inverse takes that back to
`(B, H, W, C)`. `H` must be a multiple of `rows` and `W` of `cols`. They are
pure functions of `keras.ops` and work on symbolic and eager tensors of every
backend.
"""

from keras import ops


def to_pair(size) -> tuple[int, int]:
    """`size` as a `(rows, cols)` pair of positive ints."""
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair
    ):
        raise ValueError(
            f"A partition size must be a positive int or a pair of them. Received: size={size!r}"
        )
    return pair


def _check_divisible(height, width, size, op_name):
    for side_name, side, part in (("height", height, size[0]), ("width", width, size[1])):
        if isinstance(side, int) and side % part != 0:
            raise ValueError(
                f"`{op_name}` needs a feature map whose {side_name} is a "
                f"multiple of {part} (size={size}). Received: {side_name}={side}"
            )


def block_partition(x, size):
    """Split `(B, H, W, C)` into windows: `(B * H/p * W/q, p * q, C)`.

    With `(p, q) = size`, window `n = (b * H/p + r) * W/q + c` holds the
    pixels `[r*p:(r+1)*p, c*q:(c+1)*q]` of image `b`, in row-major order.
    """
    p, q = to_pair(size)
    _, height, width, channels = x.shape
    _check_divisible(height, width, (p, q), "block_partition")
    x = ops.reshape(x, (-1, height // p, p, width // q, q, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, p * q, channels))


def block_reverse(windows, size, height: int, width: int):
    """Inverse of `block_partition`: windows back to `(B, height, width, C)`."""
    p, q = to_pair(size)
    channels = windows.shape[-1]
    x = ops.reshape(windows, (-1, height // p, width // q, p, q, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, height, width, channels))


def grid_partition(x, size):
    """Split `(B, H, W, C)` on a dilated grid: `(B * H/p * W/q, p * q, C)`.

    With `(p, q) = size`, group `n = (b * H/p + r) * W/q + c` holds the
    pixels `[r::H/p, c::W/q]` of image `b` (a `p x q` grid), in row-major
    order.
    """
    p, q = to_pair(size)
    _, height, width, channels = x.shape
    _check_divisible(height, width, (p, q), "grid_partition")
    x = ops.reshape(x, (-1, p, height // p, q, width // q, channels))
    x = ops.transpose(x, (0, 2, 4, 1, 3, 5))
    return ops.reshape(x, (-1, p * q, channels))


def grid_reverse(windows, size, height: int, width: int):
    """Inverse of `grid_partition`: groups back to `(B, height, width, C)`."""
    p, q = to_pair(size)
    channels = windows.shape[-1]
    x = ops.reshape(windows, (-1, height // p, width // q, p, q, channels))
    x = ops.transpose(x, (0, 3, 1, 4, 2, 5))
    return ops.reshape(x, (-1, height, width, channels))
