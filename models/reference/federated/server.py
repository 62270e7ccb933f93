"""The Flower server: FedAvg over the clients' trainable weights, with the aggregated weights
evaluated on the 500 Fashion-MNIST test images by a server-side actc.Trainer every round.

Run by run.py:
    python server.py --address 127.0.0.1:PORT --plan plan.actc --clients 4 --rounds 10 \
        --epochs 1 --out server.json
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--address", required=True)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    ap.add_argument("--client-eval", action="store_true",
                    help="also ask every client to evaluate the global weights on its shard")
    ap.add_argument("--round-timeout", type=float, default=600,
                    help="seconds a round waits for its clients")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import flwr as fl
    from flwr.common import parameters_to_ndarrays, ndarrays_to_parameters, serde
    from flwr.proto.transport_pb2 import ClientMessage, ServerMessage
    from flwr.server.strategy import FedAvg

    x_test, y_test = data.load("t10k")
    rss_before_actc = rss_mb()
    trainer = actc.Trainer(actc.load(args.plan), threads=1)
    names = sorted(trainer.get_weights())
    initial = trainer.get_weights()
    record: dict = {"names": names, "rounds": [], "clients": [], "client_eval": []}
    t_start = time.perf_counter()

    def evaluate(server_round, arrays, config):
        trainer.set_weights({n: np.ascontiguousarray(a, dtype=np.float32)
                             for n, a in zip(names, arrays)})
        t0 = time.perf_counter()
        r = trainer.evaluate((x_test, y_test))
        record["rounds"].append({
            "round": server_round, "loss": r["loss"], "accuracy": r["accuracy"],
            "samples": r["samples"], "eval_seconds": time.perf_counter() - t0,
            "elapsed": time.perf_counter() - t_start})
        print(f"[server] round {server_round}: test accuracy {r['accuracy']:.4f} "
              f"loss {r['loss']:.4f}", flush=True)
        return r["loss"], {"accuracy": r["accuracy"]}

    class MeasuredFedAvg(FedAvg):
        """FedAvg that also records what goes over the wire: the exact protobuf messages
        Flower's gRPC transport sends (ServerMessage.fit_ins down, ClientMessage.fit_res up),
        rebuilt with Flower's own serde, and the raw array bytes inside them."""

        def configure_fit(self, server_round, parameters, client_manager):
            pairs = super().configure_fit(server_round, parameters, client_manager)
            for _, ins in pairs:
                record.setdefault("down", []).append({
                    "round": server_round,
                    "message_bytes": ServerMessage(fit_ins=serde.fit_ins_to_proto(ins)).ByteSize(),
                    "tensor_bytes": sum(len(t) for t in ins.parameters.tensors)})
            return pairs

        def aggregate_fit(self, server_round, results, failures):
            # Results come in arrival order; summing them in client order makes the float
            # sums, and so the whole run, the same from one run to the next.
            results = sorted(results, key=lambda pair: int(pair[1].metrics["cid"]))
            for _, res in results:
                arrays = parameters_to_ndarrays(res.parameters)
                m = dict(res.metrics)
                m.update(
                    message_bytes=ClientMessage(fit_res=serde.fit_res_to_proto(res)).ByteSize(),
                    tensor_bytes=sum(len(t) for t in res.parameters.tensors),
                    array_bytes=int(sum(a.nbytes for a in arrays)))
                record["clients"].append(m)
            if failures:
                raise RuntimeError(f"round {server_round}: {len(failures)} client failures: {failures}")
            return super().aggregate_fit(server_round, results, failures)

        def aggregate_evaluate(self, server_round, results, failures):
            for _, res in results:
                record["client_eval"].append({"round": server_round, "loss": res.loss,
                                              "samples": res.num_examples, **res.metrics})
            return super().aggregate_evaluate(server_round, results, failures)

    strategy = MeasuredFedAvg(
        fraction_fit=1.0, min_fit_clients=args.clients, min_available_clients=args.clients,
        fraction_evaluate=1.0 if args.client_eval else 0.0,
        min_evaluate_clients=args.clients if args.client_eval else 0,
        initial_parameters=ndarrays_to_parameters([initial[n] for n in names]),
        evaluate_fn=evaluate,
        on_fit_config_fn=lambda rnd: {"server_round": rnd, "epochs": args.epochs},
        fit_metrics_aggregation_fn=lambda pairs: {},
        evaluate_metrics_aggregation_fn=lambda pairs: {},
    )
    fl.server.start_server(server_address=args.address,
                           config=fl.server.ServerConfig(num_rounds=args.rounds,
                                                         round_timeout=args.round_timeout),
                           strategy=strategy)
    record["seconds"] = time.perf_counter() - t_start
    record["rss_before_actc_mb"] = rss_before_actc
    record["peak_rss_mb"] = peak_rss_mb()
    record["ru_maxrss_mb"] = ru_maxrss_mb()
    record["trainable_params"] = int(sum(initial[n].size for n in names))
    record["trainable_shapes"] = {n: list(initial[n].shape) for n in names}
    Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
