"""A stand-in for ingest's ``POST /v1/messages``: records what `mailexec submit` sent, answers as told.

For the tests that don't need the pipeline: what goes over the wire, odd answers
(chunked, early 413, silence), TLS, and the cost of one run against a server that answers.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Received:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int = 202
    body: bytes | None = None  # None: ingest's 202 document for the recipients sent
    chunked: bool = False
    read_body: bool = True  # False: answer after the header and close (a server refusing early)
    delay: float = 0.0


@dataclass
class FakeIngest:
    answer: Answer = field(default_factory=Answer)
    tls: ssl.SSLContext | None = None
    received: list[Received] = field(default_factory=list)

    def __enter__(self) -> FakeIngest:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                answer = fake.answer
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if answer.read_body else b""
                url = urlsplit(self.path)
                query = parse_qs(url.query, keep_blank_values=True)
                fake.received.append(Received(url.path, query, dict(self.headers.items()), body))
                time.sleep(answer.delay)
                doc = answer.body
                if doc is None:
                    rcpts = [{"address": a, "status": "queued"} for a in query.get("to", [])]
                    doc = json.dumps({"id": str(uuid.uuid4()), "recipients": rcpts}).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                if answer.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(doc)))
                if not answer.read_body:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if answer.chunked:
                    half = len(doc) // 2
                    for part in (doc[:half], doc[half:], b""):
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                else:
                    self.wfile.write(doc)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-ingest", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
