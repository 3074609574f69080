"""A stand-in Kubernetes API server for spark-submit: it records what Spark asks to create.

Usage: kube_api.py RECORD_DIR

Listens on 127.0.0.1 (a free port, written to RECORD_DIR/port). Every request is appended to
RECORD_DIR/requests.jsonl (method, path, body). A POST answers 201 with the object it was given
(plus the metadata a server adds); a list answers an empty list; a watch is accepted (websocket
or HTTP) and stays silent; a GET of one object answers 404. It exits when its parent dies or after
an hour.
"""
import base64
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORD = sys.argv[1]
LOCK = threading.Lock()
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def record(entry):
    with LOCK:
        with open(os.path.join(RECORD, "requests.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode("utf-8", "replace")

    def reply(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def status(self, code, reason):
        self.reply(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "reason": reason, "code": code})

    def do_GET(self):
        record({"method": "GET", "path": self.path})
        if "watch=true" in self.path or "watch=1" in self.path:
            if self.headers.get("Upgrade", "").lower() == "websocket":
                key = self.headers["Sec-WebSocket-Key"]
                accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
            else:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
            self.wfile.flush()
            # Silent until the client goes away.
            try:
                while self.rfile.read(1):
                    pass
            except OSError:
                pass
            self.close_connection = True
            return
        path = self.path.split("?")[0]
        last = path.rstrip("/").split("/")[-1]
        if last in ("pods", "configmaps", "services", "persistentvolumeclaims", "secrets"):
            kind = {"pods": "PodList", "configmaps": "ConfigMapList", "services": "ServiceList",
                    "persistentvolumeclaims": "PersistentVolumeClaimList", "secrets": "SecretList"}[last]
            self.reply(200, {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []})
        else:
            self.status(404, "NotFound")

    def do_POST(self):
        obj = self.body()
        record({"method": "POST", "path": self.path, "body": obj})
        if isinstance(obj, dict):
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("resourceVersion", "1")
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            parts = self.path.split("/")
            if "namespaces" in parts:
                meta.setdefault("namespace", parts[parts.index("namespaces") + 1])
        self.reply(201, obj)

    def do_PUT(self):
        obj = self.body()
        record({"method": "PUT", "path": self.path, "body": obj})
        self.reply(200, obj)

    def do_PATCH(self):
        obj = self.body()
        record({"method": "PATCH", "path": self.path, "body": obj})
        self.reply(200, obj if isinstance(obj, dict) else {})

    def do_DELETE(self):
        record({"method": "DELETE", "path": self.path})
        self.reply(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})


def main():
    os.makedirs(RECORD, exist_ok=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    tmp = os.path.join(RECORD, "port.tmp")
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, os.path.join(RECORD, "port"))
    parent = os.getppid()

    def watchdog():
        start = time.time()
        while time.time() - start < 3600 and os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
