"""Sessions: `nox -s tests` (the suite once per Keras backend), `nox -s lint`
and `nox -s bench` (speed against timm, torchvision and kecam).

The sessions run in the current environment (set it up as README.md says),
so torch, TensorFlow and JAX are installed once, not once per session.
"""

import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
BACKENDS = ["tensorflow", "jax", "torch"]
# The default suite runs in this many pytest processes per backend, each on
# every n-th test file: XLA keeps what it compiled for the life of a process,
# and one process for the whole suite grew past 24 GiB under TensorFlow (a
# quarter of it peaks at 12 GiB; JAX's at 8 GiB, PyTorch's at 3 GiB).
TEST_PROCESSES = {"tensorflow": 4, "jax": 4, "torch": 1}
# Each of those runs its files in 2 pytest-xdist workers (a whole file to a
# worker, so module fixtures are made once), each on one thread: most of a
# test's time is single-threaded Python (tracing, building, saving), so two
# one-thread workers keep both cores busy where one two-thread process kept
# one (TensorFlow's suite: 40 min against 52 on the same 2 cores).
WORKERS = 2
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
}


def _pytest(session: nox.Session, backend: str, *args: str, env=None) -> None:
    session.run(
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        *args,
        *session.posargs,
        env={"KERAS_BACKEND": backend, **(env or {})},
    )


@nox.session(venv_backend="none")
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """Runs the test suite under one Keras backend (all three by default)."""
    if session.posargs:  # a selection of the user's: one process
        _pytest(session, backend)
        return
    files = sorted(str(path) for path in Path("tests").glob("test_*.py"))
    processes = TEST_PROCESSES[backend]
    workers = ["-n", str(WORKERS), "--dist", "loadfile"]
    for part in range(processes):
        _pytest(session, backend, *workers, *files[part::processes], env=ONE_THREAD)


@nox.session(venv_backend="none")
@nox.parametrize("backend", BACKENDS)
def slow(session: nox.Session, backend: str) -> None:
    """Full-size checks: Base/Large/XLarge parity, MaxViT-T export (minutes, ~10 GiB)."""
    _pytest(session, backend, "-m", "slow")


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """Checks style and imports with ruff."""
    paths = ["keras_maxvit", "tests", "examples", "benchmarks", "noxfile.py"]
    session.run(sys.executable, "-m", "ruff", "check", *paths)
    session.run(sys.executable, "-m", "ruff", "format", "--check", *paths)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Speed and memory against the peers; arguments go to benchmarks/bench.py.

    For example `nox -s bench -- --variant tiny --resolution 224 --batch-size 16`
    (`-- --help` lists the options). Results go to benchmarks/results/.
    """
    session.run(sys.executable, "benchmarks/bench.py", *session.posargs)
