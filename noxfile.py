"""Sessions: `nox -s tests` (the suite once per Keras backend) and `nox -s lint`.

The sessions run in the current environment (set it up as README.md says),
so torch, TensorFlow and JAX are installed once, not once per session.
"""

import sys

import nox

nox.options.sessions = ["tests"]
BACKENDS = ["tensorflow", "jax", "torch"]


def _pytest(session: nox.Session, backend: str, *args: str) -> None:
    session.run(
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        *args,
        *session.posargs,
        env={"KERAS_BACKEND": backend},
    )


@nox.session(venv_backend="none")
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """Runs the test suite under one Keras backend (all three by default)."""
    _pytest(session, backend)


@nox.session(venv_backend="none")
@nox.parametrize("backend", BACKENDS)
def slow(session: nox.Session, backend: str) -> None:
    """Parity of the Base, Large and XLarge checkpoints (minutes, ~10 GiB of memory)."""
    _pytest(session, backend, "-m", "slow")


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """Checks style and imports with ruff."""
    paths = ["keras_maxvit", "tests", "examples", "noxfile.py"]
    session.run(sys.executable, "-m", "ruff", "check", *paths)
    session.run(sys.executable, "-m", "ruff", "format", "--check", *paths)
