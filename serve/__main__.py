"""Command line for the local deployment (what the Makefile calls).

    python -m serve archive [--run models/latest] [--model-config handler/model-config.gpu.yaml]
                            [--format onnx]           (ONNX Runtime serves model.onnx instead of model.pt)
                                                      build model-store/cifar10.mar
    python -m serve archive --device gpu [--workers N]  ... with the GPU config, workers and queue sized
                                                      for this machine's cores and GPU memory
    python -m serve kserve-layout [--run models/latest] [--out dist/kserve]
                                                      KServe's storage layout: config/, model-store/ (ONNX)
    python -m serve start [--no-token-auth]           start TorchServe, return once a prediction answers
    python -m serve stop
    python -m serve token [inference|management]      print a key from key_file.json
    python -m serve predict IMAGE [--field image]     one prediction (raw body, or multipart field)
    python -m serve predict IMAGE --grpc              the same through TorchServe's gRPC API (Predictions)
    python -m serve describe | scale N [--version V] | set-default VERSION
                                                      (scale: at most the workers the free memory holds)

Versions (docs/operations.md):
    python -m serve rollout --run models/<run> [--format onnx]  archive the run as cifar10-<version>.mar, serve it beside
    python -m serve versions                          the versions served, which is the default
    python -m serve set-default VERSION               route /predictions/cifar10 to VERSION (also: roll back)
    python -m serve retire VERSION                    unregister a version that is not the default, once
                                                      every request it took is answered
    python -m serve rotate-keys [all|inference|management|both]  new keys (default: all three) in key_file.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from frontend import AgentBuildError, agent_jar
from repo import REPO
from serve.archive import FORMATS, GPU_MODEL_CONFIG, build_archive, kserve_layout
from serve.client import Client
from serve.errors import AgentError, KeyFileError, NotServing, ServeError, TooManyWorkers
from serve.gpu_sizing import sized_config, this_machine
from serve.server import ServerPaths, start, stop, wait_until_serving


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=REPO / "config.properties")
    parser.add_argument(
        "--workdir", type=Path, default=REPO, help="TorchServe's working directory (key_file.json, logs/)"
    )
    parser.add_argument("--model", default="cifar10")
    commands = parser.add_subparsers(dest="command", required=True)
    archive = commands.add_parser("archive")
    archive.add_argument("--run", type=Path, default=REPO / "models" / "latest")
    archive.add_argument("--store", type=Path, default=REPO / "model-store")
    archive.add_argument(
        "--model-config",
        type=Path,
        help="batching/workers config packed into the archive (default: the format's, "
        "handler/model-config.yaml or model-config.onnx.yaml; GPU: handler/model-config.gpu.yaml)",
    )
    model_format = {
        "choices": sorted(FORMATS),
        "default": "torchscript",
        "help": "the model file served: TorchScript model.pt (default) or model.onnx with ONNX Runtime",
    }
    archive.add_argument("--format", **model_format)
    archive.add_argument(
        "--device",
        choices=["cpu", "gpu"],
        default="cpu",
        help="gpu: the GPU config (default handler/model-config.gpu.yaml), workers and queue sized for this machine",
    )
    archive.add_argument("--workers", type=int, help="with --device gpu: this many workers instead of the sized count")
    layout = commands.add_parser("kserve-layout")
    layout.add_argument("--run", type=Path, default=REPO / "models" / "latest")
    layout.add_argument("--out", type=Path, default=REPO / "dist" / "kserve")
    layout.add_argument(
        "--format", choices=sorted(FORMATS), default="onnx", help="onnx (default): what the slim image serves"
    )
    launch = commands.add_parser("start")
    launch.add_argument(
        "--no-token-auth", action="store_true", help="turn token authorization off (local experiments only)"
    )
    launch.add_argument("--timeout", type=float, default=120)
    commands.add_parser("stop")
    token = commands.add_parser("token")
    token.add_argument("api", nargs="?", default="inference", choices=["inference", "management"])
    predict = commands.add_parser("predict")
    predict.add_argument("image", type=Path)
    sent_as = predict.add_mutually_exclusive_group()
    sent_as.add_argument("--field", help="send as a multipart file field of this name instead of the raw body")
    sent_as.add_argument("--grpc", action="store_true", help="through TorchServe's gRPC inference API (Predictions)")
    commands.add_parser("describe")
    scale = commands.add_parser("scale")
    scale.add_argument("workers", type=int)
    scale.add_argument("--version", help="scale this version (default: the default version)")
    default = commands.add_parser("set-default")
    default.add_argument("version")
    rollout = commands.add_parser("rollout")
    rollout.add_argument("--run", type=Path, default=REPO / "models" / "latest")
    rollout.add_argument("--store", type=Path, default=REPO / "model-store", help="the model store TorchServe serves")
    rollout.add_argument("--workers", type=int, default=1)
    rollout.add_argument("--format", **model_format)
    commands.add_parser("versions")
    retire = commands.add_parser("retire")
    retire.add_argument("version")
    rotate = commands.add_parser("rotate-keys")
    rotate.add_argument("api", nargs="?", choices=["all", "inference", "management", "both"], default="all")
    args = parser.parse_args(argv)
    try:
        run(args)
    except ServeError as error:
        raise SystemExit(f"error: {error}") from None


def run(args: argparse.Namespace) -> None:
    """Carries out one command; raises the library's errors, which `main` turns into a message."""
    paths = ServerPaths(config=args.config, workdir=args.workdir)
    if args.command == "archive":
        if args.device == "gpu":
            archive_for_this_gpu(args)
        else:
            build_archive(
                args.run, args.store, name=args.model, model_config=args.model_config, model_format=args.format
            )
        return
    if args.command == "kserve-layout":
        archive = kserve_layout(args.run, args.out, model_format=args.format)
        print(f"KServe storage layout in {args.out}: config/config.properties, model-store/{archive.name}")
        return
    if args.command == "stop":
        stop(paths)
        return
    client = Client.from_config(args.config, args.workdir)
    if args.command == "start":
        try:
            agent_jar()  # built from the sources beside it, before the start that refuses a stale one
        except AgentBuildError as error:
            raise AgentError(str(error)) from None
        start(paths, token_auth=not args.no_token_auth)
        try:
            seconds = wait_until_serving(client, args.model, paths, timeout=args.timeout)
        except NotServing as error:
            log = paths.logs / "model_log.log"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else "(no model log)"
            stop(paths)
            raise NotServing(f"{error}\n--- last lines of {log} ---\n{tail}") from None
        auth = "off" if args.no_token_auth else "on (keys in key_file.json; `make token` prints the inference key)"
        print(
            f"{args.model} is serving at {client.inference}/predictions/{args.model} ({seconds:.1f}s); token auth {auth}"
        )
    elif args.command == "token":
        if args.api not in client.keys:
            raise KeyFileError(f"no {args.api} key in {client.key_file} (is TorchServe running with token auth on?)")
        print(client.keys[args.api])
    elif args.command == "predict" and args.grpc:
        from serve.grpc_client import GrpcClient  # grpcio only where gRPC is asked for

        with GrpcClient.from_config(args.config, args.workdir) as grpc_client:
            print(json.dumps(grpc_client.predict(args.image.read_bytes(), model=args.model), indent=2))
    elif args.command == "predict":
        print(json.dumps(client.predict(args.image.read_bytes(), model=args.model, field=args.field), indent=2))
    elif args.command == "describe":
        print(json.dumps(client.describe(args.model), indent=2))
    elif args.command == "scale":
        bound = client.worker_bound(args.model, args.version)
        if args.workers > bound:
            raise TooManyWorkers(f"{args.workers} workers: this machine's available memory holds at most {bound}")
        print(json.dumps(client.scale(args.workers, model=args.model, version=args.version), indent=2))
    elif args.command == "set-default":
        print(json.dumps(client.set_default(args.version, model=args.model), indent=2))
    elif args.command == "rollout":
        archive = build_archive(args.run, args.store, name=args.model, versioned=True, model_format=args.format)
        print(client.register(archive.name, workers=args.workers)["status"])
        print("served beside the default version: `python -m serve set-default VERSION` switches to it")
    elif args.command == "versions":
        default = client.describe(args.model)[0]["modelVersion"]
        for version in client.describe(args.model, "all"):
            ready = sum(worker["status"] == "READY" for worker in version["workers"])
            mark = " (default)" if version["modelVersion"] == default else ""
            print(
                f"{version['modelVersion']}{mark}: {version['modelUrl']}, {ready}/{len(version['workers'])} workers ready"
            )
    elif args.command == "retire":
        print(json.dumps(client.retire(args.version, model=args.model), indent=2))
    elif args.command == "rotate-keys":
        apis = {"all": ["api"], "both": ["inference", "management"]}.get(args.api, [args.api])
        for api in apis:
            client.renew_key(api)
        renewed = "API, inference and management keys" if apis == ["api"] else f"{' and '.join(apis)} key(s)"
        print(f"new {renewed} in {client.key_file}; the old ones no longer work")


def archive_for_this_gpu(args) -> None:
    """`archive --device gpu`: the GPU config, sized for this machine (or for --workers, which needs
    no GPU here: an archive made on a build machine for a known GPU), packed; says what was chosen."""
    import yaml

    config_file = args.model_config or GPU_MODEL_CONFIG
    machine = this_machine() if args.workers is None else None
    config = sized_config(yaml.safe_load(config_file.read_text()), machine, args.workers)
    sized_for = machine or f"{args.workers} workers"
    with tempfile.TemporaryDirectory() as scratch:
        sized = Path(scratch) / "model-config.yaml"
        sized.write_text(f"# {config_file.name} sized for {sized_for} by python -m serve archive --device gpu\n")
        with sized.open("a") as handle:
            yaml.safe_dump(config, handle, sort_keys=False)
        build_archive(args.run, args.store, name=args.model, model_config=sized, model_format=args.format)
    print(
        f"GPU config for {sized_for}: {config['minWorkers']} workers, batch {config['batchSize']}, "
        f"job queue {config['jobQueueSize']}"
    )


if __name__ == "__main__":
    main()
