"""The actc Python package against the command line and against itself.

Runs on an installed wheel (`.ci/run` builds and installs it); `ACTC_BIN` names the `actc`
binary the CLI comparisons run (default: the workspace's debug build)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import actc

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "models"
DIGITS = MODELS / "data" / "digits.npz"


def actc_bin() -> str:
    path = os.environ.get("ACTC_BIN", str(ROOT / "target" / "debug" / "actc"))
    assert os.access(path, os.X_OK), f"no actc binary at {path}: build it (cargo build -p actc) or set ACTC_BIN"
    return path


def mlp_plan(**options):
    return actc.compile(MODELS / "tiny_mlp.onnx", layers="all", **options)


def batch(trainer, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(trainer.input_shape).astype(np.float32)
    y = (np.abs(x[:, :10]).argmax(1)).astype(np.int64)
    return x, y


def test_steps_on_one_batch_lower_its_loss():
    trainer = actc.Trainer(mlp_plan(lr=0.1, momentum=0.9))
    assert trainer.input_shape == (8, 64)
    assert trainer.output_shape == (8, 10)
    x, y = batch(trainer)
    before = trainer.eval_step(x, y)
    losses = [trainer.train_step(x, y) for _ in range(40)]
    after = trainer.eval_step(x, y)
    assert losses[0] == pytest.approx(before["loss"], rel=1e-5)
    assert after["loss"] < 0.25 * before["loss"]
    assert 0.0 <= after["accuracy"] <= 1.0
    assert trainer.updates == 40
    logits = trainer.predict(x)
    assert logits.shape == (8, 10) and logits.dtype == np.float32
    # Cross-entropy of the logits, recomputed here, is what eval_step reports.
    z = logits.astype(np.float64)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    assert after["loss"] == pytest.approx(float((lse - z[np.arange(8), y]).mean()), rel=1e-5)


def test_fit_matches_the_command_line(tmp_path):
    plan = mlp_plan(lr=0.05, momentum=0.9)
    plan.save(tmp_path / "mlp.actc")
    flags = ["--epochs", "2", "--seed", "3", "--val-fraction", "0.25", "--quiet"]
    cli_log, py_log = tmp_path / "cli.jsonl", tmp_path / "py.jsonl"
    subprocess.run(
        [actc_bin(), "--threads", "2", "train", str(tmp_path / "mlp.actc"), "--data", str(DIGITS), "--log", str(cli_log), *flags],
        check=True,
        capture_output=True,
    )
    trainer = actc.Trainer(plan, threads=2)
    best = trainer.fit(DIGITS, epochs=2, seed=3, val_fraction=0.25, quiet=True, log=py_log)
    epochs = lambda log: [r for r in map(json.loads, log.read_text().splitlines()) if r["event"] == "epoch"]
    cli, py = epochs(cli_log), epochs(py_log)
    assert len(cli) == len(py) == 2
    for c, p in zip(cli, py):
        assert p["train"] == c["train"]
        assert p["val"] == c["val"]
    assert best == max(e["val"]["accuracy"] for e in cli)


def test_fit_on_arrays_is_fit_on_their_file():
    with np.load(DIGITS) as z:
        x, y = z["x"].astype(np.float32), z["y"].astype(np.int64)
    a, b = actc.Trainer(mlp_plan()), actc.Trainer(mlp_plan())
    assert a.fit(DIGITS, epochs=1, quiet=True) == b.fit((x, y), epochs=1, quiet=True)
    wa, wb = a.get_weights(), b.get_weights()
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])


def test_weights_by_onnx_name_round_trip():
    trainer = actc.Trainer(mlp_plan())
    w = trainer.get_weights()
    assert set(w) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"}
    assert w["fc1.weight"].shape == (32, 64)
    new = {k: np.full_like(v, 0.01) for k, v in w.items()}
    trainer.set_weights(new)
    for k, v in trainer.get_weights().items():
        np.testing.assert_array_equal(v, new[k])
    # All checked before any is written: a bad entry leaves every weight as it was.
    with pytest.raises(actc.ActcError, match="not a trainable weight"):
        trainer.set_weights({"fc1.bias": np.zeros(32, np.float32), "nope": np.zeros(1, np.float32)})
    with pytest.raises(actc.ActcError, match=r"has shape \[32\], not \[31\]"):
        trainer.set_weights({"fc1.bias": np.zeros(31, np.float32)})
    with pytest.raises(actc.ActcError, match="float32"):
        trainer.set_weights({"fc1.bias": np.zeros(32, np.float64)})
    np.testing.assert_array_equal(trainer.get_weights()["fc1.bias"], new["fc1.bias"])


def test_checkpoint_goes_on_where_it_left(tmp_path):
    a = actc.Trainer(mlp_plan(optimizer="adamw", lr=0.01))
    x, y = batch(a)
    for _ in range(3):
        a.train_step(x, y)
    a.save_checkpoint(tmp_path / "ck.actc")
    b = actc.Trainer(actc.load(tmp_path / "ck.actc"))
    assert b.updates == 3
    # Adam's moments and step count came along: the next step is the same in both.
    assert a.train_step(x, y) == b.train_step(x, y)
    for k, v in a.get_weights().items():
        np.testing.assert_array_equal(v, b.get_weights()[k])
    a.export(tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx").stat().st_size > 1000
    # The CLI reads the checkpoint as trained weights, and evaluates them as the trainer does.
    out = subprocess.run(
        [actc_bin(), "eval", str(tmp_path / "ck.actc"), "--data", str(DIGITS), "--json"], check=True, capture_output=True, text=True
    )
    c = actc.Trainer(actc.load(tmp_path / "ck.actc"))
    assert c.evaluate(DIGITS) == json.loads(out.stdout)
    with np.load(DIGITS) as z:
        assert c.evaluate((z["x"].astype(np.float32), z["y"])) == json.loads(out.stdout)


def test_regression_plan_takes_float_targets():
    trainer = actc.Trainer(mlp_plan(loss="mse", lr=0.05))
    x, _ = batch(trainer)
    t = np.tanh(x[:, :10]).astype(np.float32)
    first = trainer.train_step(x, t)
    for _ in range(30):
        last = trainer.train_step(x, t)
    assert last < first
    scores = trainer.eval_step(x, t)
    assert "accuracy" not in scores
    assert scores["loss"] == pytest.approx(float(((trainer.predict(x) - t) ** 2).mean()), rel=1e-5)
    with pytest.raises(actc.ActcError, match="targets must be a numpy float32 array"):
        trainer.train_step(x, np.zeros(8, np.int64))


def test_bad_calls_raise_clear_errors(tmp_path):
    trainer = actc.Trainer(mlp_plan())
    x, y = batch(trainer)
    with pytest.raises(actc.ActcError, match="float32 array, got an array of float64"):
        trainer.train_step(x.astype(np.float64), y)
    with pytest.raises(actc.ActcError, match=r"shape \[4, 64\]; this plan takes \[8, 64\]"):
        trainer.train_step(x[:4], y[:4])
    with pytest.raises(actc.ActcError, match="int64 or int32"):
        trainer.train_step(x, y.astype(np.float32))
    with pytest.raises(actc.ActcError, match="label 10 is not a class"):
        trainer.train_step(x, np.full(8, 10, np.int64))
    bad = x.copy()
    bad[2, 5] = np.nan
    with pytest.raises(actc.ActcError, match="NaN"):
        trainer.train_step(bad, y)
    with pytest.raises(actc.ActcError, match="unexpected argument '--bogus'"):
        mlp_plan(bogus=1)
    with pytest.raises(actc.ActcError, match="--epochs must be at least 1"):
        trainer.fit(DIGITS, epochs=0)
    with pytest.raises(actc.ActcError, match="no_such.onnx"):
        actc.compile(tmp_path / "no_such.onnx")
    # Strided (not contiguous) inputs are copied, not refused.
    wide = np.repeat(x, 2, axis=1)[:, ::2]
    assert trainer.train_step(wide, y) > 0
    trainer.close()
    assert trainer.closed
    with pytest.raises(actc.ActcError, match="closed"):
        trainer.train_step(x, y)


def test_a_plan_of_another_format_version_is_refused(tmp_path):
    path = tmp_path / "plan.actc"
    mlp_plan().save(path)
    data = bytearray(path.read_bytes())
    at = len(b"ACTCPLAN")  # the format version follows the magic
    old = int.from_bytes(data[at : at + 4], "little")
    # A plan without int8 weights is written as the oldest version that holds it (6).
    assert old <= actc.FORMAT_VERSION
    data[at : at + 4] = (actc.FORMAT_VERSION + 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(actc.ActcError, match="version"):
        actc.load(path)


def test_inspect_is_the_cli_json(tmp_path):
    plan = mlp_plan()
    plan.save(tmp_path / "p.actc")
    out = subprocess.run([actc_bin(), "inspect", str(tmp_path / "p.actc"), "--json"], check=True, capture_output=True, text=True)
    assert plan.inspect() == json.loads(out.stdout)


def test_two_outputs_train_on_rows_of_both_and_report_each(tmp_path):
    plan = actc.compile(MODELS / "tiny_landmarks.onnx", layers=1, train_output=["landmarks", "presence"], loss="mse", loss_weights=[1, 2])
    trainer = actc.Trainer(plan)
    # One row per sample: the 5x2 landmarks' values, then the presence score.
    assert trainer.output_shape == (8, 11)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16,) + trainer.input_shape[1:]).astype(np.float32)
    landmarks = rng.standard_normal((16, 5, 2)).astype(np.float32)
    presence = rng.uniform(size=(16, 1)).astype(np.float32)
    rows = np.concatenate([landmarks.reshape(16, 10), presence], axis=1)
    assert np.isfinite(trainer.train_step(x[:8], rows[:8]))
    np.savez(tmp_path / "two.npz", x=x, landmarks=landmarks, presence=presence)
    from_file = trainer.evaluate(tmp_path / "two.npz")
    assert set(from_file["outputs"]) == {"landmarks", "presence"}
    each = from_file["outputs"]
    assert from_file["mse"] == pytest.approx(each["landmarks"]["mse"] + 2 * each["presence"]["mse"])
    assert trainer.evaluate((x, rows)) == from_file
    np.savez(tmp_path / "one.npz", x=x, landmarks=landmarks)
    with pytest.raises(actc.ActcError, match="no array named presence"):
        trainer.evaluate(tmp_path / "one.npz")


def test_regression_trains_from_the_command_line_and_in_python(tmp_path):
    plan = actc.compile(MODELS / "tiny_multi_output.onnx", layers=1, train_output="embedding", loss="mse", lr=0.05, momentum=0.9)
    plan.save(tmp_path / "reg.actc")
    start = actc.Trainer(plan)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64,) + start.input_shape[1:]).astype(np.float32)
    # Targets an affine map of the trained layer's output reaches: the loss can fall far.
    y = np.concatenate([start.predict(x[i : i + 8]) for i in range(0, 64, 8)]) * 0.5 + 0.3
    np.savez(tmp_path / "reg.npz", x=x, embedding=y)
    log = tmp_path / "cli.jsonl"
    flags = ["--epochs", "4", "--val-fraction", "0.25", "--quiet"]
    subprocess.run(
        [actc_bin(), "train", str(tmp_path / "reg.actc"), "--data", str(tmp_path / "reg.npz"), "--log", str(log), *flags],
        check=True,
        capture_output=True,
    )
    cli = [r for r in map(json.loads, log.read_text().splitlines()) if r["event"] == "epoch"]
    assert set(cli[0]["val"]) == {"loss", "mse", "mae", "samples"}
    assert cli[-1]["val"]["mse"] < 0.5 * cli[0]["val"]["mse"]
    out = subprocess.run(
        [actc_bin(), "eval", str(tmp_path / "reg.best.actc"), "--data", str(tmp_path / "reg.npz"), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    trained = actc.Trainer(actc.load(tmp_path / "reg.best.actc"))
    assert trained.evaluate(tmp_path / "reg.npz") == json.loads(out.stdout)
    # The same run in Python, on the arrays.
    py_log = tmp_path / "py.jsonl"
    best = actc.Trainer(plan).fit((x, y), epochs=4, val_fraction=0.25, quiet=True, log=py_log)
    assert best == min(r["val"]["loss"] for r in cli)
    assert actc.Trainer(plan).fit((x, y), epochs=1, val_fraction=0, quiet=True) is None
    py = [r for r in map(json.loads, py_log.read_text().splitlines()) if r["event"] == "epoch"]
    assert [r["val"] for r in py] == [r["val"] for r in cli]
    # Class labels are not targets.
    bad = subprocess.run([actc_bin(), "train", str(tmp_path / "reg.actc"), "--data", str(DIGITS)], capture_output=True, text=True)
    assert bad.returncode == 2 and "targets have shape [] per sample" in bad.stderr, bad.stderr
    bad = subprocess.run([actc_bin(), "eval", str(tmp_path / "reg.actc"), "--data", str(MODELS / "data" / "fashion-mnist")], capture_output=True, text=True)
    assert bad.returncode == 2 and "only a .npz holds them" in bad.stderr, bad.stderr


def test_a_schedule_spans_the_steps_it_is_told():
    plan = mlp_plan(schedule="cosine", lr=0.1)
    x, y = batch(actc.Trainer(plan))
    # Without a length the cosine stays at its start: steps keep moving the weights.
    open_ended = actc.Trainer(plan)
    for _ in range(3):
        open_ended.train_step(x, y)
    before = open_ended.get_weights()["fc3.bias"].copy()
    open_ended.train_step(x, y)
    assert not np.array_equal(before, open_ended.get_weights()["fc3.bias"])
    # With total_steps=2 the cosine reaches 0 at the third step: the weights stop moving.
    spanned = actc.Trainer(plan, total_steps=2)
    for _ in range(2):
        spanned.train_step(x, y)
    before = spanned.get_weights()["fc3.bias"].copy()
    spanned.train_step(x, y)
    np.testing.assert_array_equal(before, spanned.get_weights()["fc3.bias"])
