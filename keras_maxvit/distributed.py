"""Data-parallel training over several processes, on each backend's own engine.

- JAX: `keras.distribution.initialize` (jax.distributed; gloo collectives on
  CPU hosts) joins the processes, and `DataParallel` spans every device of
  every process. Each process feeds its share of each global batch.
- TensorFlow: `MultiWorkerMirroredStrategy` from `TF_CONFIG`; each worker
  reads its share of each global batch (auto-shard policy DATA).
- PyTorch: `torch.distributed` as `torchrun` sets it up (NCCL on GPUs, gloo
  on CPU). Gradients are all-reduced (averaged) before each optimizer update,
  the variables start equal (broadcast from rank 0), and the training logs are
  averaged over the processes. BatchNorm statistics are each process's own, as
  in DDP without SyncBatchNorm; their moving averages are averaged over the
  processes before each validation and at the end.

`setup()` reads the launch from the usual environment variables; the batches
given to `shard` are global batches.
"""

import contextlib
import json
import os

import keras


def _env_int(*names):
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return None


class MultiWorkerMirroredStrategy:
    """Builds a `tf.distribute.MultiWorkerMirroredStrategy` whose `reduce`
    works for Keras 3's `fit` (keras-team/keras#20585): Keras reduces a
    nested batch and scalar logs with `axis=0`, which the strategy refuses."""

    def __new__(cls):
        import tensorflow as tf

        class Strategy(tf.distribute.MultiWorkerMirroredStrategy):
            def reduce(self, reduce_op, value, axis):
                def one(part):
                    local = self.experimental_local_results(part)[0]
                    rank = getattr(getattr(local, "shape", None), "rank", None)
                    return super(Strategy, self).reduce(
                        reduce_op, part, None if rank == 0 else axis
                    )

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
        self._broadcast = False

    @property
    def chief(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.index == 0

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def check_batch_size(self, batch_size: int, argument: str = "--batch-size") -> None:
        replicas = self.strategy.num_replicas_in_sync if self.strategy else self.processes
        if batch_size % replicas:
            raise ValueError(
                f"`{argument}` is the global batch: it must be a multiple of the number of "
                f"replicas ({replicas}). Received: {argument}={batch_size}"
            )

    def shard(self, batches, batch_size: int):
        """This process's share of each global batch of the `tf.data` `batches`."""
        import tensorflow as tf

        if self.backend == "tensorflow" and self.strategy is not None:
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.DATA
            )
            return batches.with_options(options)
        if self.processes == 1:
            return batches
        self.check_batch_size(batch_size)
        return batches.rebatch(batch_size // self.processes).shard(self.processes, self.index)

    def validation(self, batches):
        """Validation batches: whole on every process for JAX and PyTorch (exact
        metrics on every process, with a last partial batch), shared out by
        the strategy on TensorFlow."""
        if self.backend == "tensorflow" and self.strategy is not None:
            return self.shard(batches, 0)
        return batches

    def prepare(self, model) -> None:
        """After `model.compile`: PyTorch averages gradients over the processes
        before the optimizer's update, from equal starting variables."""
        if self.backend != "torch" or self.processes == 1:
            return
        import torch.distributed as dist

        if not self._broadcast:
            for variable in model.variables:
                dist.broadcast(variable.value.data, src=0)
            self._broadcast = True
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

    def callbacks(self) -> list:
        if self.backend == "torch" and self.processes > 1:
            return [_AverageOverProcesses(self.processes)]
        return []

    def finish(self) -> None:
        if self.backend == "torch" and self.processes > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _flat_mean(parts, processes):
    import torch
    import torch.distributed as dist

    flat = torch.cat(parts) if parts else torch.zeros(0)
    dist.all_reduce(flat)
    return flat / processes


class _AverageOverProcesses(keras.callbacks.Callback):
    """PyTorch: averages the training logs and the BatchNorm moving statistics
    over the processes (equal shares of each batch: plain means)."""

    def __init__(self, processes: int):
        super().__init__()
        self.processes = processes

    def _statistics(self):
        for layer in self.model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                yield layer.moving_mean
                yield layer.moving_variance

    def _average_statistics(self):
        import torch

        variables = list(self._statistics())
        flat = _flat_mean([v.value.data.reshape(-1) for v in variables], self.processes)
        start = 0
        with torch.no_grad():
            for variable in variables:
                size = variable.value.numel()
                variable.value.data.copy_(flat[start : start + size].view_as(variable.value))
                start += size

    def on_test_begin(self, logs=None):
        self._average_statistics()

    def on_train_end(self, logs=None):
        self._average_statistics()

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
            return Cluster(backend, workers, index, MultiWorkerMirroredStrategy())
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
