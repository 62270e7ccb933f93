"""A Flower client that fine-tunes with actc on its own shard of Fashion-MNIST.

Only the plan's trainable weights travel: ``Trainer.get_weights()`` is a dict keyed by ONNX
initializer name, sent as a list of arrays in sorted-name order (the server uses the same
order). Each ``fit`` starts a fresh ``actc.Trainer`` from the plan, so the SGD momentum
buffer starts at zero every round, as a fresh ``torch.optim.SGD`` per round would in most
FedAvg code; the previous trainer is closed first so two are never alive together.

Run by run.py, one process per client:
    python client.py --server 127.0.0.1:PORT --plan plan.actc --shard shards.npz --cid 0 \
        --seed 0 --out client0.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import actc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import data  # noqa: E402
from mem import peak_rss_mb, rss_mb, ru_maxrss_mb  # noqa: E402


class ActcClient:
    """The training side, free of Flower: set weights, fit, evaluate."""

    def __init__(self, plan: actc.Plan, x: np.ndarray, y: np.ndarray, cid: int, seed: int,
                 fresh_optimizer: bool = True, log_dir: Path | None = None):
        self.plan, self.x, self.y = plan, x, y
        self.cid, self.seed, self.fresh = cid, seed, fresh_optimizer
        self.log_dir = log_dir
        self.trainer = actc.Trainer(plan, threads=1)
        self.names = sorted(self.trainer.get_weights())

    def weights(self) -> list[np.ndarray]:
        w = self.trainer.get_weights()
        return [w[n] for n in self.names]

    def set_weights(self, arrays: list[np.ndarray]) -> None:
        if len(arrays) != len(self.names):
            raise ValueError(f"{len(arrays)} arrays for {len(self.names)} trainable weights")
        self.trainer.set_weights(
            {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(self.names, arrays)})

    def fit(self, arrays: list[np.ndarray], epochs: int, server_round: int) -> dict:
        if self.fresh:
            self.trainer.close()
            self.trainer = actc.Trainer(self.plan, threads=1)
        self.set_weights(arrays)
        log = None
        if self.log_dir is not None:
            log = self.log_dir / f"client{self.cid}-round{server_round}.jsonl"
        t0 = time.perf_counter()
        # A different shuffle each round and client, reproducible from the run's seed.
        self.trainer.fit((self.x, self.y), epochs=epochs, val_fraction=0, quiet=True,
                         seed=self.seed * 100_000 + server_round * 100 + self.cid,
                         log=None if log is None else str(log))
        info = {"fit_seconds": time.perf_counter() - t0}
        if log is not None:  # the local training loss and accuracy of the last local epoch
            last = [r for r in map(json.loads, log.read_text().splitlines()) if r["event"] == "epoch"][-1]
            info.update(train_loss=last["train"]["loss"], train_accuracy=last["train"]["accuracy"])
            log.unlink()
        return info

    def evaluate(self, arrays: list[np.ndarray]) -> dict:
        self.set_weights(arrays)
        return self.trainer.evaluate((self.x, self.y))


class EchoClient:
    """Flower's own cost, for comparison: the same messages with no actc in the process;
    ``fit`` sends back the arrays it received."""

    def __init__(self, cid: int, y: np.ndarray):
        self.cid, self.y = cid, y
        self.current: list[np.ndarray] = []  # the server sends the initial weights

    def weights(self) -> list[np.ndarray]:
        return self.current

    def fit(self, arrays, epochs, server_round) -> dict:
        self.current = [np.array(a, dtype=np.float32) for a in arrays]
        return {"fit_seconds": 0.0}

    def evaluate(self, arrays) -> dict:
        return {"loss": 0.0, "accuracy": 0.0, "samples": len(self.y)}


def flower_client(core, log: list):
    """``core`` as a Flower NumPyClient (imported here so the core above needs no Flower)."""
    import flwr as fl

    class Client(fl.client.NumPyClient):
        def get_parameters(self, config):
            return core.weights()

        def fit(self, parameters, config):
            rnd = int(config["server_round"])
            info = core.fit(parameters, epochs=int(config["epochs"]), server_round=rnd)
            out = core.weights()
            info.update(cid=core.cid, round=rnd, samples=len(core.y),
                        sent_bytes=int(sum(a.nbytes for a in out)),
                        rss_mb=rss_mb(), peak_rss_mb=peak_rss_mb())
            log.append(info)
            return out, len(core.y), info

        def evaluate(self, parameters, config):
            r = core.evaluate(parameters)
            return float(r["loss"]), int(r["samples"]), {"accuracy": float(r["accuracy"]),
                                                          "cid": core.cid}

    return Client().to_client()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", required=True, help="HOST:PORT of the Flower server")
    ap.add_argument("--plan", required=True, help="the compiled plan (.actc)")
    ap.add_argument("--shard", required=True, help=".npz of index arrays shard0, shard1, ...")
    ap.add_argument("--cid", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-momentum", action="store_true",
                    help="one trainer for the whole run (momentum carried across rounds)")
    ap.add_argument("--echo", action="store_true",
                    help="no actc: send back the received weights (Flower's own memory and time)")
    ap.add_argument("--out", required=True, help="JSON written at the end")
    args = ap.parse_args()

    import flwr as fl  # after argparse, so --help is quick

    x, y = data.load("train")
    idx = np.load(args.shard)[f"shard{args.cid}"]
    x, y = np.ascontiguousarray(x[idx]), np.ascontiguousarray(y[idx])
    rss_before_actc = rss_mb()  # Python, NumPy, Flower and the shard
    if args.echo:
        core = EchoClient(args.cid, y)
    else:
        core = ActcClient(actc.load(args.plan), x, y, args.cid, args.seed,
                          fresh_optimizer=not args.keep_momentum, log_dir=Path(args.out).parent)
    log: list = []
    t0 = time.perf_counter()
    fl.client.start_client(server_address=args.server, client=flower_client(core, log))
    result = {
        "cid": args.cid, "samples": len(y), "labels": data.histogram(y),
        "seconds": time.perf_counter() - t0, "rounds": log,
        "rss_before_actc_mb": rss_before_actc, "peak_rss_mb": peak_rss_mb(),
        "ru_maxrss_mb": ru_maxrss_mb(),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
