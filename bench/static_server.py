"""A fixture server for the bench: serves the files of one directory over HTTP.

It follows the convention of the project's servers (`--listen 127.0.0.1:0`, first
stdout line `listening on http://ADDR`) so the harness's `Service` can start it. The
bench uses it as a JWKS endpoint for native `jwt_authn` with `remote_jwks`, to count
JWKS fetches per Envoy concurrency. Run as a script: it imports nothing from the
bench package.
"""

import argparse
import functools
import http.server
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    parser.add_argument("--dir", required=True, help="the directory to serve")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=args.dir)
    server = http.server.ThreadingHTTPServer((host, int(port)), handler)
    address, bound = server.server_address[:2]
    print(f"listening on http://{address}:{bound}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
