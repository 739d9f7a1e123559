"""`h3ops serve`: an OpenAI-compatible server for the model behind a registry alias, following it.

    h3ops serve --project acme                       # models:/acme-merged@production
    h3ops serve --model models:/acme-merged/7 --port 8000

The first version loads in the background: /health answers 503 until it is ready.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

from h3ops.cliparser import Parser


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="h3ops serve", description=__doc__.splitlines()[0],
               example="h3ops serve --project smollm2-3h --tracking-uri http://127.0.0.1:5000 --port 8000")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--project", help="serve models:/<project>-merged@production")
    which.add_argument("--model", help="a models:/<name>@<alias> or models:/<name>/<version> URI")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="MLflow tracking server (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--registry-uri", default=os.environ.get("MLFLOW_REGISTRY_URI"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--poll-interval", type=float, default=30.0,
                   help="seconds between alias checks; 0 follows only the hand-off (POST /admin/reload)")
    p.add_argument("--cache-dir", default=os.environ.get("H3OPS_SERVING_CACHE", str(Path.home() / ".cache/h3ops/serving")),
                   help="downloaded versions, one folder per content digest")
    p.add_argument("--keep", type=int, default=2, help="versions kept in the cache (served + previous)")
    p.add_argument("--served-model-name", help="the `model` clients send (default: the registered model name)")
    p.add_argument("--engine", choices=["transformers", "vllm", "command"], default="transformers",
                   help="transformers: in this process (CPU, tests, small GPUs); vllm: one `vllm serve` process "
                        "per version behind this one; command: --engine-command's OpenAI-compatible server")
    p.add_argument("--engine-command", help="the per-version server's command line; fields {folder} {port} "
                                            "{name} {uri} {version} {gpu_fraction}")
    p.add_argument("--gpu-memory-fraction", type=float, default=0.45,
                   help="vllm: GPU share of each version's server (old and new run side by side while switching)")
    p.add_argument("--device", default="auto", help="transformers: auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="transformers: auto | float32 | bfloat16 | float16")
    p.add_argument("--max-tokens", type=int, default=256, help="default max_tokens of a chat completion")
    p.add_argument("--log-level", default="info")
    return p


def _loader(args, name: str):
    """folder, target → a warmed-up-able engine, as --engine says."""
    if args.engine == "transformers":
        from serving.engine import TransformersEngine

        return lambda folder, target: TransformersEngine(folder, device=args.device, dtype=args.dtype)
    from serving.proxy_engine import VLLM_COMMAND, ProxyEngine

    command = args.engine_command or VLLM_COMMAND
    logs = Path(args.cache_dir) / ".engine-logs"
    return lambda folder, target: ProxyEngine(folder, command, log_dir=logs, name=name, uri=target.uri,
                                              version=target.version, gpu_fraction=str(args.gpu_memory_fraction))


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv[1:] if argv and argv[0] == "serve" else argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from registry.api import Registry, RegistryError, model_name

    try:
        if not args.tracking_uri:
            raise RegistryError("no tracking server: pass --tracking-uri or set MLFLOW_TRACKING_URI")
        uri = args.model or f"models:/{model_name(args.project, 'merged')}@production"
        registry = Registry(args.tracking_uri, args.registry_uri)
        name = args.served_model_name or uri.removeprefix("models:/").split("@")[0].split("/")[0]
    except RegistryError as e:
        print(f"h3ops serve: error: {e}", file=sys.stderr)
        return 2

    if args.engine == "command" and not args.engine_command:
        print("h3ops serve: error: --engine command needs --engine-command", file=sys.stderr)
        return 2

    import uvicorn

    from serving.app import create_app
    from serving.follower import Follower

    follower = Follower(registry, uri, args.cache_dir, keep=args.keep, load=_loader(args, name))
    stop = threading.Event()
    if args.poll_interval > 0:
        target, targs = follower.poll_forever, (args.poll_interval, stop)
    else:
        target, targs = follower.poll_once, ()  # the first load only; then hand-offs
    threading.Thread(target=target, args=targs, name="follow-alias", daemon=True).start()
    app = create_app(follower, name, admin_token=os.environ.get("H3OPS_SERVING_ADMIN_TOKEN"),
                     default_max_tokens=args.max_tokens)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False)
    finally:
        stop.set()  # the app's shutdown closed the engines
    return 0
