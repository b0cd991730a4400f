"""Rematerialization (activation recomputation) for a whole block.

`keras.remat(f)` (and `keras.RematScope`) recompute `f` in the backward pass,
but `f` must be a pure function of its tensor arguments: a layer call that
updates BatchNorm statistics or a stochastic-depth seed inside the recomputed
function would leak JAX tracers, run the updates twice on PyTorch, and trace
the Python `training` flag. `remat_call` makes a block's forward pure: every
variable of the block goes in as an argument, the forward runs in a
`keras.StatelessScope` that records the updates, and the updated
non-trainable values come out as outputs, to be assigned once, outside the
recomputed region. The backward pass then recomputes the same values (same
batch statistics, same drop-path mask from the same seed) from the inputs.
"""

import keras


def remat_call(layer: keras.layers.Layer, forward, inputs):
    """`forward(inputs)` with its activations recomputed in the backward pass.

    Args:
        layer: The layer whose variables `forward` reads and updates.
        forward: A function of one tensor using `layer`'s sublayers.
        inputs: The tensor `forward` takes.

    Returns:
        `forward(inputs)`; `layer`'s non-trainable variables (BatchNorm
        statistics, seed states) are updated as `forward` would update them.
    """
    variables = list(layer.variables)
    stateful = [index for index, v in enumerate(variables) if not v.trainable]

    def pure_forward(x, values):
        mapping = list(zip(variables, values, strict=True))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            outputs = forward(x)
        updates = []
        for index in stateful:
            value = scope.get_current_value(variables[index])
            updates.append(values[index] if value is None else value)
        return outputs, updates

    # Non-trainable values are copied: the assignments below may update a
    # variable's buffer in place (PyTorch) before the backward pass re-reads it.
    values = [v.value if v.trainable else keras.ops.copy(v.value) for v in variables]
    outputs, updates = keras.remat(pure_forward)(inputs, values)
    for index, value in zip(stateful, updates, strict=True):
        variables[index].assign(value)
    return outputs


def check_remat(remat) -> bool:
    if not isinstance(remat, bool):
        raise TypeError(f"`remat` must be True or False. Received: remat={remat!r}")
    return remat
