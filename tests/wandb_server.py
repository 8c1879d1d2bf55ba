"""A W&B server on 127.0.0.1 that answers the GraphQL queries saving a report makes: the
signed-in user (``Viewer``), the entity's projects, a project's internal id, and ``upsertView``,
the mutation that saves a report. The real wandb SDK and wandb-workspaces talk to it over HTTP
(``WANDB_BASE_URL``), so what it records is what W&B would receive.

Queries are told apart by their operation's name, as W&B's own server reads them; any other
query fails the request, so a new one in a later wandb release shows up here as an error."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WandbServer:
    """``key``: the API key it accepts; ``projects``: the projects it knows; ``saved``: the
    variables of each report saved; ``queries``: the operations asked for, in order."""

    def __init__(self, key: str, projects: set[str]):
        self.key, self.projects = key, projects
        self.saved: list[dict] = []
        self.queries: list[str] = []
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def answer(self, operation: str, variables: dict) -> dict:
        if operation == "Viewer":
            return {"viewer": {"id": "VXNlcjox", "entity": "my-team", "username": "me", "email": "me@example.com",
                               "flags": "{}", "teams": {"edges": []}}}
        if operation == "GetProjects":
            nodes = [{"__typename": "Project", "id": f"UHJvamVjdDo{i}", "name": name, "entityName": variables["entity"],
                      "createdAt": "2026-11-30T10:00:00", "isBenchmark": False, "user": None}
                     for i, name in enumerate(sorted(self.projects))]
            return {"models": {"edges": [{"node": node} for node in nodes],
                               "pageInfo": {"__typename": "PageInfo", "endCursor": None, "hasNextPage": False}}}
        if operation == "ProjectInternalId":
            known = variables["projectName"] in self.projects
            return {"project": {"id": "UHJvamVjdDox", "internalId": "UHJvamVjdDox"} if known else None}
        if operation == "upsertView":
            self.saved.append(variables)
            return {"upsertView": {"view": {"id": "VmlldzoxMjM0", "displayName": variables["displayName"],
                                            "spec": variables["spec"],
                                            "project": {"name": variables["projectName"],
                                                        "entityName": variables["entityName"]}},
                                   "inserted": True}}
        raise KeyError(operation)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the SDK keeps its connection open between requests

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/graphql":  # the SDK's telemetry: taken and dropped
                    return self._reply(200, b"")
                expected = "Basic " + base64.b64encode(f"api:{server.key}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    return self._reply(401, b'{"errors": [{"message": "invalid credentials"}]}')
                request = json.loads(body)
                # The operation's name, also where a client leaves operationName empty.
                operation = request.get("operationName") or request["query"].split("(")[0].split()[-1]
                server.queries.append(operation)
                try:
                    data = server.answer(operation, request.get("variables") or {})
                except KeyError:
                    return self._reply(400, json.dumps({"errors": [{"message": f"unknown: {operation}"}]}).encode())
                self._reply(200, json.dumps({"data": data}).encode())

            def _reply(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        return Handler
