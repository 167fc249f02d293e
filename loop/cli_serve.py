"""The workbench command of `graft`: serve (a local page to review proposals, ask why, and
watch cycles)."""
from __future__ import annotations

import os


def cmd_serve(args, say, emit) -> None:
    from loop.serve import check_bind
    token = args.token or os.environ.get("GRAFT_TOKEN") or None
    check_bind(args.host, token)           # before anything binds or loads
    import uvicorn

    from loop.serve import create_app
    app = create_app(args.db, token, args.model, neuron=args.neuron, link_token=args.link_token)
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{args.port}/" + (f"?token={token}" if token else "")
    say(f"serving {args.db} at {url} (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def add_commands(command) -> None:
    p = command("serve", cmd_serve, "the curator workbench: a local web page to review "
                "proposals, ask why, and watch cycles")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address; anything but loopback needs --token")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", help="a secret every request must carry (default $GRAFT_TOKEN); "
                   "open the printed URL once and the page keeps it in a cookie")
    p.add_argument("--model", metavar="DIR",
                   help="the checkpoint the why panel traces (default: the latest cycle's)")
    p.add_argument("--neuron", default="graft-extractor", help="who signs accepted links")
    p.add_argument("--link-token", default="link", help="the token of accepted links")
