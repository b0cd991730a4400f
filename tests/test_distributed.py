"""`keras-maxvit fit --distribute` over 2 processes on localhost equals one process.

Each backend's own engine: JAX processes joined by jax.distributed (gloo
collectives), TensorFlow workers of a MultiWorkerMirroredStrategy (gRPC, from
TF_CONFIG), PyTorch processes of torchrun (gloo). The run trains a nano MaxViT
on a folder of images; its training losses (log.csv, written by the first
process only) and final weights (last.keras) must equal a single-process run
on the same global batches. JAX and TensorFlow normalize BatchNorm over the
global batch (JAX's DataParallel sees it whole; TensorFlow's norms are
synchronized), so the whole model trains; PyTorch's BatchNorm statistics are
each process's own, so its run trains the head with the backbone frozen.
"""

import csv
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_maxvit  # noqa: F401  registers the layers of the .keras files

BACKEND = keras.backend.backend()
TIMEOUT = 300


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label, name in enumerate(("circle", "square", "triangle")):
        os.makedirs(root / name)
        for i in range(8):
            image = rng.integers(0, 256, (32, 32, 3)) // (label + 1)
            keras.utils.save_img(str(root / name / f"{i}.png"), image.astype("uint8"))
    return str(root)


def _arguments(image_folder, output_dir):
    epochs = ["--head-epochs", "1", "--epochs", "0"] if BACKEND == "torch" else []
    epochs = epochs or ["--head-epochs", "0", "--epochs", "1", "--lr", "1e-3"]
    return [
        *("--data-dir", image_folder, "--model", "nano", "--weights", "none"),
        *("--image-size", "32", "--batch-size", "8", "--drop-path-rate", "0"),
        *epochs,
        *("--output-dir", str(output_dir)),
    ]


def _environment(extra=None):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, KERAS_MAXVIT_QUIET="1")
    env.pop("TF_CONFIG", None)
    env.update(extra or {})
    return env


def _launch(arguments, env):
    command = [sys.executable, "-m", "keras_maxvit.cli", "fit", *arguments]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait(processes):
    outputs = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=TIMEOUT)
            outputs.append(output.decode(errors="replace"))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]


def _two_processes(image_folder, output_dir):
    arguments = [*_arguments(image_folder, output_dir), "--distribute"]
    if BACKEND == "torch":
        (port,) = _free_ports(1)
        command = [
            *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"),
            *(f"--master_port={port}", "-m", "keras_maxvit.cli", "fit", *arguments),
        ]
        env = _environment({"OMP_NUM_THREADS": "1"})
        run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _wait([run])
        return
    ports = _free_ports(2)
    processes = []
    for index in range(2):
        flags = []
        if BACKEND == "jax":  # the README's flags
            flags = ["--coordinator-address", f"127.0.0.1:{ports[0]}", "--num-processes", "2"]
            flags += ["--process-id", str(index)]
            extra = {}
        else:
            cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
            task = {"type": "worker", "index": index}
            extra = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
        extra["OMP_NUM_THREADS"] = "1"
        processes.append(_launch([*arguments, *flags], _environment(extra)))
    _wait(processes)


def _losses(output_dir):
    with open(os.path.join(output_dir, "log.csv")) as f:
        return np.array([float(row["loss"]) for row in csv.DictReader(f)])


def _weights(output_dir):
    model = keras.saving.load_model(os.path.join(output_dir, "last.keras"), safe_mode=True)
    return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}


def test_two_processes_equal_one(image_folder, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    _wait([_launch(_arguments(image_folder, single), _environment())])
    _two_processes(image_folder, double)
    # Only the first process wrote the run's files.
    assert sorted(os.listdir(double)) == sorted(os.listdir(single))
    np.testing.assert_allclose(_losses(double), _losses(single), rtol=2e-4)
    reference, distributed = _weights(single), _weights(double)
    assert reference.keys() == distributed.keys()
    # atol: a tenth of one AdamW step (lr 1e-3), which moves even a weight whose
    # gradient is rounding noise (a bias before a BatchNorm) by about lr.
    for path, value in reference.items():
        np.testing.assert_allclose(distributed[path], value, rtol=1e-3, atol=1e-4, err_msg=path)


def test_batch_size_must_split_over_processes():
    from keras_maxvit.distributed import Cluster

    with pytest.raises(ValueError, match="Received: --batch-size=7"):
        Cluster(BACKEND, processes=2).check_batch_size(7)
