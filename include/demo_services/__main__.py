"""``python -m demo_services [--host H] [--port P] [--verbose]``: serve until SIGINT/SIGTERM.

The default port is ``$DEMO_API_PORT`` or 8900.
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from demo_services.app import DemoServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo_services", description="Run the demo API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_API_PORT") or 8900))
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    # SIGTERM behaves like Ctrl-C: both raise KeyboardInterrupt in the main thread.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = DemoServer(args.host, args.port, verbose=args.verbose).start()
    print(f"demo API listening on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
