"""A fake Kubernetes API server for ``coordination.k8s.io/v1`` Leases, as strict as the real one.

No Kubernetes API server can run here, so the Kubernetes backend is tested against this one:
real HTTP/1.1 with keep-alive on 127.0.0.1, spoken to by the real ``kubernetes`` client. For the
one resource it serves it follows the API server (kube-apiserver's lease strategy, validation and
error conversion; apimachinery's JSON decoding), in the order the real one checks things:

* ``GET``/``PUT``/``DELETE`` on ``/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}``,
  ``GET``/``POST`` on ``.../leases``; other methods get 405. JSON bodies only (415 for other
  media types; no Content-Type means JSON, the server's first media type).
* Decoding like Go's typed decoder: wrong JSON types, ints that are not int32, MicroTimes that
  are not RFC 3339 with exactly six fractional digits, a wrong apiVersion or kind -> 400
  BadRequest. Unknown fields are dropped with a ``Warning`` header (the server's default).
* A body whose name or namespace differs from the URL -> 400.
* Validation -> 422 Invalid with ``causes``: ``metadata.name`` not a DNS subdomain, a missing
  name (without ``generateName``), ``leaseDurationSeconds <= 0``, ``leaseTransitions < 0``, an
  unknown ``strategy``, ``preferredHolder`` without ``strategy``; on PUT a missing
  ``metadata.resourceVersion`` (leases do not allow unconditional updates).
* Concurrency: a PUT whose resourceVersion is stale, or whose ``metadata.uid`` is not the stored
  object's -> 409 Conflict; a POST of an existing name -> 409 AlreadyExists. A PUT of a missing
  Lease creates it (the lease strategy allows create-on-update) unless a uid precondition fails.
* A POST (or create-on-update) in a namespace that does not exist -> 404 ``namespaces "x" not
  found``; a GET there is simply 404 for the Lease, as on the real server.
* Every write gets the next resourceVersion (one counter, like etcd's revision, as a string);
  creation sets ``uid`` and ``creationTimestamp``; MicroTimes are stored and returned in UTC with
  six fractional digits and ``Z``; ``managedFields`` are kept up to date like the server's.
* Errors are ``Status`` objects: kind, apiVersion, metadata, status, message, reason, details,
  code.

Not modelled: PATCH, watches, list options, field selectors, dry runs, YAML/protobuf/CBOR bodies,
label validation.

Fault injection, from a test holding the server (:meth:`FakeKubernetesApi.add_fault`) or over
HTTP under ``/_fake/`` for one started as a process: added latency, error answers (403, 409,
500, ...), dropped connections (the socket is closed without an answer) and non-JSON answers,
each before the request is applied or after it (an applied write whose answer is lost). Every
API request is logged with its method, path, User-Agent, status and JSON body.

Standalone::

    python tests/k8s_api.py --port 0      # prints the URL, serves until SIGTERM or SIGINT

Admin endpoints: ``GET|DELETE /_fake/requests`` (the log), ``POST|DELETE /_fake/faults`` (a
fault as JSON: kind, methods, count, seconds, status, after), ``POST /_fake/namespaces``
(``{"name": ...}``), ``GET|PUT|DELETE /_fake/leases/{ns}/{name}`` (the stored object,
verbatim; a DELETE answers with the object it removed, or 404).
"""

from __future__ import annotations

import argparse
import calendar
import copy
import datetime
import json
import random
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

GROUP = "coordination.k8s.io"
API_VERSION = f"{GROUP}/v1"
RESOURCE = f"leases.{GROUP}"
MAX_INT32 = 2**31 - 1

_LEASE_PATH = re.compile(r"/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
_QUALIFIED_NAME = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                             r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
# metav1.MicroTime is parsed with the layout "2006-01-02T15:04:05.000000Z07:00": exactly six
# fractional digits; metav1.Time with RFC 3339, where Go accepts any fraction when parsing.
_MICROTIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{6})(Z|[+-]\d\d:\d\d)")
_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")
_MICROTIME_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
_STRATEGIES = ("OldestEmulationVersion",)
_OPTIMISTIC_LOCK = ("the object has been modified; please apply your changes to the latest "
                    "version and try again")
_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
            405: "MethodNotAllowed", 409: "Conflict", 415: "UnsupportedMediaType",
            422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete", "PATCH": "patch"}
_SPEC_FIELDS = {"holderIdentity": "string", "leaseDurationSeconds": "int32",
                "acquireTime": "MicroTime", "renewTime": "MicroTime",
                "leaseTransitions": "int32", "strategy": "string", "preferredHolder": "string"}
_METADATA_FIELDS = {"name": "string", "generateName": "string", "namespace": "string",
                    "uid": "string", "resourceVersion": "string", "selfLink": "string",
                    "generation": "int64", "creationTimestamp": "Time",
                    "deletionTimestamp": "Time", "deletionGracePeriodSeconds": "int64",
                    "labels": "map", "annotations": "map", "ownerReferences": "list",
                    "finalizers": "strings", "managedFields": "list"}


class ApiError(Exception):
    """An answer other than success, as the API server's ``Status`` object."""

    def __init__(self, code: int, message: str, details: dict[str, Any] | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.reason = reason or _REASONS.get(code, "Unknown")

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": self.message,
                                "reason": self.reason}
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _lease_details(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "group": GROUP, "kind": "leases", **extra}


def not_found(name: str) -> ApiError:
    return ApiError(404, f'{RESOURCE} "{name}" not found', _lease_details(name))


def namespace_not_found(namespace: str) -> ApiError:
    return ApiError(404, f'namespaces "{namespace}" not found',
                    {"name": namespace, "kind": "namespaces"})


def conflict(name: str, why: str = _OPTIMISTIC_LOCK) -> ApiError:
    return ApiError(409, f'Operation cannot be fulfilled on {RESOURCE} "{name}": {why}',
                    _lease_details(name))


def already_exists(name: str) -> ApiError:
    return ApiError(409, f'{RESOURCE} "{name}" already exists', _lease_details(name),
                    reason="AlreadyExists")


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def forbidden(method: str, namespace: str, name: str | None) -> ApiError:
    verb = _VERBS.get(method, method.lower())
    if method == "GET" and name is None:
        verb = "list"
    subject = f'{RESOURCE} "{name}"' if name else RESOURCE
    message = (f'{subject} is forbidden: User "system:serviceaccount:{namespace}:default" cannot '
               f'{verb} resource "leases" in API group "{GROUP}" in the namespace "{namespace}"')
    return ApiError(403, message, _lease_details(name or ""))


@dataclass(frozen=True)
class FieldProblem:
    """One ``field.Error``: a path, its kind and the message the API server composes."""

    path: str
    kind: str  # Invalid, Required, Forbidden, NotSupported
    detail: str
    value: Any = None

    @property
    def message(self) -> str:
        if self.kind == "Invalid":
            return f"Invalid value: {_go_value(self.value)}: {self.detail}"
        if self.kind == "Required":
            return f"Required value: {self.detail}" if self.detail else "Required value"
        if self.kind == "NotSupported":
            return f"Unsupported value: {_go_value(self.value)}: {self.detail}"
        return f"Forbidden: {self.detail}"

    @property
    def reason(self) -> str:
        return {"Invalid": "FieldValueInvalid", "Required": "FieldValueRequired",
                "NotSupported": "FieldValueNotSupported"}.get(self.kind, "FieldValueForbidden")


def _go_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def invalid(qualified_kind: str, kind: str, name: str, problems: list[FieldProblem]) -> ApiError:
    messages = [f"{problem.path}: {problem.message}" for problem in problems]
    joined = messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"
    causes = [{"reason": problem.reason, "message": problem.message, "field": problem.path}
              for problem in problems]
    return ApiError(422, f'{qualified_kind} "{name}" is invalid: {joined}',
                    {"name": name, "group": GROUP, "kind": kind, "causes": causes})


# -- decoding: what Go's typed JSON decoder accepts -------------------------------------------


def _cannot_handle(detail: str) -> ApiError:
    return bad_request(f'Lease in version "v1" cannot be handled as a Lease: {detail}')


def _type_error(value: Any, struct: str, path: str, go_type: str) -> ApiError:
    kind = {bool: "bool", str: "string", list: "array", dict: "object"}.get(type(value))
    if kind is None:
        kind = f"number {value}" if isinstance(value, (int, float)) else "value"
    return _cannot_handle(f"json: cannot unmarshal {kind} into Go struct field {struct}.{path} "
                          f"of type {go_type}")


def _decode_field(value: Any, kind: str, struct: str, path: str) -> Any:
    if value is None:
        return None
    if kind == "string":
        if not isinstance(value, str):
            raise _type_error(value, struct, path, "string")
        return value
    if kind in ("int32", "int64"):
        limit = MAX_INT32 if kind == "int32" else 2**63 - 1
        whole = isinstance(value, int) and not isinstance(value, bool)
        if not whole or not -limit - 1 <= value <= limit:
            raise _type_error(value, struct, path, kind)
        return value
    if kind == "MicroTime":
        if not isinstance(value, str):
            raise _cannot_handle(f"json: cannot unmarshal {type(value).__name__} into Go value "
                                 "of type string")
        return format_microtime(_parse_time(value, _MICROTIME, _MICROTIME_LAYOUT))
    if kind == "Time":
        if not isinstance(value, str):
            raise _cannot_handle(f"json: cannot unmarshal {type(value).__name__} into Go value "
                                 "of type string")
        return format_time(_parse_time(value, _TIME, "2006-01-02T15:04:05Z07:00"))
    if kind == "map":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise _type_error(value, struct, path, "map[string]string")
        return dict(value)
    if kind == "strings":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _type_error(value, struct, path, "[]string")
        return list(value)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _type_error(value, struct, path, "[]struct")
    return copy.deepcopy(value)


def _parse_time(text: str, pattern: re.Pattern[str], layout: str) -> float:
    """UTC Unix seconds (to the microsecond) of an RFC 3339 time, as Go's time.Parse checks it."""
    match = pattern.fullmatch(text)
    try:
        if match is None:
            raise ValueError
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        datetime.datetime(year, month, day, hour, minute, second)  # month, day, hour ranges
        fraction = match.group(7) or ""
        micros = int(fraction.lstrip(".").ljust(6, "0")[:6] or 0)
        zone = match.group(8)
        offset = 0
        if zone != "Z":
            hours, minutes = int(zone[1:3]), int(zone[4:6])
            if hours > 23 or minutes > 59:
                raise ValueError
            offset = (hours * 60 + minutes) * 60 * (1 if zone[0] == "+" else -1)
    except ValueError:
        raise _cannot_handle(f'parsing time "{text}" as "{layout}": cannot parse "{text}" as '
                             f'"{layout}"') from None
    whole = calendar.timegm((year, month, day, hour, minute, second)) - offset
    return (whole * 1_000_000 + micros) / 1_000_000


def format_microtime(seconds: float) -> str:
    """How the API server writes a MicroTime: UTC, six fractional digits, ``Z``."""
    whole, micros = divmod(round(seconds * 1_000_000), 1_000_000)
    moment = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=whole)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}Z"


def format_time(seconds: float) -> str:
    """How the API server writes a Time: UTC, whole seconds, ``Z``."""
    moment = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=int(seconds // 1))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def decode_lease(raw: bytes) -> tuple[dict[str, Any], list[str]]:
    """A request body as the server decodes it into a Lease; unknown fields are warnings.

    :raises ApiError: 400, for what Go's typed JSON decoding rejects.
    """
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _cannot_handle(f"invalid character in JSON: {exc}") from None
    if not isinstance(document, dict):
        raise _cannot_handle("json: cannot unmarshal non-object into Go value of type "
                             "v1.Lease")
    warnings = []
    api_version = document.get("apiVersion")
    if api_version not in (None, "", API_VERSION):
        raise bad_request(f"the API version in the data ({api_version}) does not match the "
                          f"expected API version ({API_VERSION})")
    kind = document.get("kind")
    if kind not in (None, "", "Lease"):
        raise bad_request(f"the kind in the data ({kind}) does not match the expected kind "
                          "(Lease)")
    for key in document:
        if key not in ("apiVersion", "kind", "metadata", "spec"):
            warnings.append(f'unknown field "{key}"')
    metadata_in = document.get("metadata") or {}
    spec_in = document.get("spec") or {}
    if not isinstance(metadata_in, dict):
        raise _type_error(metadata_in, "Lease", "metadata", "v1.ObjectMeta")
    if not isinstance(spec_in, dict):
        raise _type_error(spec_in, "Lease", "spec", "v1.LeaseSpec")
    metadata: dict[str, Any] = {}
    for key, value in metadata_in.items():
        kind_of = _METADATA_FIELDS.get(key)
        if kind_of is None:
            warnings.append(f'unknown field "metadata.{key}"')
            continue
        decoded = _decode_field(value, kind_of, "Lease", f"metadata.{key}")
        if decoded is not None:
            metadata[key] = decoded
    spec: dict[str, Any] = {}
    for key, value in spec_in.items():
        kind_of = _SPEC_FIELDS.get(key)
        if kind_of is None:
            warnings.append(f'unknown field "spec.{key}"')
            continue
        decoded = _decode_field(value, kind_of, "Lease", f"spec.{key}")
        if decoded is not None:
            spec[key] = decoded
    return {"metadata": metadata, "spec": spec}, warnings


def validate_lease(lease: dict[str, Any]) -> list[FieldProblem]:
    """kube-apiserver's ValidateLease (object meta name, then the spec)."""
    problems = []
    name = lease["metadata"].get("name", "")
    if not name:
        problems.append(FieldProblem("metadata.name", "Required",
                                     "name or generateName is required"))
    elif len(name) > 253:
        problems.append(FieldProblem("metadata.name", "Invalid",
                                     "must be no more than 253 characters", name))
    elif not _DNS_SUBDOMAIN.fullmatch(name):
        problems.append(FieldProblem("metadata.name", "Invalid", _DNS_SUBDOMAIN_MESSAGE, name))
    spec = lease["spec"]
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        problems.append(FieldProblem("spec.leaseDurationSeconds", "Invalid",
                                     "must be greater than 0", duration))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        problems.append(FieldProblem("spec.leaseTransitions", "Invalid",
                                     "must be greater than or equal to 0", transitions))
    strategy = spec.get("strategy")
    if strategy is not None:
        if "/" not in strategy and strategy not in _STRATEGIES:
            problems.append(FieldProblem("spec.strategy.strategy", "NotSupported",
                                         'supported values: "OldestEmulationVersion"', strategy))
        elif "/" in strategy and not _QUALIFIED_NAME.fullmatch(strategy):
            problems.append(FieldProblem("spec.strategy.strategy", "Invalid",
                                         "must be a qualified name", strategy))
    if spec.get("preferredHolder") and not strategy:
        problems.append(FieldProblem("spec.preferredHolder", "Forbidden",
                                     "may only be specified if `strategy` is defined"))
    return problems


# -- faults and the request log ---------------------------------------------------------------


@dataclass
class Fault:
    """A misbehaviour for matching requests: ``delay``, ``status``, ``drop`` or ``garbage``.

    ``methods`` limits it to some HTTP methods; ``count`` to that many requests (None: until
    cleared). With ``after`` the request is applied first and only its answer misbehaves.
    """

    kind: str
    methods: tuple[str, ...] | None = None
    count: int | None = None
    seconds: float = 0.0
    status: int = 500
    after: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("delay", "status", "drop", "garbage"):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.methods is not None:
            self.methods = tuple(method.upper() for method in self.methods)

    def matches(self, method: str) -> bool:
        return (self.count is None or self.count > 0) and (
            self.methods is None or method in self.methods)


@dataclass
class LoggedRequest:
    method: str
    path: str
    namespace: str | None
    name: str | None  # the Lease's: from the URL, or from the body of a POST
    agent: str
    started: float  # time.monotonic()
    body: Any = None  # the JSON request body, if any
    status: int | None = None  # None while in progress; 0 when the connection was dropped
    faults: list[str] = field(default_factory=list)


@dataclass
class _Answer:
    code: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def _json_answer(code: int, document: Any, headers: Iterable[tuple[str, str]] = ()) -> _Answer:
    return _Answer(code, json.dumps(document).encode(), headers=list(headers))


# -- the server --------------------------------------------------------------------------------


class FakeKubernetesApi:
    """The fake API server. ``start()`` it (or use it as a context manager); ``url`` is its host.

    ``token``, when set, is the bearer token every API request must carry (else 401).
    """

    def __init__(self, namespaces: Iterable[str] = ("default", "kube-system"), *,
                 host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self.namespaces = set(namespaces)
        self.token = token
        self._address = (host, port)
        self._lock = threading.Lock()
        self._leases: dict[tuple[str, str], dict[str, Any]] = {}
        self._revision = 1000
        self._faults: list[Fault] = []
        self._log: list[LoggedRequest] = []
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakeKubernetesApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real server

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                api._serve(self)

            do_POST = do_PUT = do_DELETE = do_PATCH = do_GET  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128  # eight clients connecting at once must not wait for SYN

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that went away mid-answer is normal (timeouts, drops)

        self._server = Server(self._address, Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="fake-kubernetes-api")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeKubernetesApi:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- what tests control and inspect

    def add_fault(self, kind: str, *, methods: Iterable[str] | None = None,
                  count: int | None = None, seconds: float = 0.0, status: int = 500,
                  after: bool = False) -> Fault:
        fault = Fault(kind, tuple(methods) if methods is not None else None, count, seconds,
                      status, after)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def requests(self, method: str | None = None, *, agent: str | None = None,
                 name: str | None = None, since: float = 0.0) -> list[LoggedRequest]:
        """Logged API requests, oldest first, optionally only some."""
        with self._lock:
            return [entry for entry in self._log
                    if (method is None or entry.method == method)
                    and (agent is None or entry.agent == agent)
                    and (name is None or entry.name == name) and entry.started >= since]

    def count(self, method: str | None = None, *, agent: str | None = None,
              name: str | None = None, since: float = 0.0) -> int:
        return len(self.requests(method, agent=agent, name=name, since=since))

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object, as a GET returns it (a copy)."""
        with self._lock:
            stored = self._leases.get((namespace, name))
            return copy.deepcopy(stored)

    def plant(self, namespace: str, name: str, lease: dict[str, Any]) -> dict[str, Any]:
        """Store ``lease`` verbatim, skipping decoding and validation (content no real server
        could hold); only resourceVersion, uid, name and namespace are set. Returns it."""
        with self._lock:
            stored = copy.deepcopy(lease)
            metadata = stored.setdefault("metadata", {})
            previous = self._leases.get((namespace, name))
            metadata.update(name=name, namespace=namespace,
                            uid=previous["metadata"]["uid"] if previous else str(uuid.uuid4()),
                            resourceVersion=self._next_revision())
            self._leases[(namespace, name)] = stored
            return copy.deepcopy(stored)

    def delete(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Remove the stored object, as a user deleting it by hand; return it (None if there
        was none). No fault and no log entry: this is not an API request."""
        with self._lock:
            return self._leases.pop((namespace, name), None)

    # -- HTTP

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        method = handler.command
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        path = urlsplit(handler.path).path
        if path.startswith("/_fake/"):
            self._write(handler, self._admin(method, path, raw))
            return
        match = _LEASE_PATH.fullmatch(path)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        name = match.group(2) if match else None
        if match and name is None and isinstance(body, dict):  # a POST names it in the body
            metadata = body.get("metadata")
            name = metadata.get("name") if isinstance(metadata, dict) else None
        entry = LoggedRequest(method, path, match.group(1) if match else None, name,
                              handler.headers.get("User-Agent", ""), time.monotonic(), body)
        with self._lock:
            self._log.append(entry)
            faults = [fault for fault in self._faults if fault.matches(method)]
            for fault in faults:
                if fault.count is not None:
                    fault.count -= 1
        entry.faults = [fault.kind for fault in faults]
        before = [fault for fault in faults if not fault.after]
        after = [fault for fault in faults if fault.after]
        answer = self._misbehave(before, method, match)
        if answer is None:
            answer = self._answer(method, path, match, handler, raw)
            answer = self._misbehave(after, method, match) or answer
        if answer.code == 0:
            entry.status = 0
            handler.close_connection = True  # close the socket without a word
            return
        entry.status = answer.code
        self._write(handler, answer)

    def _misbehave(self, faults: list[Fault], method: str,
                   match: re.Match[str] | None) -> _Answer | None:
        for fault in faults:
            if fault.kind == "delay":
                self._stopping.wait(fault.seconds)
        for fault in faults:
            if fault.kind == "drop":
                return _Answer(0, b"")
            if fault.kind == "garbage":
                return _Answer(200, b"<html><body>502 Bad Gateway</body></html>",
                               content_type="text/html")
            if fault.kind == "status":
                namespace = match.group(1) if match else "default"
                name = match.group(2) if match else None
                return _json_answer(fault.status, self._fault_status(fault.status, method,
                                                                     namespace, name).status(),
                                    [("Retry-After", "1")] if fault.status == 429 else [])
        return None

    @staticmethod
    def _fault_status(code: int, method: str, namespace: str, name: str | None) -> ApiError:
        if code == 401:
            return ApiError(401, "Unauthorized")
        if code == 403:
            return forbidden(method, namespace, name)
        if code == 404:
            return not_found(name or "")
        if code == 409:
            return conflict(name or "")
        if code == 429:
            return ApiError(429, "Too many requests, please try again later.",
                            {"causes": [{"reason": "TooManyRequests",
                                         "message": "Too many requests"}],
                             "retryAfterSeconds": 1})
        return ApiError(code, "Internal error occurred: injected fault",
                        {"causes": [{"message": "injected fault"}]})

    def _answer(self, method: str, path: str, match: re.Match[str] | None,
                handler: BaseHTTPRequestHandler, raw: bytes) -> _Answer:
        if self.token is not None and handler.headers.get("Authorization") != (
                f"Bearer {self.token}"):
            return _json_answer(401, ApiError(401, "Unauthorized").status())
        if match is None:
            return _json_answer(404, ApiError(404, "the server could not find the requested "
                                                   "resource", {}).status())
        namespace, name = match.group(1), match.group(2)
        try:
            if method in ("POST", "PUT"):
                # No Content-Type means the server's first media type, JSON (the client of
                # kubernetes >= 37 sends none); other formats are not modelled here.
                content_type = handler.headers.get("Content-Type", "")
                if content_type.split(";")[0].strip() not in ("", "application/json"):
                    raise ApiError(415, f'the body of the request was in an unknown format - '
                                        f'accepted media types include: application/json '
                                        f'(this fake server), got "{content_type}"')
            with self._lock:
                if method == "GET" and name is not None:
                    return _json_answer(200, self._get(namespace, name))
                if method == "GET":
                    return _json_answer(200, self._list(namespace))
                if method == "POST" and name is None:
                    lease, warnings = decode_lease(raw)
                    agent = handler.headers.get("User-Agent", "")
                    return _json_answer(201, self._create(namespace, lease, agent),
                                        _warning_headers(warnings))
                if method == "PUT" and name is not None:
                    lease, warnings = decode_lease(raw)
                    code, stored = self._update(namespace, name, lease,
                                                handler.headers.get("User-Agent", ""))
                    return _json_answer(code, stored, _warning_headers(warnings))
                if method == "DELETE" and name is not None:
                    return _json_answer(200, self._delete(namespace, name))
            raise ApiError(405, "the server does not allow this method on the requested "
                                "resource", _lease_details(name or ""))
        except ApiError as error:
            return _json_answer(error.code, error.status())

    def _write(self, handler: BaseHTTPRequestHandler, answer: _Answer) -> None:
        try:
            handler.send_response(answer.code)
            handler.send_header("Content-Type", answer.content_type)
            handler.send_header("Content-Length", str(len(answer.body)))
            handler.send_header("Audit-Id", str(uuid.uuid4()))
            handler.send_header("Cache-Control", "no-cache, private")
            for key, value in answer.headers:
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(answer.body)
        except OSError:  # the client gave up waiting (its timeout) or closed the connection
            handler.close_connection = True

    # -- the resource, called with the lock held

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _get(self, namespace: str, name: str) -> dict[str, Any]:
        stored = self._leases.get((namespace, name))
        if stored is None:
            raise not_found(name)
        return stored

    def _list(self, namespace: str) -> dict[str, Any]:
        items = [{key: value for key, value in lease.items() if key not in ("kind", "apiVersion")}
                 for (ns, _), lease in sorted(self._leases.items()) if ns == namespace]
        return {"kind": "LeaseList", "apiVersion": API_VERSION,
                "metadata": {"resourceVersion": str(self._revision)}, "items": items}

    def _create(self, namespace: str, lease: dict[str, Any], agent: str = "") -> dict[str, Any]:
        metadata = lease["metadata"]
        if metadata.get("namespace", namespace) != namespace:
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + "".join(
                random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        if namespace not in self.namespaces:
            raise namespace_not_found(namespace)
        if metadata.get("resourceVersion"):
            raise ApiError(500, "Internal error occurred: resourceVersion should not be set on "
                                "objects to be created",
                           {"causes": [{"message": "resourceVersion should not be set on "
                                                   "objects to be created"}]})
        problems = validate_lease(lease)
        name = metadata.get("name", "")
        if problems:
            raise invalid(f"Lease.{GROUP}", "Lease", name, problems)
        if (namespace, name) in self._leases:
            raise already_exists(name)
        return self._store(namespace, name, lease, None, agent, "Update")

    def _update(self, namespace: str, name: str, lease: dict[str, Any],
                agent: str) -> tuple[int, dict[str, Any]]:
        metadata = lease["metadata"]
        if metadata.get("name", "") != name:
            raise bad_request(f"the name of the object ({metadata.get('name', '')}) does not "
                              f"match the name on the URL ({name})")
        if metadata.get("namespace", namespace) != namespace:
            raise bad_request(f"the namespace of the object ({metadata['namespace']}) does not "
                              f"match the namespace on the request ({namespace})")
        existing = self._leases.get((namespace, name))
        uid = metadata.get("uid")
        existing_uid = existing["metadata"].get("uid", "") if existing else ""
        if uid and uid != existing_uid:
            raise conflict(name, f"Precondition failed: UID in precondition: {uid}, UID in "
                                 f"object meta: {existing_uid}")
        if existing is None:  # the lease strategy allows create-on-update
            metadata.pop("resourceVersion", None)
            return 201, self._create(namespace, lease, agent)
        version = metadata.get("resourceVersion", "")
        if not version:
            raise invalid(RESOURCE, "leases", name, [FieldProblem(
                "metadata.resourceVersion", "Invalid", "must be specified for an update", "0x0")])
        if not version.isdigit():
            raise invalid(RESOURCE, "leases", name, [FieldProblem(
                "metadata.resourceVersion", "Invalid",
                f'strconv.ParseUint: parsing "{version}": invalid syntax', version)])
        if version != existing["metadata"]["resourceVersion"]:
            raise conflict(name)
        problems = validate_lease(lease)
        if problems:
            raise invalid(f"Lease.{GROUP}", "Lease", name, problems)
        return 200, self._store(namespace, name, lease, existing, agent, "Update")

    def _delete(self, namespace: str, name: str) -> dict[str, Any]:
        stored = self._leases.pop((namespace, name), None)
        if stored is None:
            raise not_found(name)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": _lease_details(name, uid=stored["metadata"].get("uid"))}

    def _store(self, namespace: str, name: str, lease: dict[str, Any],
               existing: dict[str, Any] | None, agent: str, operation: str) -> dict[str, Any]:
        incoming = lease["metadata"]
        now = time.time()
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        if existing is None:
            metadata["uid"] = str(uuid.uuid4())
        else:
            metadata["uid"] = existing["metadata"]["uid"]
        metadata["resourceVersion"] = self._next_revision()
        metadata["creationTimestamp"] = (existing["metadata"].get("creationTimestamp")
                                         if existing else format_time(now))
        for key in ("labels", "annotations", "ownerReferences", "finalizers"):
            if incoming.get(key):
                metadata[key] = incoming[key]
        manager = agent.split("/")[0] or "unknown"
        metadata["managedFields"] = [{
            "manager": manager, "operation": operation, "apiVersion": API_VERSION,
            "time": format_time(now), "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {f"f:{key}": {} for key in sorted(lease["spec"])}}}]
        stored = {"kind": "Lease", "apiVersion": API_VERSION, "metadata": metadata,
                  "spec": dict(lease["spec"])}
        self._leases[(namespace, name)] = stored
        return stored

    # -- the admin endpoints of a server started as a process

    def _admin(self, method: str, path: str, raw: bytes) -> _Answer:
        try:
            document = json.loads(raw) if raw else {}
            parts = path.strip("/").split("/")[1:]
            if parts == ["requests"] and method == "GET":
                return _json_answer(200, {"requests": [asdict(e) for e in self.requests()]})
            if parts == ["requests"] and method == "DELETE":
                self.clear_log()
                return _json_answer(200, {})
            if parts == ["faults"] and method == "POST":
                fault = self.add_fault(**document)
                return _json_answer(201, asdict(fault))
            if parts == ["faults"] and method == "DELETE":
                self.clear_faults()
                return _json_answer(200, {})
            if parts == ["namespaces"] and method == "POST":
                self.namespaces.add(document["name"])
                return _json_answer(201, {})
            if len(parts) == 3 and parts[0] == "leases" and method == "GET":
                stored = self.lease(parts[1], parts[2])
                return _json_answer(200 if stored else 404, stored)
            if len(parts) == 3 and parts[0] == "leases" and method == "PUT":
                return _json_answer(200, self.plant(parts[1], parts[2], document))
            if len(parts) == 3 and parts[0] == "leases" and method == "DELETE":
                deleted = self.delete(parts[1], parts[2])
                return _json_answer(200 if deleted else 404, deleted)
        except (ValueError, TypeError, KeyError) as exc:
            return _json_answer(400, {"error": str(exc)})
        return _json_answer(404, {"error": f"no admin endpoint {method} {path}"})


def _warning_headers(warnings: list[str]) -> list[tuple[str, str]]:
    return [("Warning", '299 - "{}"'.format(warning.replace('"', '\\"')))
            for warning in warnings]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (the default)")
    parser.add_argument("--namespace", action="append", dest="namespaces",
                        help="a namespace that exists (repeatable; default: default, kube-system)")
    parser.add_argument("--token", help="bearer token every request must carry")
    args = parser.parse_args(argv)
    api = FakeKubernetesApi(args.namespaces or ("default", "kube-system"), host=args.host,
                            port=args.port, token=args.token).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: done.set())
    signal.signal(signal.SIGINT, lambda signum, frame: done.set())
    print(api.url, flush=True)
    done.wait()
    api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
