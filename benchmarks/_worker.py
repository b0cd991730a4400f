"""Measures ONE framework configuration and prints one JSON line (used by `bench.py`).

Each run is a fresh process, so frameworks never share an interpreter (and
importing torchvision after TensorFlow, which segfaults here, cannot happen).
The driver sets thread counts, the CPU affinity and, for `--device cpu`,
`CUDA_VISIBLE_DEVICES=""`; the worker sets each framework's backend
variables (`ENVIRONMENT`) before importing it.

Within the process: build the model (random weights), then

1. inference throughput: `iters` calls on a batch, synchronized once at the end;
2. single-image latency: `latency_iters` calls on one image, each synchronized;
3. training-step throughput: `iters` steps of forward, cross-entropy,
   backward and AdamW update on a batch, synchronized once at the end;

each after `warmup` untimed calls (the first of which compiles). Peak memory is
the process's peak RSS on CPU and the framework allocator's peak on CUDA.

Tasks other than `bench`: `probe` (is there a GPU, which) and `flops`
(FLOPs per image, counted on timm's model with `FlopCounterMode`).
"""

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import traceback

RESULT_PREFIX = "BENCH_RESULT:"
VARIANTS = ("tiny", "small", "base", "large", "xlarge")
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.05
NUM_CLASSES = 1000
SEED = 0


class Skip(Exception):
    """This configuration does not apply (the reason goes to the results)."""


def _rss_peak_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _error(exc: BaseException, limit: int = 600) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def _images(batch: int, resolution: int, channels_first: bool, seed: int = SEED):
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (
        (batch, 3, resolution, resolution) if channels_first else (batch, resolution, resolution, 3)
    )
    x = rng.standard_normal(shape, dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=(batch,), dtype=np.int32)
    return x, y


class Runner:
    """What the timing loop needs from a framework.

    `infer(x)` and `train_step(x, y)` may return without waiting for the
    device; `sync(out)` waits for `out`. `inputs(batch)` returns device-resident
    `(images, labels)` made once, so no host-to-device copy is timed.
    """

    def __init__(self, args):
        self.resolution = args.resolution
        self.info = {}

    def inputs(self, batch):
        raise NotImplementedError

    def infer(self, x):
        raise NotImplementedError

    def train_step(self, x, y):
        raise NotImplementedError

    def sync(self, out):
        pass

    def set_mode(self, training: bool):
        """Called before the inference and the training phase."""

    def reset_peak_memory(self):
        """Starts a new device-memory peak where the framework allows it (CUDA)."""

    def device_peak_mib(self):
        """Peak device memory in MiB (CUDA), or None on CPU."""
        return None

    def record_compiler_stats(self):
        """Adds compiler statistics to `info` once every function is compiled."""


# ----------------------------------------------------------------------------- torch helpers


def _torch_setup(args):
    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.interop_threads)
    except RuntimeError:  # already set (only possible before any parallel work)
        pass
    torch.manual_seed(SEED)
    return torch


def _torch_device(torch, args):
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
        # As timm's train.py; TF32 float32 matmuls, as JAX and TensorFlow do by default.
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
        return torch.device("cuda")
    return torch.device("cpu")


def _torch_info(torch):
    return {
        "torch_intra_op": torch.get_num_threads(),
        "torch_inter_op": torch.get_num_interop_threads(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def _dynamo_stats():
    """Graph breaks (and their most frequent reasons) and graphs compiled so far."""
    from torch._dynamo.utils import counters

    reasons = sorted(counters["graph_break"].items(), key=lambda item: -item[1])
    return {
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_break_reasons": {str(k)[:300]: int(v) for k, v in reasons[:5]},
    }


class TorchRunner(Runner):
    """timm and torchvision: eager or `torch.compile`, autocast for bfloat16."""

    def __init__(self, args, build_model):
        super().__init__(args)
        torch = _torch_setup(args)
        self.torch = torch
        self.device = _torch_device(torch, args)
        self.bf16 = args.dtype == "bfloat16"
        model = build_model().to(self.device)
        self.model = model
        self.compiled = args.compile
        self.forward = (
            torch.compile(model, dynamic=False, mode=args.compile_mode) if args.compile else model
        )
        # Default AdamW: foreach on CUDA, per-tensor loop on CPU (what users get).
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY
        )
        self.info.update(_torch_info(torch))
        self.info["trainable_params"] = sum(
            p.numel() for p in model.parameters() if p.requires_grad
        )
        if args.compile:
            self.info["compile_mode"] = args.compile_mode

    def _autocast(self):
        return self.torch.autocast(
            device_type=self.device.type, dtype=self.torch.bfloat16, enabled=self.bf16
        )

    def inputs(self, batch):
        x, y = _images(batch, self.resolution, channels_first=True)
        torch = self.torch
        return torch.from_numpy(x).to(self.device), torch.from_numpy(y).long().to(self.device)

    def set_mode(self, training):
        self.model.train(training)

    def infer(self, x):
        with self.torch.inference_mode(), self._autocast():
            return self.forward(x)

    def train_step(self, x, y):
        torch = self.torch
        with self._autocast():
            logits = self.forward(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def sync(self, out):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def reset_peak_memory(self):
        if self.device.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def device_peak_mib(self):
        if self.device.type == "cuda":
            return self.torch.cuda.max_memory_allocated() / 2**20
        return None

    def record_compiler_stats(self):
        if self.compiled:
            self.info.update(_dynamo_stats())


def build_timm(args):
    import timm

    # The `_tf_` models are the official architecture (the one keras_maxvit
    # and kecam implement); other resolutions change only the window size.
    name = f"maxvit_{args.variant}_tf_{args.resolution}"
    if name not in timm.list_models("maxvit_*_tf_*"):
        name = f"maxvit_{args.variant}_tf_224"
    kwargs = {} if name.endswith(f"_{args.resolution}") else {"img_size": args.resolution}

    def build():
        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)

    runner = TorchRunner(args, build)
    runner.info["model"] = name + (f" (img_size={args.resolution})" if kwargs else "")
    return runner


def build_torchvision(args):
    if args.variant != "tiny":
        raise Skip("torchvision only has MaxViT-T (maxvit_t)")
    from torchvision.models import maxvit

    if args.resolution == 224:

        def build():
            return maxvit.maxvit_t(weights=None)

        name = "torchvision.models.maxvit_t()"
    else:
        # maxvit_t fixes partition_size=7 (224 only); same configuration with
        # the official window = side / 32.
        def build():
            return maxvit.MaxVit(
                input_size=(args.resolution, args.resolution),
                stem_channels=64,
                partition_size=args.resolution // 32,
                block_channels=[64, 128, 256, 512],
                block_layers=[2, 2, 5, 2],
                head_dim=32,
                stochastic_depth_prob=0.2,
            )

        name = f"torchvision MaxVit, maxvit_t configuration, partition_size={args.resolution // 32}"
    runner = TorchRunner(args, build)
    runner.info["model"] = name
    return runner


# ----------------------------------------------------------------------------- keras_maxvit


def _keras_model(args, keras):
    import keras_maxvit

    name = {"xlarge": "MaxViTXLarge"}.get(args.variant, f"MaxViT{args.variant.title()}")
    constructor = getattr(keras_maxvit, name)
    if args.dtype == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(SEED)
    # Logits and no preprocessing layer, as timm's and kecam's models.
    model = constructor(
        weights=None,
        input_shape=(args.resolution, args.resolution, 3),
        include_preprocessing=False,
        classifier_activation=None,
    )
    return model, f"keras_maxvit.{name}"


def _keras_common(runner, keras, model, name):
    runner.model = model
    runner.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    runner.optimizer = keras.optimizers.AdamW(
        learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY
    )
    runner.optimizer.build(model.trainable_variables)
    runner.info["trainable_params"] = sum(math.prod(v.shape) for v in model.trainable_variables)
    runner.info["model"] = name
    runner.info["keras_version"] = keras.__version__
    runner.info["dtype_policy"] = keras.mixed_precision.global_policy().name


class KerasJaxRunner(Runner):
    """Jitted `stateless_call` for inference; a jitted, buffer-donating
    stateless train step (what Keras's own JAX trainer compiles, without the
    per-step host synchronization of `train_on_batch`)."""

    def __init__(self, args):
        super().__init__(args)
        import jax
        import keras

        self.jax = jax
        model, name = _keras_model(args, keras)
        _keras_common(self, keras, model, name)
        self.device = jax.devices()[0]
        if args.device == "cuda" and self.device.platform == "cpu":
            raise RuntimeError("--device cuda but JAX sees no GPU (pip install 'jax[cuda12]')")
        self.info["jax_device"] = str(self.device)
        if self.device.platform == "cpu":
            self.info["threads_note"] = "XLA:CPU uses one thread per core of the process affinity"

        # Committed to the device like the train step's outputs: otherwise the
        # second step has another jit cache key and compiles again.
        state = [
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in self.optimizer.variables],
        ]
        self.trainable, self.non_trainable, self.opt_state = jax.device_put(state, self.device)
        loss_fn, optimizer = self.loss_fn, self.optimizer

        def infer(trainable, non_trainable, x):
            return model.stateless_call(trainable, non_trainable, x, training=False)[0]

        def loss_and_state(trainable, non_trainable, x, y):
            logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
            return loss_fn(y, logits), non_trainable

        grad_fn = jax.value_and_grad(loss_and_state, has_aux=True)

        def train_step(trainable, non_trainable, opt_state, x, y):
            (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
            trainable, opt_state = optimizer.stateless_apply(opt_state, grads, trainable)
            return loss, trainable, non_trainable, opt_state

        self._infer = jax.jit(infer)
        self._train = jax.jit(train_step, donate_argnums=(0, 1, 2))

    def inputs(self, batch):
        x, y = _images(batch, self.resolution, channels_first=False)
        return self.jax.device_put(x, self.device), self.jax.device_put(y, self.device)

    def infer(self, x):
        return self._infer(self.trainable, self.non_trainable, x)

    def train_step(self, x, y):
        loss, self.trainable, self.non_trainable, self.opt_state = self._train(
            self.trainable, self.non_trainable, self.opt_state, x, y
        )
        return loss

    def sync(self, out):
        self.jax.block_until_ready(out)

    def device_peak_mib(self):
        # JAX cannot reset the peak: this is the process's peak so far.
        if self.device.platform != "cpu":
            stats = self.device.memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                return stats["peak_bytes_in_use"] / 2**20
        return None


def _tf_setup(args):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.interop_threads)
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    if args.device == "cuda" and not tf.config.list_physical_devices("GPU"):
        raise RuntimeError("--device cuda but TensorFlow sees no GPU")
    return tf


class TFRunnerBase(Runner):
    """Shared by keras_maxvit on TensorFlow and kecam (both tf.function + XLA)."""

    def __init__(self, args):
        super().__init__(args)
        self.tf = _tf_setup(args)
        self.gpu = bool(self.tf.config.list_physical_devices("GPU"))
        self.info["tf_intra_op"] = self.tf.config.threading.get_intra_op_parallelism_threads()
        self.info["tf_inter_op"] = self.tf.config.threading.get_inter_op_parallelism_threads()

    def inputs(self, batch):
        x, y = _images(batch, self.resolution, channels_first=False)
        tf = self.tf
        # tf.constant lives in host memory; identity under the device scope copies
        # it to the GPU once, instead of at every call.
        with tf.device("/GPU:0" if self.gpu else "/CPU:0"):
            return tf.identity(tf.constant(x)), tf.identity(tf.constant(y))

    def sync(self, out):
        # One XLA executable per call: its output is ready when the call is done.
        out.numpy()

    def reset_peak_memory(self):
        if self.gpu:
            self.tf.config.experimental.reset_memory_stats("GPU:0")

    def device_peak_mib(self):
        if self.gpu:
            return self.tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        return None


class KerasTFRunner(TFRunnerBase):
    """`tf.function(jit_compile=True)` inference and train step (GradientTape,
    Keras loss, Keras AdamW), as Keras's TensorFlow trainer compiles them."""

    def __init__(self, args):
        super().__init__(args)
        import keras

        tf = self.tf
        model, name = _keras_model(args, keras)
        _keras_common(self, keras, model, name)
        loss_fn, optimizer = self.loss_fn, self.optimizer

        @tf.function(jit_compile=True)
        def infer(x):
            return model(x, training=False)

        @tf.function(jit_compile=True)
        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            return loss

        self.infer = infer
        self.train_step = train_step


class KerasTorchRunner(Runner):
    """Eager (or `torch.compile`d forward) Keras model on the torch backend;
    the train step is Keras's torch `train_step`: loss, `backward`, Keras AdamW."""

    def __init__(self, args):
        super().__init__(args)
        torch = _torch_setup(args)
        import keras

        self.torch = torch
        self.keras = keras
        model, name = _keras_model(args, keras)
        _keras_common(self, keras, model, name)
        self.info.update(_torch_info(torch))
        self.compiled = args.compile

        def forward_infer(x):
            return model(x, training=False)

        def forward_train(x):
            return model(x, training=True)

        if args.compile:
            self.info["compile_mode"] = args.compile_mode
            forward_infer = torch.compile(forward_infer, dynamic=False, mode=args.compile_mode)
            forward_train = torch.compile(forward_train, dynamic=False, mode=args.compile_mode)
        self.forward_infer = forward_infer
        self.forward_train = forward_train
        x, _ = self.inputs(1)
        self.is_cuda = x.device.type == "cuda"
        if args.device == "cuda" and not self.is_cuda:
            raise RuntimeError("--device cuda but Keras placed tensors on the CPU")

    def inputs(self, batch):
        x, y = _images(batch, self.resolution, channels_first=False)
        ops = self.keras.ops
        return ops.convert_to_tensor(x), ops.convert_to_tensor(y.astype("int64"))

    def infer(self, x):
        with self.torch.no_grad():
            return self.forward_infer(x)

    def train_step(self, x, y):
        model = self.model
        loss = self.loss_fn(y, self.forward_train(x))
        model.zero_grad()
        loss.backward()
        variables = model.trainable_variables
        grads = [v.value.grad for v in variables]
        with self.torch.no_grad():
            self.optimizer.apply(grads, variables)
        return loss

    def sync(self, out):
        if self.is_cuda:
            self.torch.cuda.synchronize()

    def reset_peak_memory(self):
        if self.is_cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def device_peak_mib(self):
        if self.is_cuda:
            return self.torch.cuda.max_memory_allocated() / 2**20
        return None

    def record_compiler_stats(self):
        if self.compiled:
            self.info.update(_dynamo_stats())


# ----------------------------------------------------------------------------- kecam


class KecamRunner(TFRunnerBase):
    """keras-cv-attention-models' MaxViT on TensorFlow with tf-keras (Keras 2,
    `TF_USE_LEGACY_KERAS=1`); XLA-compiled like keras_maxvit's TensorFlow run,
    falling back to a plain `tf.function` if XLA fails."""

    def __init__(self, args):
        super().__init__(args)
        tf = self.tf
        try:
            import tf_keras
            from keras_cv_attention_models import maxvit
        except ImportError as exc:
            raise Skip(f"{_error(exc)} (pip install keras-cv-attention-models tf-keras)") from exc
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

        self._functions = {"infer": infer, "train_step": train_step}
        self.info["compiler"] = {}
        self.infer = self._compiled("infer")
        self.train_step = self._compiled("train_step")

    def _compiled(self, name):
        """XLA first; on a compile error, a plain tf.function (recorded)."""
        tf = self.tf
        fn = self._functions[name]
        state = {"fn": tf.function(fn, jit_compile=True)}
        self.info["compiler"][name] = "XLA"

        def call(*args):
            try:
                return state["fn"](*args)
            except Exception as exc:  # any XLA failure: fall back once
                if self.info["compiler"][name] != "XLA":
                    raise
                self.info["compiler"][name] = f"tf.function without XLA ({_error(exc, 200)})"
                state["fn"] = tf.function(fn)
                return state["fn"](*args)

        return call


# ----------------------------------------------------------------------------- timing


def _timed_throughput(fn, sync, warmup, iters):
    """(seconds of the first call, seconds for `iters` calls synchronized at the end)."""
    start = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        sync(fn())
    start = time.perf_counter()
    out = None
    for _ in range(iters):
        out = fn()
    sync(out)
    return first, time.perf_counter() - start


def _timed_latency(fn, sync, warmup, iters):
    """(seconds of the first call, list of per-call seconds, each synchronized)."""
    start = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        sync(fn())
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        sync(fn())
        samples.append(time.perf_counter() - start)
    return first, samples


RUNNERS = {
    "keras-jax": KerasJaxRunner,
    "keras-tf": KerasTFRunner,
    "keras-torch": KerasTorchRunner,
    "keras-torch-compile": KerasTorchRunner,
    "timm": build_timm,
    "timm-compile": build_timm,
    "torchvision": build_torchvision,
    "kecam": KecamRunner,
}


# Set before the first import of Keras or TensorFlow in the process.
ENVIRONMENT = {
    "keras-jax": {"KERAS_BACKEND": "jax"},
    "keras-tf": {"KERAS_BACKEND": "tensorflow"},
    "keras-torch": {"KERAS_BACKEND": "torch"},
    "keras-torch-compile": {"KERAS_BACKEND": "torch"},
    # kecam's MaxViT is built with Keras 2 (tf-keras); it does not build on Keras 3.
    "kecam": {"TF_USE_LEGACY_KERAS": "1", "KECAM_BACKEND": "tensorflow"},
}


def bench(args) -> dict:
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    os.environ.update(ENVIRONMENT.get(args.framework, {}))
    result = {"framework": args.framework, "status": "ok", "metrics": {}, "errors": {}}
    build_start = time.perf_counter()
    runner = RUNNERS[args.framework](args)
    result["build_s"] = time.perf_counter() - build_start
    metrics, errors = result["metrics"], result["errors"]
    batch = args.batch_size

    runner.set_mode(training=False)
    runner.reset_peak_memory()
    try:
        x, _ = runner.inputs(batch)
        first, seconds = _timed_throughput(
            lambda: runner.infer(x), runner.sync, args.warmup, args.iters
        )
        metrics["first_infer_s"] = first
        metrics["infer_img_s"] = batch * args.iters / seconds
    except Exception as exc:  # recorded, the other phases still run
        errors["infer"] = _error(exc)
    try:
        x1, _ = runner.inputs(1)
        first, samples = _timed_latency(
            lambda: runner.infer(x1), runner.sync, args.warmup, args.latency_iters
        )
        metrics["first_latency_s"] = first
        metrics["latency_ms"] = 1000.0 * statistics.median(samples)
        metrics["latency_ms_min"] = 1000.0 * min(samples)
    except Exception as exc:
        errors["latency"] = _error(exc)
    metrics["infer_peak_rss_mib"] = _rss_peak_mib()
    infer_device_peak = runner.device_peak_mib()
    if infer_device_peak is not None:
        metrics["infer_peak_device_mib"] = infer_device_peak

    runner.set_mode(training=True)
    runner.reset_peak_memory()
    try:
        x, y = runner.inputs(batch)
        first, seconds = _timed_throughput(
            lambda: runner.train_step(x, y), runner.sync, args.warmup, args.iters
        )
        metrics["first_train_s"] = first
        metrics["train_img_s"] = batch * args.iters / seconds
    except Exception as exc:
        errors["train"] = _error(exc)
    metrics["peak_rss_mib"] = _rss_peak_mib()
    train_device_peak = runner.device_peak_mib()
    if train_device_peak is not None:
        metrics["train_peak_device_mib"] = train_device_peak

    # Reported peak: device allocator on CUDA, process RSS on CPU.
    if args.device == "cuda":
        peaks = [p for p in (infer_device_peak, train_device_peak) if p is not None]
        if peaks:
            metrics["peak_mem_mib"] = max(peaks)
    else:
        metrics["peak_mem_mib"] = metrics["peak_rss_mib"]
    runner.record_compiler_stats()
    result["info"] = runner.info
    if not any(k in metrics for k in ("infer_img_s", "latency_ms", "train_img_s")):
        result["status"] = "error"
        result["reason"] = "; ".join(f"{k}: {v}" for k, v in errors.items())
    return result


def probe(args) -> dict:
    """Whether torch sees a CUDA GPU, and which."""
    info = {"cuda": False}
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(
                cuda=True,
                name=torch.cuda.get_device_name(0),
                count=torch.cuda.device_count(),
                memory_gib=props.total_memory / 2**30,
                capability=f"{props.major}.{props.minor}",
                cuda_version=torch.version.cuda,
            )
    except Exception as exc:  # no torch: no GPU known
        info["error"] = _error(exc)
    return info


def flops(args) -> dict:
    """Matmul and convolution FLOPs per image (2 x multiply-adds), on timm's model.

    The forward pass is counted by torch's `FlopCounterMode` (elementwise ops
    and softmax are not counted, as usual), with timm's fused attention off so
    that the attention matmuls are visible to it. A training step is taken as
    3x the forward pass (backward = 2x forward): the counter's formula for
    the backward of grouped (depthwise) convolutions overcounts them.
    """
    import timm
    import torch
    from timm.layers import set_fused_attn
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    set_fused_attn(False)
    name = f"maxvit_{args.variant}_tf_224"
    model = timm.create_model(name, pretrained=False, img_size=args.resolution).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, args.resolution, args.resolution))
    forward = int(counter.get_total_flops())
    return {
        "model": f"{name} (img_size={args.resolution})",
        "forward_flops": forward,
        "train_flops": 3 * forward,
        "by_op": {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="bench", choices=("bench", "probe", "flops"))
    parser.add_argument("--framework", choices=sorted(RUNNERS))
    parser.add_argument("--variant", default="tiny", choices=VARIANTS)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--interop-threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--latency-iters", type=int, default=10)
    parser.add_argument("--compile-mode", default="default")
    args = parser.parse_args(argv)
    args.compile = bool(args.framework) and args.framework.endswith("-compile")

    start = time.perf_counter()
    try:
        if args.task == "probe":
            result = probe(args)
        elif args.task == "flops":
            result = flops(args)
        else:
            if not args.framework:
                parser.error("--framework is required for --task bench")
            result = bench(args)
    except Skip as exc:
        result = {"framework": args.framework, "status": "skipped", "reason": str(exc)}
    except Exception as exc:  # reported to the driver as data
        traceback.print_exc()
        result = {"framework": args.framework, "status": "error", "reason": _error(exc)}
    result["wall_s"] = time.perf_counter() - start
    result["python"] = platform.python_version()
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
