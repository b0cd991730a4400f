"""The stem's convolution: a `keras.layers.Conv2D` that can take a kernel."""

import keras

from keras_maxvit.kernels.channels_first import same_conv
from keras_maxvit.kernels.select import use_kernel


@keras.saving.register_keras_serializable(package="keras_maxvit")
class StemConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D`, the same arguments, weights and config.

    A plain channels-last "same" convolution runs as the "conv" kernel where
    `use_kernel` takes it (eager PyTorch on CPU: one channels-first conv
    with its bias, no layout copies); otherwise, and always when quantized,
    with LoRA or another dtype policy, `Conv2D.call`. Files that hold a
    `Conv2D` in its place load as that `Conv2D`, with the same weights.
    """

    def call(self, inputs):
        plain = (
            self.padding == "same"
            and self.data_format == "channels_last"
            and self.groups == 1
            and tuple(self.dilation_rate) == (1, 1)
        )
        if plain and use_kernel("conv", inputs, self):
            return same_conv(self, inputs)
        return super().call(inputs)
