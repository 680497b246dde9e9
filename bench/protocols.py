"""The same load over /predict, Open Inference Protocol v2 REST and v2 gRPC, against one server, side by side.

Starts `python -m app` with PARASERVE_GRPC_PORT, then runs the same closed loop over each protocol in turn, for
`--rounds` interleaved rounds (the median is reported): `--clients` clients sending 1-8 MRPC dev pairs per request
(half single pairs), back to back. Prints pairs/s and p50/p99, writes JSON with the CPU.

    python -m bench.protocols [--artifact model-cache/default/artifacts] [--seconds 15] [--rounds 3] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx

from app.protocols.grpc_gen import open_inference_pb2 as pb
from app.protocols.grpc_gen import open_inference_pb2_grpc as pb_grpc
from artifact.kernels import cpu_description
from model_build.mrpc import load_split
from tests.harness.load import Send, closed_loop, mixed, predict_sender
from tests.harness.server import free_port, running_server


def v2_body(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "text_a", "shape": [len(pairs)], "datatype": "BYTES", "data": [a for a, _ in pairs]},
            {"name": "text_b", "shape": [len(pairs)], "datatype": "BYTES", "data": [b for _, b in pairs]},
        ],
        "outputs": [{"name": "score"}, {"name": "label"}],
    }


def grpc_request(model: str, pairs: list[tuple[str, str]]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for name, column in (("text_a", [a for a, _ in pairs]), ("text_b", [b for _, b in pairs])):
        request.inputs.add(name=name, datatype="BYTES", shape=[len(column)]).contents.bytes_contents.extend(s.encode() for s in column)
    request.outputs.add(name="score")
    request.outputs.add(name="label")
    return request


async def one_run(send: Send, pairs: list[tuple[str, str]], clients: int, seconds: float) -> dict[str, float]:
    """The issue's load (1-8 consecutive pairs per request, half single pairs) over any protocol, in milliseconds."""
    run = (await closed_loop(send, mixed(pairs), clients, seconds, warmup=2.0)).summary()
    return {"pairs_per_s": run["pairs_per_s"], "p50_ms": run["p50_s"] * 1000, "p99_ms": run["p99_s"] * 1000, "errors": run["errors"]}


async def measure(url: str, grpc_port: int, pairs: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    model = httpx.get(f"{url}/model").json()["name"]
    runs: dict[str, list[dict[str, float]]] = {"/predict": [], "v2 REST": [], "v2 gRPC": []}
    async with (
        httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=args.clients)) as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        predict = predict_sender(http, url)

        async def rest_v2(chunk: list[tuple[str, str]]) -> str:
            r = await http.post(f"{url}/v2/models/{model}/infer", json=v2_body(chunk))
            return str(r.status_code)

        async def grpc_v2(chunk: list[tuple[str, str]]) -> str:
            try:
                await stub.ModelInfer(grpc_request(model, chunk), timeout=60)
            except grpc.aio.AioRpcError as e:
                return e.code().name
            return "200"  # the loop's label for an answer

        senders: dict[str, Send] = {"/predict": predict, "v2 REST": rest_v2, "v2 gRPC": grpc_v2}
        for r in range(args.rounds):
            for name, send in senders.items():
                runs[name].append(await one_run(send, pairs, args.clients, args.seconds))
            print(f"  round {r + 1}/{args.rounds} done", flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=Path("model-cache/default/artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/mrpc"))
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--json", type=Path, default=Path("bench-out/protocols.json"))
    args = parser.parse_args(argv)
    pairs = [(p.sentence1, p.sentence2) for p in load_split(args.data_dir, "dev")]
    grpc_port = free_port()
    with running_server(args.artifact, grpc_port=str(grpc_port)) as server:
        served = httpx.get(f"{server.url}/model").json()
        runs = asyncio.run(measure(server.url, grpc_port, pairs, args))
    table = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    cpu = cpu_description()
    print(
        f"\n{served['variant']} on {served['engine']}, {served['workers']} workers; {args.clients} clients of 1-8 MRPC dev pairs, "
        f"{args.seconds:g} s x {args.rounds} interleaved rounds (median); CPU {cpu['cpu_model']}"
    )
    print(f"{'protocol':10s} {'pairs/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'errors':>6s}")
    for name, row in table.items():
        print(f"{name:10s} {row['pairs_per_s']:8.1f} {row['p50_ms']:7.0f} {row['p99_ms']:7.0f} {row['errors']:6.0f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {"cpu": cpu, "variant": served["variant"], "engine": served["engine"], "table": table, "runs": runs, "args": vars(args)}
    args.json.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
