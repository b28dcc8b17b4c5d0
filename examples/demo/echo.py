#!/usr/bin/env python3
"""The demo's upstream: answers every request with what it received, so
users see what celgate let through and added (x-user, x-user-roles) or took
away (authorization).

- POST /mcp answers like an MCP server would (JSON-RPC 2.0: a result for
  initialize, tools/list and tools/call) and includes what it received.
- Anything else answers 200 with a JSON document: method, path, headers,
  body.

Standard library only. Usage: echo.py [HOST:]PORT   (default 127.0.0.1:8000;
docker-compose.yaml passes 0.0.0.0:8000, as Envoy runs in another container)
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOOLS = ["search_docs", "create_ticket", "delete_repo"]


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-echo"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle and
    # the peer's delayed ACK add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True

    def handle_any(self):
        body = self.read_body().decode("utf-8", "replace")
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        if self.path.split("?")[0] == "/mcp" and self.command == "POST":
            answer = self.mcp(body, seen)
        else:
            answer = seen
        payload = (json.dumps(answer, indent=2, sort_keys=True) + "\n").encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def read_body(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, up to the empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    @staticmethod
    def mcp(body, seen):
        try:
            call = json.loads(body)
        except ValueError:
            return {"jsonrpc": "2.0", "id": None,
                    "error": {"code": -32700, "message": "parse error"}}
        method = call.get("method")
        params = call.get("params") or {}
        if method == "initialize":
            result = {"protocolVersion": params.get("protocolVersion", "2025-06-18"),
                      "capabilities": {"tools": {}},
                      "serverInfo": {"name": "demo-echo", "version": "1"}}
        elif method == "tools/list":
            result = {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in TOOLS]}
        elif method == "tools/call":
            text = "ran %s for %s" % (params.get("name"), seen["headers"].get("x-user", "nobody"))
            result = {"content": [{"type": "text", "text": text}]}
        else:
            result = {}
        result["_received"] = seen
        return {"jsonrpc": "2.0", "id": call.get("id"), "result": result}

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any

    def log_message(self, fmt, *args):
        sys.stderr.write("echo: %s %s\n" % (self.address_string(), fmt % args))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 refuses connections when Envoy
    # opens many at once.
    request_queue_size = 1024


def main():
    arg = sys.argv[1] if len(sys.argv) > 1 else "8000"
    host, _, port = arg.rpartition(":")
    host = host or "127.0.0.1"
    server = Server((host, int(port)), Echo)
    print("echo: listening on %s:%s" % (host, port), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
