"""Data-parallel training over several processes, on each backend's own engine.

- JAX: `keras.distribution.initialize` (jax.distributed; gloo collectives on
  CPU hosts) joins the processes, and `DataParallel` spans every device of
  every process. Each process feeds its share of each global batch.
- TensorFlow: `MultiWorkerMirroredStrategy` from `TF_CONFIG`; each worker
  reads its share of each global batch (auto-shard policy DATA).
- PyTorch: `torch.distributed` as `torchrun` sets it up (NCCL on GPUs, gloo
  on CPU). Gradients are all-reduced (averaged) before each optimizer update,
  the variables start equal (broadcast from rank 0), BatchNorm in training
  normalizes with the moments of the global batch (all-reduced, with their
  gradient, as torch's SyncBatchNorm), and the training logs are averaged over
  the processes.

`setup()` reads the launch from the usual environment variables; the batches
given to `shard` are global batches.
"""

import contextlib
import functools
import json
import os

import keras

# Set on a BatchNormalization whose moments `synchronize_torch_batch_norm` all-reduces.
ALL_REDUCED = "_keras_maxvit_all_reduced"


def _env_int(*names):
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return None


def multi_worker_mirrored_strategy():
    """A `tf.distribute.MultiWorkerMirroredStrategy` (from `TF_CONFIG`) whose
    `reduce` works for Keras 3's `fit` (keras-team/keras#20585): Keras reduces
    a nested batch and scalar logs with `axis=0`, which the strategy refuses."""
    import tensorflow as tf

    class Strategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            def one(part):
                local = self.experimental_local_results(part)[0]
                rank = getattr(getattr(local, "shape", None), "rank", None)
                return super(Strategy, self).reduce(reduce_op, part, None if rank == 0 else axis)

            return tf.nest.map_structure(one, value)

    return Strategy()


class Cluster:
    """The processes of one data-parallel run (one process when not launched
    as several)."""

    def __init__(self, backend: str, processes: int = 1, index: int = 0, strategy=None):
        self.backend = backend
        self.processes = processes
        self.index = index
        self.strategy = strategy

    @property
    def chief(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.index == 0

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def barrier(self) -> None:
        """Waits until every process of the run has come here."""
        if self.processes == 1:
            return
        if self.backend == "torch":
            import torch.distributed as dist

            dist.barrier()
        elif self.backend == "jax":
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("keras_maxvit barrier")
        else:  # a collective all-reduce: every worker must take part
            import tensorflow as tf

            strategy = self.strategy
            strategy.reduce("SUM", strategy.run(lambda: tf.ones(())), axis=None)

    def chief_first(self, work) -> None:
        """Runs `work()` on the first process, then on the others: e.g. a
        dataset download, once into a shared folder (the others find it
        ready) and once per host where hosts do not share one."""
        if self.chief:
            work()
        self.barrier()
        if not self.chief:
            work()

    def check_batch_size(self, batch_size: int, argument: str = "--batch-size") -> None:
        replicas = self.strategy.num_replicas_in_sync if self.strategy else self.processes
        if batch_size % replicas:
            raise ValueError(
                f"`{argument}` is the global batch: it must be a multiple of the number of "
                f"replicas ({replicas}). Received: {argument}={batch_size}"
            )

    def shard(self, batches, batch_size: int):
        """This process's share of each global batch of the `tf.data` `batches`.

        On JAX and PyTorch, process `i` of `n` takes examples `i, i + n, ...`
        of every batch: each process has as many batches as there are global
        ones (the dataset's cardinality stays known to `fit`), also for a last
        partial batch, so no process waits in a collective for another.
        """
        if self.backend == "tensorflow" and self.strategy is not None:
            return _data_policy(batches)
        if self.processes == 1:
            return batches
        self.check_batch_size(batch_size)
        import tensorflow as tf

        index, processes = self.index, self.processes

        def share(*element):
            part = tf.nest.map_structure(lambda t: t[index::processes], element)
            return part if len(part) > 1 else part[0]

        return batches.map(share, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def validation(self, batches):
        """Validation batches: whole on every process for JAX and PyTorch (exact
        metrics on every process, with a last partial batch), shared out by
        the strategy on TensorFlow."""
        if self.backend == "tensorflow" and self.strategy is not None:
            return _data_policy(batches)
        return batches

    def prepare(self, model) -> None:
        """After `model.compile`: BatchNorm in training normalizes over the
        global batch (TensorFlow: Keras' `synchronized=True` on every norm;
        PyTorch: `synchronize_torch_batch_norm`; JAX's `DataParallel` sees
        the global batch), and PyTorch averages gradients over the processes
        before the optimizer's update, from equal starting variables."""
        if self.backend == "tensorflow" and self.strategy is not None:
            from keras_maxvit.training import set_batch_norm

            set_batch_norm(model, synchronized=True)
            return
        if self.backend != "torch" or self.processes == 1:
            return
        import torch.distributed as dist

        if not getattr(model, "_keras_maxvit_prepared", False):  # once per model
            for variable in model.variables:
                dist.broadcast(variable.value.data, src=0)
            synchronize_torch_batch_norm(model, self.processes)
            model._keras_maxvit_prepared = True
        optimizer = model.optimizer
        if getattr(optimizer, "_keras_maxvit_all_reduce", False):
            return
        apply = optimizer.apply

        def all_reduced_apply(grads, trainable_variables=None):
            present = [g for g in grads if g is not None]
            flat = _flat_mean([g.reshape(-1) for g in present], self.processes)
            start, out = 0, []
            for g in grads:
                if g is None:
                    out.append(None)
                    continue
                out.append(flat[start : start + g.numel()].view_as(g))
                start += g.numel()
            return apply(out, trainable_variables)

        optimizer.apply = all_reduced_apply
        optimizer._keras_maxvit_all_reduce = True

    def save(self, model, path: str) -> None:
        """The first process saves `model` to the `.keras` file `path`
        (atomically, and without TensorFlow's BatchNorm synchronization, which
        Keras allows on TensorFlow only: the file loads under every backend).

        Call it on every process: JAX gathers the variables, which span the
        devices of all processes, with every process taking part (the others
        write to a temporary folder, then remove it).
        """
        from keras_maxvit.resume import save_portable

        if self.chief:
            save_portable(model, path)
        elif self.backend == "jax" and self.processes > 1:
            import shutil
            import tempfile

            folder = tempfile.mkdtemp(prefix="keras_maxvit_process_")
            try:
                save_portable(model, os.path.join(folder, os.path.basename(path)))
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    def callbacks(self) -> list:
        if self.backend == "torch" and self.processes > 1:
            return [_AverageLogs(self.processes)]
        return []

    def finish(self) -> None:
        if self.backend == "torch" and self.processes > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _data_policy(batches):
    """The strategy shares out each batch (auto-shard policy DATA)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return batches.with_options(options)


def _flat_mean(parts, processes):
    import torch
    import torch.distributed as dist

    flat = torch.cat(parts) if parts else torch.zeros(0)
    dist.all_reduce(flat)
    return flat / processes


def synchronize_torch_batch_norm(model, processes: int) -> None:
    """PyTorch, several processes: every BatchNormalization of `model` takes
    its training moments over the global batch (equal shares per process).

    Each process's mean and mean square of its share are averaged over the
    processes by an all-reduce whose gradient is the all-reduce of theirs, so
    the outputs, gradients and moving statistics equal one process's on the
    whole batch. No kernel stands in for these layers (`kernels.select`), and
    their configs are unchanged: the `.keras` files load anywhere.
    """
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization) and not getattr(
            layer, ALL_REDUCED, False
        ):
            layer._moments = _all_reduced_moments(layer, processes)
            setattr(layer, ALL_REDUCED, True)


@functools.cache
def _all_reduce_sum():
    """A torch autograd function: the sum over the processes, whose gradient
    is the sum of the processes' gradients."""
    import torch
    import torch.distributed as dist

    class AllReduceSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, tensor):
            tensor = tensor.clone()
            dist.all_reduce(tensor)
            return tensor

        @staticmethod
        def backward(ctx, gradient):
            return AllReduceSum.apply(gradient.contiguous())

    return AllReduceSum


def _all_reduced_moments(layer, processes):
    import torch

    all_reduce_sum = _all_reduce_sum()

    def moments(inputs, mask):
        if mask is not None:
            raise ValueError(
                "Synchronized BatchNorm on PyTorch takes no mask. "
                f"Received: mask of shape {tuple(mask.shape)} in layer {layer.name}"
            )
        axes = tuple(layer._reduction_axes)
        local = torch.stack([torch.mean(inputs, dim=axes), torch.mean(inputs * inputs, dim=axes)])
        mean, square = all_reduce_sum.apply(local) / processes
        return mean, square - mean * mean

    return moments


class _AverageLogs(keras.callbacks.Callback):
    """PyTorch: averages the training logs over the processes (equal shares
    of each batch: plain means)."""

    def __init__(self, processes: int):
        super().__init__()
        self.processes = processes

    def on_epoch_end(self, epoch, logs=None):
        import torch

        if not logs:
            return
        names = sorted(k for k in logs if not k.startswith("val_"))
        values = _flat_mean(
            [torch.tensor([float(logs[k]) for k in names], dtype=torch.float64)], self.processes
        )
        for name, value in zip(names, values.tolist(), strict=True):
            logs[name] = value


def _tf_cluster():
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster = config.get("cluster", {})
    workers = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
    task = config.get("task", {})
    index = task.get("index", 0)
    if task.get("type") == "worker" and "chief" in cluster:
        index += 1
    return workers, index


def setup(
    distribute: bool = True,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> Cluster:
    """Joins the processes of this run (call it first, before any other
    TensorFlow or JAX work) and sets the backend's data-parallel distribution.

    JAX takes `coordinator_address`, `num_processes` and `process_id` from the
    arguments or from `KERAS_DISTRIBUTION_JOB_ADDRESSES`,
    `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`
    (or `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`);
    TensorFlow reads `TF_CONFIG`; PyTorch reads torchrun's `RANK`,
    `WORLD_SIZE` and `LOCAL_RANK`. Without `distribute`, a single process.
    """
    backend = keras.backend.backend()
    if not distribute:
        return Cluster(backend)
    if backend == "jax":
        processes = num_processes or _env_int(
            "KERAS_DISTRIBUTION_NUM_PROCESSES", "JAX_NUM_PROCESSES"
        )
        if processes and processes > 1:
            import jax

            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            address = coordinator_address or os.environ.get(
                "KERAS_DISTRIBUTION_JOB_ADDRESSES", os.environ.get("JAX_COORDINATOR_ADDRESS")
            )
            index = process_id
            if index is None:
                index = _env_int("KERAS_DISTRIBUTION_PROCESS_ID", "JAX_PROCESS_ID")
            if address is None or index is None:
                raise ValueError(
                    "Several JAX processes need a coordinator address and a process id "
                    "(--coordinator-address, --process-id, or KERAS_DISTRIBUTION_JOB_ADDRESSES "
                    f"and KERAS_DISTRIBUTION_PROCESS_ID). Received: coordinator_address={address}, "
                    f"process_id={index}"
                )
            keras.distribution.initialize(address, processes, index)
            distribution = keras.distribution.DataParallel(auto_shard_dataset=False)
            keras.distribution.set_distribution(distribution)
            return Cluster(backend, processes, index)
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        return Cluster(backend)
    if backend == "tensorflow":
        import tensorflow as tf

        workers, index = _tf_cluster()
        if workers > 1:
            return Cluster(backend, workers, index, multi_worker_mirrored_strategy())
        return Cluster(backend, strategy=tf.distribute.MirroredStrategy())
    if backend == "torch":
        processes = _env_int("WORLD_SIZE")
        if processes is None:
            raise ValueError(
                "On PyTorch, launch one process per device with torchrun, e.g. "
                "`torchrun --nproc_per_node=N -m keras_maxvit.cli fit --distribute ...`. "
                "Received: no WORLD_SIZE in the environment"
            )
        import torch
        import torch.distributed as dist

        index = _env_int("RANK") or 0
        if processes > 1 and not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(_env_int("LOCAL_RANK") or 0)
                dist.init_process_group("nccl")
            else:
                dist.init_process_group("gloo")
        return Cluster(backend, processes, index)
    raise ValueError(f"Unknown Keras backend. Received: KERAS_BACKEND={backend}")


def add_arguments(parser) -> None:
    parser.add_argument(
        "--coordinator-address", default=None, help="JAX, several processes: host:port of process 0"
    )
    parser.add_argument("--num-processes", type=int, default=None, help="JAX: number of processes")
    parser.add_argument("--process-id", type=int, default=None, help="JAX: this process's index")
