"""`keras-maxvit fit --distribute` over 2 processes on localhost equals one process.

Each backend's own engine: JAX processes joined by jax.distributed (gloo
collectives), TensorFlow workers of a MultiWorkerMirroredStrategy (gRPC, from
TF_CONFIG), PyTorch processes of torchrun (gloo). The run trains a nano MaxViT
on a folder of images; its training losses (log.csv, written by the first
process only) and final weights (last.keras) must equal a single-process run
on the same global batches. Every backend normalizes BatchNorm over the
global batch (JAX's DataParallel sees it whole; TensorFlow's and PyTorch's
norms are synchronized), so the whole model trains, BatchNorm included.
"""

import csv
import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import SMALL_CONFIG

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
    return [
        *("--data-dir", image_folder, "--model", "nano", "--weights", "none"),
        *("--image-size", "32", "--batch-size", "8", "--drop-path-rate", "0"),
        *("--head-epochs", "0", "--epochs", "1", "--lr", "1e-3"),
        *("--output-dir", str(output_dir)),
    ]


def _environment(extra=None):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, KERAS_MAXVIT_QUIET="1")
    env.pop("TF_CONFIG", None)
    env.update(extra or {})
    return env


def _launch(target, arguments, env, cwd=None):
    command = [sys.executable, *target, *arguments]
    return subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


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
    return outputs


FIT = ["-m", "keras_maxvit.cli", "fit"]


def _two_processes(target, arguments, cwd=None, jax_flags=True):
    """Runs `python TARGET ARGUMENTS` as 2 processes of one launch: torchrun,
    JAX with the README's flags (or `KERAS_DISTRIBUTION_*`), TF_CONFIG."""
    if BACKEND == "torch":
        (port,) = _free_ports(1)
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
        launcher.append("--local-ranks-filter=0")  # the first process's output
        env = _environment({"OMP_NUM_THREADS": "1"})
        return _wait([_launch([*launcher, *target], arguments, env, cwd)])
    ports = _free_ports(2)
    processes = []
    for index in range(2):
        flags, extra = [], {"OMP_NUM_THREADS": "1"}
        if BACKEND == "jax" and jax_flags:
            flags = ["--coordinator-address", f"127.0.0.1:{ports[0]}", "--num-processes", "2"]
            flags += ["--process-id", str(index)]
        elif BACKEND == "jax":
            extra["KERAS_DISTRIBUTION_JOB_ADDRESSES"] = f"127.0.0.1:{ports[0]}"
            extra["KERAS_DISTRIBUTION_NUM_PROCESSES"] = "2"
            extra["KERAS_DISTRIBUTION_PROCESS_ID"] = str(index)
        else:
            cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
            task = {"type": "worker", "index": index}
            extra["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": task})
        processes.append(_launch(target, [*arguments, *flags], _environment(extra), cwd))
    return _wait(processes)


def _losses(output_dir):
    with open(os.path.join(output_dir, "log.csv")) as f:
        return np.array([float(row["loss"]) for row in csv.DictReader(f)])


def _weights(output_dir):
    model = keras.saving.load_model(os.path.join(output_dir, "last.keras"), safe_mode=True)
    return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}


# In the default suite on PyTorch; `nox -s slow` on TensorFlow and JAX, whose
# three processes build and compile for minutes on 2 cores (the in-process
# data-parallel fits of test_training.py run on every backend).
_SLOW_OFF_TORCH = pytest.mark.slow if BACKEND != "torch" else (lambda test: test)


@_SLOW_OFF_TORCH
def test_two_processes_equal_one(image_folder, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    _wait([_launch(FIT, _arguments(image_folder, single), _environment())])
    _two_processes(FIT, [*_arguments(image_folder, double), "--distribute"])
    # Only the first process wrote the run's files.
    assert sorted(os.listdir(double)) == sorted(os.listdir(single))
    np.testing.assert_allclose(_losses(double), _losses(single), rtol=2e-4)
    reference, distributed = _weights(single), _weights(double)
    assert reference.keys() == distributed.keys()
    # atol: a tenth of one AdamW step (lr 1e-3), which moves even a weight whose
    # gradient is rounding noise (a bias before a BatchNorm) by about lr.
    for path, value in reference.items():
        np.testing.assert_allclose(distributed[path], value, rtol=1e-3, atol=1e-4, err_msg=path)


README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@_SLOW_OFF_TORCH
def test_readme_recipe_two_processes_equal_one(tmp_path):
    """The README's Python recipe as a script, with a small MaxViT in place of
    MaxViT-T: 2 processes (JAX's from the `KERAS_DISTRIBUTION_*` variables)
    print the losses and save the model of one. In the default suite on
    PyTorch (the recipe of its DDP path); on TensorFlow and JAX, whose
    processes compile for minutes here, in `nox -s slow`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    recipe = next(block for block in blocks if "distributed.setup()" in block)
    small = "keras_maxvit.MaxViT(**" + repr(SMALL_CONFIG) + ", "
    script = tmp_path / "recipe.py"
    # And `chief_first`: the first process's work, then the others'.
    order = """
def work():
    import os, time
    if cluster.chief:
        time.sleep(2)
    with open(os.getcwd() + ".order", "a") as f:
        f.write(str(cluster.index))
cluster.chief_first(work)
cluster.finish()"""
    recipe = recipe.replace("keras_maxvit.MaxViTTiny(", small).replace("cluster.finish()", order)
    script.write_text(recipe)
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    (one,) = _wait([_launch([str(script)], [], _environment({"WORLD_SIZE": "1"}), single)])
    two = _two_processes([str(script)], [], double, jax_flags=False)[0]
    # Each epoch's mean loss, as fit prints it (the first process's output).
    losses = [
        [float(re.findall(r"loss: ([0-9.]+)", epoch)[-1]) for epoch in out.split("Epoch ")[1:]]
        for out in (one, two)
    ]
    assert len(losses[0]) == 2 and losses[0][0] != losses[0][1], one[-2000:]
    np.testing.assert_allclose(losses[1][-2:], losses[0], rtol=2e-4)
    assert os.listdir(double) == os.listdir(single) == ["maxvit_distributed.keras"]
    # The saved models predict alike (BatchNorm statistics included): a bias
    # before a BatchNorm, whose gradient is rounding noise, moves by about lr
    # at each of the 8 AdamW steps in either run.
    images = np.random.default_rng(1).uniform(0, 255, (8, 64, 64, 3)).astype("float32")
    one, two = (
        keras.saving.load_model(folder / "maxvit_distributed.keras", safe_mode=True).predict(
            images, verbose=0
        )
        for folder in (single, double)
    )
    np.testing.assert_allclose(two, one, atol=1e-4)
    assert (tmp_path / "single.order").read_text() == "0"
    assert (tmp_path / "double.order").read_text() == "01"


def test_batch_size_must_split_over_processes():
    from keras_maxvit.distributed import Cluster

    with pytest.raises(ValueError, match="Received: --batch-size=7"):
        Cluster(BACKEND, processes=2).check_batch_size(7)
