"""Types of the command-line options, so `argparse` names a bad value itself.

`argparse` turns a `ValueError` of a `type=` callable into
`keras-maxvit fit: error: argument --batch-size: invalid ...`; these types
raise `argparse.ArgumentTypeError` with what was expected and received,
before any model or dataset is made.
"""

import argparse

from keras_maxvit.models.inputs import MIN_SIZE


def _number(kind, text: str):
    try:
        return kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {name}. Received: {text!r}") from None


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Received: {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more. Received: {text!r}")
    return value


def image_side(text: str) -> int:
    value = _number(int, text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be an integer of at least {MIN_SIZE}. Received: {text!r}"
        )
    return value


def positive_float(text: str) -> float:
    value = _number(float, text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number. Received: {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(float, text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more. Received: {text!r}")
    return value


def rate(text: str) -> float:
    value = _number(float, text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1). Received: {text!r}")
    return value
