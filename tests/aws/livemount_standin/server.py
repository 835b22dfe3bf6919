"""Command line and WSGI front of the stand-in.

The front reads each request once, works out service (from the SigV4
credential scope), action, region and account (from the access key, which
STS AssumeRole credentials map to the member account), counts it, applies
injected faults, then hands it to the stand-in's own handler (EBS direct,
ClientToken) or to moto's WSGI app. /standin/... are the control endpoints.
"""

import argparse
import io
import json
import os
import re
import signal
import sys
import threading
import time
from urllib.parse import parse_qs

from werkzeug.serving import make_server

from .awserr import AwsError, error_response

_SCOPE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")
# A presigned URL carries its credential scope in the query (SigV4, "Authenticating Requests: Using Query
# Parameters").
_QUERY_SCOPE = re.compile(r"X-Amz-Credential=([^%&/]+)(?:%2F|/)\d{8}(?:%2F|/)([^%&/]+)(?:%2F|/)([^%&/]+)")


def _read_body(environ) -> bytes:
    length = environ.get("CONTENT_LENGTH")
    stream = environ["wsgi.input"]
    if length:
        return stream.read(int(length))
    if environ.get("wsgi.input_terminated") or environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        return stream.read()
    return b""


class Front:
    def __init__(self, moto_app, stock: bool, store=None):
        from .control import Control
        from .ebs_direct import EbsDirect, action_of
        from .idempotency import Idempotency

        self.moto_app = moto_app
        self.stock = stock
        self.store = store
        self.control = Control()
        self.idem = Idempotency()
        self.ebs = EbsDirect(store) if store is not None else None
        self.ebs_action_of = action_of
        # moto's models are not made for concurrent requests: one at a time.
        self.lock = threading.RLock()

    # ---- helpers ----
    @staticmethod
    def _respond(start_response, status: int, headers: list, body: bytes):
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {'OK' if status < 400 else 'Error'}", headers)
        return [body]

    def _json(self, start_response, status: int, doc) -> list:
        return self._respond(start_response, status, [("Content-Type", "application/json")],
                             json.dumps(doc, indent=1).encode())

    def _call_moto(self, environ, body: bytes):
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        captured = {}

        def start(status, headers, exc_info=None):
            captured["status"] = int(status.split()[0])
            captured["headers"] = list(headers)
            return lambda data: None

        chunks = self.moto_app(environ, start)
        try:
            data = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        return captured["status"], captured["headers"], data

    # ---- control endpoints ----
    def _control(self, environ, start_response, path: str, body: bytes):
        method = environ["REQUEST_METHOD"]
        if path == "/standin/counters" and method == "GET":
            return self._json(start_response, 200, self.control.counters())
        if path == "/standin/faults" and method == "GET":
            return self._json(start_response, 200, {"faults": self.control.list_faults()})
        if path == "/standin/faults" and method == "POST":
            try:
                added = self.control.add_faults(json.loads(body or b"{}"))
            except (ValueError, TypeError, KeyError) as err:
                return self._json(start_response, 400, {"error": str(err)})
            return self._json(start_response, 200, {"added": added})
        if path == "/standin/faults" and method == "DELETE":
            self.control.clear_faults()
            return self._json(start_response, 200, {"faults": []})
        if path == "/standin/reset" and method == "POST":
            from moto.moto_api._internal.models import moto_api_backend

            moto_api_backend.reset()
            # moto's IAM enforcement (awsq iam-enforce) is off again, as at start.
            from moto import settings

            settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
            self.control.reset()
            self.idem.reset()
            if self.ebs is not None:
                self.ebs.reset()
            if self.store is not None:
                self.store.reset()
            return self._json(start_response, 200, {"reset": True})
        if path == "/standin/settings" and method == "POST":
            # {"block_token_lifetime": SECONDS}: how long the EBS direct block tokens of later listings last.
            try:
                doc = json.loads(body or b"{}")
                if self.ebs is not None and "block_token_lifetime" in doc:
                    self.ebs.token_lifetime = float(doc["block_token_lifetime"])
            except (ValueError, TypeError) as err:
                return self._json(start_response, 400, {"error": str(err)})
            return self._json(start_response, 200, {"block_token_lifetime": getattr(self.ebs, "token_lifetime", None)})
        if path == "/standin/health":
            return self._json(start_response, 200, {"ok": True, "stock": self.stock})
        return self._json(start_response, 404, {"error": f"no control endpoint {method} {path}"})

    # ---- requests ----
    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        body = _read_body(environ)
        if path.startswith("/standin/"):
            return self._control(environ, start_response, path, body)
        with self.lock:
            return self._handle(environ, start_response, path, body)

    def _handle(self, environ, start_response, path: str, body: bytes):
        from moto.iam.models import get_account_id_from

        method = environ["REQUEST_METHOD"]
        query = environ.get("QUERY_STRING", "")
        scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", "")) or _QUERY_SCOPE.search(query)
        access_key, region, service = scope.groups() if scope else ("AKIAEXAMPLE", "us-east-1", "unknown")
        account = get_account_id_from(access_key)

        params: dict[str, list[str]] = {}
        groups: dict = {}
        if service == "ebs":
            action, groups = self.ebs_action_of(method, path)
            action = action or f"{method} {path}"
        elif service == "s3":
            from .s3_ext import action_of as s3_action_of

            headers = {k[5:].replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
            action = s3_action_of(method, path, query, headers)
        else:
            params = parse_qs(query, keep_blank_values=True)
            ctype = environ.get("CONTENT_TYPE", "")
            if body and "x-www-form-urlencoded" in ctype:
                for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items():
                    params.setdefault(k, []).extend(v)
            target = environ.get("HTTP_X_AMZ_TARGET")
            action = (params.get("Action") or [None])[0] or (target.split(".")[-1] if target else f"{method} {path}")

        self.control.count(action, account)
        started = time.monotonic()
        try:
            return self._answer(environ, start_response, path, body, method, query, service, action, groups,
                                params, account, region)
        finally:
            self.control.spent(action, time.monotonic() - started)

    def _answer(self, environ, start_response, path, body, method, query, service, action, groups, params,
                account, region):
        fault = self.control.check(service, action, account)
        if fault and fault.corrupt:
            answer = self._carry_out(environ, start_response, path, body, method, query, service, action,
                                     groups, params, account, region)
            data = bytearray(b"".join(answer))
            if data:
                data[len(data) // 2] ^= 0xFF
            return [bytes(data)]
        if fault:
            if fault.after:
                # Carried out, its answer dropped: the client sees only the error.
                self._carry_out(environ, lambda *_: None, path, body, method, query, service, action,
                                groups, params, account, region)
            extra = {"Reason": fault.reason} if fault.reason else None
            return self._respond(start_response, *error_response(service, fault.code, fault.message,
                                                                 fault.status, extra))
        return self._carry_out(environ, start_response, path, body, method, query, service, action, groups,
                               params, account, region)

    def _carry_out(self, environ, start_response, path, body, method, query, service, action, groups, params,
                   account, region):
        if self.stock:
            return self._respond(start_response, *self._call_moto(environ, body))

        if service == "ebs" and groups is not None and action in {
            "StartSnapshot", "PutSnapshotBlock", "CompleteSnapshot",
            "ListSnapshotBlocks", "ListChangedBlocks", "GetSnapshotBlock",
        }:
            headers = {k[5:].replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
            try:
                result = self.ebs.handle(action, groups, method, query, headers, body, account, region)
            except AwsError as err:
                result = error_response("ebs", err.code, err.message, err.status, err.extra)
            except (ValueError, KeyError) as err:
                result = error_response("ebs", "ValidationException", f"Malformed request: {err}", 400,
                                        {"Reason": "INVALID_PARAMETER_VALUE"})
            return self._respond(start_response, *result)

        if service == "s3":
            from .s3_ext import cross_account_denied, fixed_answer

            if cross_account_denied(account, action, path):
                return self._respond(start_response, *error_response("s3", "AccessDenied", "Access Denied", 403))
            return self._respond(start_response, *fixed_answer(action, *self._call_moto(environ, body)))

        token = (params.get("ClientToken") or [None])[0]
        if service == "ec2" and token:
            key = (account, region, action, token)
            fingerprint = self.idem.fingerprint(params)
            hit = self.idem.lookup(key, fingerprint)
            if hit == "mismatch":
                return self._respond(start_response, *error_response(
                    "ec2", "IdempotentParameterMismatch",
                    "The request uses the same client token as a previous, but non-identical request.", 400))
            if hit is not None:
                return self._respond(start_response, *hit)
            status, headers, data = self._call_moto(environ, body)
            if status < 300:
                self.idem.remember(key, fingerprint, status, headers, data)
            return self._respond(start_response, status, headers, data)

        return self._respond(start_response, *self._call_moto(environ, body))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="standin", description="livemount's local AWS stand-in (moto extended)")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--data", required=True, help="directory for snapshot/volume data and device links")
    parser.add_argument("--stock", action="store_true", help="plain moto, none of the extensions")
    args = parser.parse_args(argv)

    started = time.monotonic()
    # Only loopback traffic: credentials and endpoints of the process itself
    # never point anywhere else (moto makes no outbound calls for EC2/STS/EBS).
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.makedirs(args.data, exist_ok=True)

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    store = None
    if not args.stock:
        from . import ec2_ext
        from .blocks import BlockStore

        store = BlockStore(args.data)
        ec2_ext.apply(store)

    app = Front(DomainDispatcherApplication(create_backend_app), args.stock, store)
    server = make_server("127.0.0.1", args.port, app, threaded=True)
    port = server.server_address[1]

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    mode = "stock moto" if args.stock else "extended"
    print(f"standin: listening on 127.0.0.1:{port} ({mode}, moto started in {time.monotonic() - started:.2f}s)",
          flush=True)
    server.serve_forever()
    print("standin: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
