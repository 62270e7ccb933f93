"""actc: memory-frugal on-device fine-tuning of an ONNX model's last N layers.

    import actc, numpy as np
    plan = actc.compile("models/mobilenetv2.onnx", layers=4, input_shape=(8, 3, 224, 224), momentum=0.9)
    trainer = actc.Trainer(plan, threads=2)
    trainer.fit("models/data/fashion_mnist", epochs=1, seed=0)
    loss = trainer.train_step(x, y)          # x: float32 (8, 3, 224, 224), y: int64 (8,)
    trainer.export("finetuned.onnx")

Keyword options are the command line's flags (``momentum=0.9`` is ``--momentum 0.9``,
``no_cache=True`` is ``--no-cache``), with the same defaults and the same error messages,
raised as :class:`ActcError`. See ``actc compile --help`` and ``actc train --help``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from . import _actc
from ._actc import FORMAT_VERSION, ActcError

__all__ = ["ActcError", "FORMAT_VERSION", "Plan", "Trainer", "compile", "load", "set_threads"]

PathLike = Union[str, "os.PathLike[str]"]
Arrays = Tuple[np.ndarray, np.ndarray]


def _flags(options: Dict[str, Any]) -> list:
    """Keyword options as command-line flags: ``key=value`` → ``--key value``, ``True`` →
    ``--key``, ``False``/``None`` → nothing, a sequence → its items joined by commas."""
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(str(v) for v in value)]
        elif isinstance(value, os.PathLike):
            out += [flag, os.fspath(value)]
        else:
            out += [flag, str(value)]
    return out


class Plan:
    """A compiled training plan (the contents of an ``.actc`` file)."""

    def __init__(self, native: "_actc.Plan"):
        self._native = native

    def inspect(self) -> dict:
        """The plan as ``actc inspect --json`` shows it: layers, steps, memory."""
        return json.loads(self._native.inspect_json())

    def save(self, path: PathLike) -> None:
        """Writes the plan file (never a partial one); ``actc train`` and ``load`` read it."""
        self._native.save(os.fspath(path))

    def __repr__(self) -> str:
        return f"<actc.Plan {self._native.name!r}, {len(self._native)} bytes>"


def compile(
    model_path: PathLike,
    layers: Union[int, str] = 4,
    *,
    input_shape: Optional[Sequence[int]] = None,
    **options: Any,
) -> Plan:
    """Compiles an ONNX model into a training plan for its last ``layers`` layers (or
    ``"all"``). ``input_shape`` fixes the batch and any symbolic dimension, e.g.
    ``(8, 3, 224, 224)``. Other options are ``actc compile``'s flags: ``compress="hosvd"``,
    ``eps=0.8``, ``optimizer="adamw"``, ``lr=0.001``, ``momentum=0.9``, ``budget="256K"``,
    ``calibration=path``, ``lora=4``, …"""
    args = ["actc", "compile", os.fspath(model_path), "--layers", str(layers)]
    if input_shape is not None:
        args += ["--input-shape", "x".join(str(int(d)) for d in input_shape)]
    return Plan(_actc.compile_args(args + _flags(options)))


def load(path: PathLike) -> Plan:
    """Reads a plan file, or a checkpoint saved by ``actc train`` or
    :meth:`Trainer.save_checkpoint` (which carries its weights and optimizer state)."""
    return Plan(_actc.load(os.fspath(path)))


def set_threads(n: int) -> None:
    """Threads for actc's kernels and the frozen prefix, for the whole process."""
    _actc.set_threads(int(n))


class Trainer:
    """Trains a plan in this process. Batches are NumPy arrays of the compiled batch size:
    inputs float32 of :attr:`input_shape`, labels int64 (one class per sample), or float32
    targets of :attr:`output_shape` for a plan compiled with ``loss="mse"``. C-contiguous
    float32 inputs are read in place; the GIL is released while a step runs."""

    def __init__(self, plan: Plan, threads: Optional[int] = None, total_steps: Optional[int] = None):
        """``total_steps``: how many ``train_step`` calls a plan compiled with a schedule
        (``schedule="cosine"`` or ``"linear-warmup"``) spans; without it the lr stays at its
        start (after any warm-up) until a ``fit``, which sets its own run's length."""
        if threads is not None:
            set_threads(threads)
        self._native = _actc.Trainer(plan._native)
        if total_steps is not None:
            self._native.set_total_steps(int(total_steps))

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return tuple(self._native.input_shape)

    @property
    def output_shape(self) -> Tuple[int, ...]:
        return tuple(self._native.output_shape)

    @property
    def updates(self) -> int:
        """Updates taken so far (the lr schedule's position, Adam's step count)."""
        return self._native.updates

    def train_step(self, inputs: np.ndarray, labels: np.ndarray) -> float:
        """One step: forward, loss, backward, update. Returns the batch's loss."""
        return self._native.train_step(inputs, labels)

    def eval_step(self, inputs: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
        """The batch's loss (mean cross-entropy, or mean squared error) and, for class
        labels, its top-1 accuracy, without training."""
        loss, accuracy = self._native.eval_step(inputs, labels)
        out = {"loss": loss}
        if accuracy is not None:
            out["accuracy"] = accuracy
        return out

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """The trained output (logits for cross-entropy) of a batch."""
        return self._native.predict(inputs)

    def fit(
        self,
        data: Union[PathLike, Arrays],
        epochs: int = 10,
        val: Union[None, PathLike, Arrays] = None,
        **options: Any,
    ) -> Optional[float]:
        """``actc train`` on this trainer's weights: the same split, shuffling, progress bar
        and log as the command line with the same flags, so the same seed gives the same
        result. ``data`` and ``val`` are data paths (IDX, .npz, image folders) or ``(x, y)``
        arrays. Options are ``actc train``'s flags: ``seed``, ``val_fraction``, ``log``,
        ``quiet``, ``cache_budget``, … ``save=stem`` writes ``stem.best.actc`` and
        ``stem.last.actc`` as ``actc train`` does (nothing is written without it).
        Returns the best validation accuracy (for a ``loss="mse"`` plan the lowest validation
        loss; ``None`` without validation data, ``val_fraction=0``)."""
        args = ["actc", "train", "<trainer>", "--epochs", str(epochs)]
        arrays, val_arrays = None, None
        if isinstance(data, tuple):
            arrays = data
            args += ["--data", "<arrays>"]
        else:
            args += ["--data", os.fspath(data)]
        if isinstance(val, tuple):
            if arrays is None:
                raise ActcError("val as arrays needs data as arrays too")
            val_arrays = val
        elif val is not None:
            if arrays is not None:
                raise ActcError("val as a path needs data as a path too")
            args += ["--val", os.fspath(val)]
        return self._native.fit(args + _flags(options), arrays, val_arrays)

    def evaluate(self, data: Union[PathLike, Arrays], **options: Any) -> Dict[str, float]:
        """``actc eval --json`` on these weights: ``loss`` (mean cross-entropy), ``accuracy``
        and ``samples`` over every sample of ``data`` (a data path or ``(x, y)`` arrays); for
        a ``loss="mse"`` plan ``loss``/``mse`` and ``mae`` over float targets. Options are
        ``actc eval``'s preprocessing flags (``layout``, ``scale``, ``mean``, ``std``)."""
        args = ["actc", "eval", "<trainer>", "--data"]
        arrays = None
        if isinstance(data, tuple):
            arrays = data
            args.append("<arrays>")
        else:
            args.append(os.fspath(data))
        return json.loads(self._native.evaluate(args + _flags(options), arrays))

    def get_weights(self) -> Dict[str, np.ndarray]:
        """The trainable weights, keyed by ONNX initializer name (copies)."""
        return self._native.get_weights()

    def set_weights(self, weights: Dict[str, np.ndarray]) -> None:
        """Overwrites trainable weights by ONNX initializer name; every entry is checked
        (name, shape, dtype) before any is written."""
        self._native.set_weights(weights)

    def checkpoint(self) -> Plan:
        """The plan with the current weights and optimizer state, in memory."""
        return Plan(self._native.checkpoint())

    def save_checkpoint(self, path: PathLike) -> None:
        """Writes :meth:`checkpoint` as a plan file: ``load`` and ``Trainer`` go on from it;
        ``actc eval`` and ``actc export --weights`` read it."""
        self._native.save_checkpoint(os.fspath(path))

    def export(self, path: PathLike, external_data: bool = False) -> None:
        """Writes the fine-tuned model as ONNX (``actc export``)."""
        self._native.export(os.fspath(path), external_data)

    def close(self) -> None:
        """Frees the trainer's memory now; later calls raise :class:`ActcError`."""
        self._native.close()

    @property
    def closed(self) -> bool:
        return self._native.closed

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
