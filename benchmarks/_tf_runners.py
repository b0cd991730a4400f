"""The TensorFlow peer (kecam on tf-keras) and TensorFlow helpers.

The helpers (threads, device-resident inputs, memory peaks) are shared with
keras_maxvit on the TensorFlow backend (`_keras_runners.py`).
"""

from _common import LEARNING_RATE, NUM_CLASSES, SEED, WEIGHT_DECAY, Runner, Skip, error_text, images


def tf_setup(args):
    """Imports TensorFlow with the benchmark's thread counts and GPU memory growth."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.interop_threads)
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    if args.device == "cuda" and not tf.config.list_physical_devices("GPU"):
        raise RuntimeError("--device cuda but TensorFlow sees no GPU")
    return tf


def tf_info(tf) -> dict:
    return {
        "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def tf_inputs(tf, batch: int, resolution: int, raw: bool = False):
    """Device-resident `(images, labels)`, copied to the GPU (if any) once."""
    x, y = images(batch, resolution, channels_first=False, raw=raw)
    # tf.constant lives in host memory; identity under the device scope copies
    # it to the GPU once, instead of at every call.
    with tf.device("/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"):
        return tf.identity(tf.constant(x)), tf.identity(tf.constant(y))


def tf_reset_peak(tf):
    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")


def tf_peak_mib(tf):
    if tf.config.list_physical_devices("GPU"):
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return None


class KecamRunner(Runner):
    """keras-cv-attention-models' MaxViT on TensorFlow with tf-keras (Keras 2,
    `TF_USE_LEGACY_KERAS=1`: it does not build on Keras 3).

    Inference and the training step (GradientTape, cross-entropy, tf-keras
    AdamW) are plain `tf.function`s, with XLA (`jit_compile=True`) for
    `kecam-xla`. This is kecam at its fastest: tf-keras's `train_on_batch` and
    `predict_on_batch` trace the same step into a `tf.function` and add a
    data adapter and a host synchronization to every call.
    """

    def __init__(self, args):
        super().__init__(args)
        tf = tf_setup(args)
        self.tf = tf
        self.info.update(tf_info(tf))
        try:
            import tf_keras
            from keras_cv_attention_models import maxvit
        except ImportError as exc:
            raise Skip(
                f"{error_text(exc)} (pip install keras-cv-attention-models tf-keras)"
            ) from exc
        if args.dtype == "bfloat16":
            tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
        tf_keras.utils.set_random_seed(SEED)
        name = {"xlarge": "MaxViT_XLarge"}.get(args.variant, f"MaxViT_{args.variant.title()}")
        model = getattr(maxvit, name)(
            input_shape=(args.resolution, args.resolution, 3),
            num_classes=NUM_CLASSES,
            pretrained=None,
            classifier_activation=None,
        )
        self.model = model
        self.info["model"] = f"keras_cv_attention_models.maxvit.{name}"
        self.info["tf_keras_version"] = tf_keras.__version__
        self.info["trainable_params"] = int(sum(int(tf.size(v)) for v in model.trainable_variables))
        loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        optimizer = tf_keras.optimizers.AdamW(
            learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY
        )
        optimizer.build(model.trainable_variables)

        def infer(x):
            return model(x, training=False)

        def train_step(x, y):
            with tf.GradientTape() as tape:
                logits = tf.cast(model(x, training=True), tf.float32)
                loss = loss_fn(y, logits)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        xla = args.framework.endswith("-xla")
        self.info["compiler"] = "tf.function(jit_compile=True)" if xla else "tf.function"
        self.info["jit_compile"] = xla
        self.infer = tf.function(infer, jit_compile=xla)
        self.train_step = tf.function(train_step, jit_compile=xla)

    def inputs(self, batch):
        return tf_inputs(self.tf, batch, self.resolution)

    def sync(self, out):
        out.numpy()

    def reset_peak_memory(self):
        tf_reset_peak(self.tf)

    def device_peak_mib(self):
        return tf_peak_mib(self.tf)
