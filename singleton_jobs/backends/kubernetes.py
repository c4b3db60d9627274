"""Lease in a Kubernetes ``coordination.k8s.io/v1`` Lease object, shared with client-go.

Replicas on any number of nodes elect a leader through one Lease, through the ``kubernetes``
client (``pip install "singleton_jobs[kubernetes]"``; imported only when a store is
constructed). What is written is what client-go's ``LeaseLock`` writes, so Python replicas and Go
programs using ``tools/leaderelection`` can contend for the same Lease::

    spec:
      holderIdentity: worker-7c9f-x2x4q          # "" once released
      leaseDurationSeconds: 15                   # an integer: whole seconds only
      acquireTime: "2026-01-10T14:30:25.123456Z" # MicroTime: UTC, six fractional digits
      renewTime: "2026-01-10T14:30:27.123906Z"
      leaseTransitions: 3                        # the fencing token

Guarantees:

* Every write is a compare-and-swap decided by the API server on ``metadata.resourceVersion``
  and ``metadata.uid`` (so a Lease deleted and created again never matches an old version). A
  409 is a lost race, returned as ``None``, never an error.
* The store keeps the Lease object from its last read or write and sends it back with a new
  spec, as client-go does: the leader's steady-state renew is exactly one PUT, and labels,
  annotations and spec fields this store does not own survive it.
* Every request has a timeout, the one the elector passes (at most ``renew_deadline``), as one
  total for connecting and waiting for the answer, so a slow API server gets the whole budget.
  urllib3's automatic retries are off in the store's own client, since each retry would start
  the timeout again.
* Fencing tokens survive a deleted Lease: the highest ``leaseTransitions`` ever written is kept
  in a second Lease, ``<name>-fence`` (written only when the holder changes, never on a renew),
  and a Lease created again continues above it. A replica that finds the Lease missing while
  the fence exists waits one lease duration before creating it, since its last holder may still
  believe it leads. If the fence cannot be read or written (a Role limited by
  ``resourceNames``) a warning says so, and tokens restart at 0 when the Lease is deleted.
* Content that is not a valid lease record (wrong JSON types, unparseable times) is a lease
  held by nobody valid: the elector takes it over one lease duration after it saw it, never at
  once. Transport failures, 5xx and answers that are not a Lease raise ``LeaseStoreError``; 401,
  403 and a missing namespace raise ``ConfigurationError`` naming the fix (the RBAC verbs get,
  create and update on leases). The elector logs both and keeps trying.

Reading follows client-go: a missing ``holderIdentity`` is an empty (released) lease that can
be taken at once, a missing ``leaseTransitions`` is 0, missing times are unknown. One deliberate
difference: a missing or non-positive ``leaseDurationSeconds`` makes the elector wait its own
lease duration instead of treating the lease as expired at once.

The request bodies are JSON built here and sent through the client's ``ApiClient`` (its host,
credentials, TLS and proxy settings), not the client's ``V1Lease`` model: the models format
times with ``datetime.isoformat()``, which drops the fraction at whole seconds, a MicroTime the
API server rejects, and they refuse some content the store must read as unreadable instead.

Caveats: as in client-go, expiry is judged by each replica on its own monotonic clock from the
moment it saw the record change, so clock skew between nodes does not matter, but a renew the
API server applies after the leader's request timed out (an ambiguous write) restarts the
followers' wait; it only delays a failover, it never extends the old leader's own
``is_leader``. The timeout bounds each wait on the socket, so a server that trickles its answer
byte by byte could stretch one request. The Lease is never deleted; a stopping leader writes
client-go's release record (empty holder, ``leaseDurationSeconds: 1``) so a follower, in Python
or Go, takes over at once.
"""

from __future__ import annotations

import calendar
import copy
import datetime
import http.client
import importlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from ..election import Elector
from ..errors import ConfigurationError, LeaseStoreError, SingletonJobsError
from ..lease import LeaseRecord, unreadable_record
from ..store import LeaseStore, Snapshot, Version, once_name

logger = logging.getLogger(__name__)

#: Where Kubernetes mounts the pod's namespace. Read at construction time, so tests may point
#: this module attribute elsewhere.
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_NAMESPACE = "default"

API_GROUP = "coordination.k8s.io"
API_VERSION = f"{API_GROUP}/v1"
RBAC_HINT = ("grant the verbs get, create and update on leases.coordination.k8s.io in namespace "
             "{namespace!r} to this identity (a Role and a RoleBinding; see examples/kubernetes/)")

MAX_NAME_LENGTH = 253
MAX_NAMESPACE_LENGTH = 63
MAX_INT32 = 2**31 - 1
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# RFC 3339 as Go parses it. The API server writes MicroTime with exactly six fractional digits
# and "Z"; anything else that is still RFC 3339 is read too.
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?"
                      r"([Zz]|[+-]\d\d:\d\d)")
#: The smallest timeout sent: 0 would mean "no timeout" to some releases of the client.
MIN_REQUEST_TIMEOUT = 0.001
#: Lease fields this store owns; other spec fields of an existing Lease are left as they are.
_OWN_SPEC_FIELDS = ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime",
                    "leaseTransitions")


class _Fence(NamedTuple):
    """The fence Lease as last seen: HTTP status, its counter (None if absent or unreadable)
    and its resourceVersion."""

    status: int
    transitions: int | None
    version: str | None


class LeaseVersion(NamedTuple):
    """The version of a stored Lease: the object's ``resourceVersion`` and ``uid``."""

    resource_version: str
    uid: str


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a Lease (a DNS subdomain, as the API server requires), or None."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed"
    if not _DNS_SUBDOMAIN.fullmatch(name):
        return ("must be a DNS subdomain: lowercase letters, digits, '-' and '.', starting and "
                "ending with a letter or digit (for example 'my-app-leader')")
    return None


def namespace_problem(namespace: object) -> str | None:
    """Why ``namespace`` cannot name a namespace (a DNS label), or None."""
    if not isinstance(namespace, str):
        return f"must be a string, not {type(namespace).__name__}"
    if len(namespace) > MAX_NAMESPACE_LENGTH:
        return f"is {len(namespace)} characters long; at most {MAX_NAMESPACE_LENGTH} are allowed"
    if not _DNS_LABEL.fullmatch(namespace):
        return ("must be a DNS label: lowercase letters, digits and '-', starting and ending "
                "with a letter or digit")
    return None


def kubeconfig_path() -> str:
    """``$KUBECONFIG`` (paths separated by ``:``) or ``~/.kube/config``, read at call time (the
    kubernetes package reads the variable once, when it is imported)."""
    return os.environ.get("KUBECONFIG") or os.path.join("~", ".kube", "config")


def detect_namespace() -> str:
    """The pod's namespace from the service account, else the kubeconfig context's, else default.

    :raises ConfigurationError: the service account's namespace file holds no valid namespace.
    """
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE_FILE, encoding="utf-8") as file:
            namespace = file.read().strip()
    except OSError:
        pass
    else:
        problem = namespace_problem(namespace)
        if problem is not None:
            raise ConfigurationError(f"namespace {namespace!r} in {SERVICE_ACCOUNT_NAMESPACE_FILE} "
                                     f"{problem}; pass namespace='...'")
        return namespace
    context_namespace: object = None
    try:
        kube_config = importlib.import_module("kubernetes.config")
        _, current = kube_config.list_kube_config_contexts(config_file=kubeconfig_path())
        context_namespace = (current or {}).get("context", {}).get("namespace")
    except Exception as exc:  # noqa: BLE001 - no usable kubeconfig is a normal case here
        logger.debug("no namespace from kubeconfig: %s", exc)
    if isinstance(context_namespace, str) and namespace_problem(context_namespace) is None:
        return context_namespace
    return DEFAULT_NAMESPACE


def format_microtime(seconds: float) -> str:
    """UTC Unix seconds as a Kubernetes MicroTime: ``2026-01-10T14:30:25.123456Z``.

    :raises ValueError: ``seconds`` is not finite or outside the years 1-9999.
    """
    micros = round(seconds * 1_000_000)  # raises for NaN and infinities
    whole, fraction = divmod(micros, 1_000_000)
    moment = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=whole)
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
            f"{moment.minute:02d}:{moment.second:02d}.{fraction:06d}Z")


def parse_microtime(text: str) -> float:
    """RFC 3339 (a Kubernetes MicroTime or Time) as UTC Unix seconds, to the microsecond.

    :raises ValueError: ``text`` is not an RFC 3339 timestamp.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    datetime.datetime(year, month, day, hour, minute, second)  # range check, as Go's parser does
    micros = int((match.group(7) or "0").ljust(9, "0")[:6])
    offset = match.group(8)
    offset_seconds = 0
    if offset not in ("Z", "z"):
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError(f"bad UTC offset in {text!r}")
        offset_seconds = (hours * 60 + minutes) * 60 * (1 if offset[0] == "+" else -1)
    whole = calendar.timegm((year, month, day, hour, minute, second)) - offset_seconds
    return (whole * 1_000_000 + micros) / 1_000_000


def record_from_lease(lease: dict[str, Any]) -> LeaseRecord:
    """The lease record in a Lease object; content that makes no sense is unreadable.

    Missing fields are read the way client-go reads them: no holder is an empty (released)
    lease, no transitions is 0; a missing lease duration or time is 0 (unknown).
    """
    spec = lease.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        return unreadable_record()
    transitions = spec.get("leaseTransitions")
    if transitions is None:
        transitions = 0
    if not _is_int(transitions) or not 0 <= transitions <= MAX_INT32:
        return unreadable_record()
    try:
        holder = spec.get("holderIdentity")
        if holder is None:
            holder = ""
        if not isinstance(holder, str):
            raise ValueError("holderIdentity is not a string")
        duration = spec.get("leaseDurationSeconds")
        if duration is None:
            duration = 0
        if not _is_int(duration):
            raise ValueError("leaseDurationSeconds is not an integer")
        times = []
        for field in ("acquireTime", "renewTime"):
            value = spec.get(field)
            if value is None:
                times.append(0.0)
            elif isinstance(value, str):
                times.append(parse_microtime(value))
            else:
                raise ValueError(f"{field} is not a string")
    except ValueError:
        return unreadable_record(transitions)
    return LeaseRecord(holder, float(max(duration, 0)), times[0], times[1], transitions)


def spec_from_record(record: LeaseRecord) -> dict[str, Any]:
    """The Lease spec fields client-go writes for ``record``.

    :raises ConfigurationError: a value cannot be stored in a Lease (a lease duration that is
        not a whole number of seconds >= 1, negative transitions, a time that is not finite).
    """
    duration = record.lease_duration
    if not float(duration).is_integer() or not 1 <= duration <= MAX_INT32:
        raise ConfigurationError(f"lease_duration ({duration}) cannot be stored in a Kubernetes "
                                 "Lease: leaseDurationSeconds is a whole number of seconds >= 1")
    if not _is_int(record.transitions) or not 0 <= record.transitions <= MAX_INT32:
        raise ConfigurationError(f"transitions ({record.transitions!r}) cannot be stored in a "
                                 "Kubernetes Lease: leaseTransitions is an int32 >= 0")
    try:
        acquire_time = format_microtime(record.acquire_time)
        renew_time = format_microtime(record.renew_time)
    except (ValueError, OverflowError) as exc:
        raise ConfigurationError(f"times of {record!r} cannot be stored in a Kubernetes "
                                 f"Lease: {exc}") from exc
    return {"holderIdentity": record.holder, "leaseDurationSeconds": int(duration),
            "acquireTime": acquire_time, "renewTime": renew_time,
            "leaseTransitions": record.transitions}


def fence_name(name: str) -> str:
    """The Lease that keeps the fencing floor of the Lease ``name``."""
    return name[:MAX_NAME_LENGTH - 6].rstrip(".-") + "-fence"


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class KubernetesLeaseStore(LeaseStore):
    """A lease kept in the Lease ``name`` in ``namespace``, through the Kubernetes API.

    ``namespace`` defaults to the pod's own (the service account's namespace file), else the
    current kubeconfig context's namespace, else ``"default"``. ``api_client`` (a
    ``kubernetes.client.ApiClient``) says which API server to use and how to authenticate;
    without it the in-cluster configuration is used, else the kubeconfig. The store sends its
    requests through a client of its own built from that configuration, with urllib3's
    automatic retries off, so that no request outlives the timeout the elector gives it.

    Versions are :class:`LeaseVersion` tuples.

    :raises ConfigurationError: ``name`` or ``namespace`` is not a valid Kubernetes name, or no
        Kubernetes configuration could be loaded.
    :raises ImportError: the ``kubernetes`` package is not installed.
    """

    def __init__(self, name: str, *, namespace: str | None = None,
                 api_client: Any = None) -> None:
        problem = name_problem(name)
        if problem is not None:
            raise ConfigurationError(f"lease name {name!r} {problem}")
        if namespace is not None:
            problem = namespace_problem(namespace)
            if problem is not None:
                raise ConfigurationError(f"namespace {namespace!r} {problem}")
        # The kubernetes client is imported by module name, not with an import statement: it
        # is optional, and its typed (37+) and untyped (24-36) generations differ in the calls
        # made below, so its objects are handled as Any.
        try:
            client = importlib.import_module("kubernetes.client")
        except ImportError as exc:
            raise ImportError('the Kubernetes backend needs the kubernetes package: '
                              'pip install "singleton_jobs[kubernetes]"') from exc
        self.lease_name: str = name
        self.namespace: str = detect_namespace() if namespace is None else namespace
        self._api_exception: type[Exception] = client.ApiException
        # What a request can fail with below the HTTP status: sockets, HTTP framing, urllib3,
        # and the kubeconfig/in-cluster loaders when they refresh a token.
        self._transport_errors: tuple[type[Exception], ...] = (
            OSError, http.client.HTTPException,
            importlib.import_module("urllib3.exceptions").HTTPError,
            importlib.import_module("kubernetes.config").ConfigException)
        self._api_client: Any = _private_api_client(client, api_client)
        self._client_module = client
        self._pid = os.getpid()  # the process this store's connection pool belongs to
        self._collection_path = f"/apis/{API_VERSION}/namespaces/{self.namespace}/leases"
        self._path = f"{self._collection_path}/{name}"
        self.fence_name = fence_name(name)
        self._fence_path = f"{self._collection_path}/{self.fence_name}"
        self._fence_written = -1
        self._fence_seen: _Fence | None = None  # the fence Lease as last read or written
        self._fence_warned = False
        # kubernetes < 36 ignores a float timeout; a (connect, read) pair bounds each part.
        version = getattr(importlib.import_module("kubernetes"), "__version__", "0")
        self._total_timeout = _major(version) >= 36
        self._lock = threading.Lock()
        # The Lease object (the server's JSON) from the last read or write: a renew sends it
        # back with only the spec changed, as client-go does, so it needs no read first.
        self._lease: dict[str, Any] | None = None

    def sibling(self, key: str) -> KubernetesLeaseStore:
        """The Lease ``<name>-once-<key>-<hash>`` in the same namespace."""
        return KubernetesLeaseStore(once_name(self.lease_name, key, MAX_NAME_LENGTH),
                                    namespace=self.namespace, api_client=self._api_client)

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.lease_name}"

    def after_fork(self) -> None:
        """A connection pool must not cross a fork: both processes would read each other's
        answers from one keep-alive socket. The child gets a client of its own."""
        self._api_client = _private_api_client(self._client_module, self._api_client)
        self._fence_written = -1
        self._fence_seen = None
        self._lock = threading.Lock()
        self._lease = None
        self._pid = os.getpid()

    @property
    def host(self) -> str:
        """The API server's URL."""
        return str(self._api_client.configuration.host)

    def check_lease_duration(self, lease_duration: float) -> None:
        """Lease durations are stored as whole seconds (``leaseDurationSeconds``), at least 1.

        :raises ConfigurationError: ``lease_duration`` is not a whole number of seconds >= 1.
        """
        if not float(lease_duration).is_integer() or not 1 <= lease_duration <= MAX_INT32:
            raise ConfigurationError(
                f"lease_duration ({lease_duration}) must be a whole number of seconds >= 1 for a "
                "Kubernetes Lease (leaseDurationSeconds is an integer)")

    # -- LeaseStore -----------------------------------------------------------------------------

    def get(self, *, timeout: float = 10.0) -> Snapshot | None:
        status, body = self._request("GET", self._path, None, timeout)
        if status == 200:
            lease, version = self._read_lease(status, body, "read")
            return record_from_lease(lease), version
        if status == 404:
            self._raise_if_namespace_missing(body)
            return None
        raise self._error(status, body, "get")

    def transitions_floor(self, *, timeout: float = 10.0) -> int | None:
        """The highest transitions kept in the fence Lease: -1 if there is none, None if it
        cannot be read (forbidden, or not a fence).

        :raises LeaseStoreError: the API server failed to answer (5xx, 429, transport).
        """
        fence = self._read_fence(timeout)
        return -1 if fence.status == 404 else fence.transitions

    def create(self, record: LeaseRecord, *, timeout: float = 10.0) -> Version | None:
        """Create the Lease; None if it exists, or if the fence Lease already reached
        ``record.transitions`` (a Lease with that token existed since the floor was read)."""
        if not self._raise_fence(record.transitions, timeout, new_only=True):
            return None
        lease = {"apiVersion": API_VERSION, "kind": "Lease",
                 "metadata": {"name": self.lease_name, "namespace": self.namespace},
                 "spec": spec_from_record(record)}
        status, body = self._request("POST", self._collection_path, lease, timeout)
        if status in (200, 201):
            return self._read_lease(status, body, "create")[1]
        if status == 409:  # AlreadyExists: another replica created it first
            return None
        if status == 404:
            self._raise_if_namespace_missing(body)
        raise self._error(status, body, "create")

    def update(self, record: LeaseRecord, version: Version, *,
               timeout: float = 10.0) -> Version | None:
        if not isinstance(version, LeaseVersion):
            return None  # not a version of a Lease, so never the current one
        self._raise_fence(record.transitions, timeout)
        status, body = self._request("PUT", self._path, self._lease_body(record, version),
                                     timeout)
        if status in (200, 201):
            return self._read_lease(status, body, "update")[1]
        if status == 409:  # Conflict: the Lease changed (or was recreated) since `version`
            return None
        if status == 404:
            self._raise_if_namespace_missing(body)
            return None  # the Lease is gone, so `version` is not current
        raise self._error(status, body, "update")

    # -- the fencing floor ----------------------------------------------------------------------

    def _read_fence(self, timeout: float) -> _Fence:
        """The fence Lease as the API server has it. A 401 or 403 is warned about once (a Role
        pinned to the main Lease); other failures raise.

        :raises LeaseStoreError: the API server failed to answer (5xx, 429, transport).
        """
        status, body = self._request("GET", self._fence_path, None, timeout)
        if status == 404:
            return _Fence(status, None, None)
        if status in (401, 403):
            self._fence_problem(self._error(status, body, "get"))
            return _Fence(status, None, None)
        if status != 200:
            raise self._error(status, body, f"get fence {self.fence_name} of")
        try:
            fence = json.loads(body)
            version = fence["metadata"]["resourceVersion"]
        except (ValueError, KeyError, TypeError):
            return _Fence(status, None, None)
        spec = fence.get("spec") if isinstance(fence, dict) else None
        transitions = spec.get("leaseTransitions") if isinstance(spec, dict) else None
        seen = _Fence(status, transitions if _is_int(transitions) else None,
                      version if isinstance(version, str) else None)
        self._fence_seen = seen  # a takeover right after this read needs no second GET
        return seen

    def _raise_fence(self, transitions: int, timeout: float, *, new_only: bool = False) -> bool:
        """Keep ``transitions`` as the floor before a record carrying it is written.

        With ``new_only`` (a create), return False if the fence already holds ``transitions``
        or more, or could not be written: the compare-and-swap on the fence Lease makes sure
        that of two creates after a deletion, only one gets a token. Only where the fence is
        forbidden (a Role pinned to the main Lease; warned once) does a create go ahead
        without it. Renewals cost nothing; a takeover costs one PUT once the fence's version
        is known.

        :raises LeaseStoreError: the API server failed to answer.
        """
        if transitions <= self._fence_written and not new_only:
            return True
        fence = self._fence_seen or self._read_fence(timeout)
        for _ in range(3):
            if fence.status in (401, 403):
                return True  # no fence allowed: tokens restart at 0 after a deletion (warned)
            if fence.transitions is not None and fence.transitions >= transitions:
                if new_only:
                    self._fence_seen = None  # look again next time: it may be stale
                    return False
                self._fence_written = fence.transitions
                return True
            if fence.status == 200 and fence.version is None:
                return not new_only  # not a Lease we can write: never guess a token
            metadata: dict[str, Any] = {
                "name": self.fence_name, "namespace": self.namespace,
                "annotations": {"singleton-jobs/fence-for": self.lease_name}}
            if fence.status == 404:
                method, path = "POST", self._collection_path
            else:  # a lower counter, or garbage: replaced, if still the version we read
                method, path = "PUT", self._fence_path
                metadata["resourceVersion"] = fence.version
            body = {"apiVersion": API_VERSION, "kind": "Lease", "metadata": metadata,
                    "spec": {"holderIdentity": "", "leaseTransitions": transitions}}
            status, answer = self._request(method, path, body, timeout)
            if status in (200, 201):
                try:
                    version = json.loads(answer)["metadata"]["resourceVersion"]
                except (ValueError, KeyError, TypeError):
                    version = None
                self._fence_written = transitions
                self._fence_seen = (_Fence(200, transitions, version)
                                    if isinstance(version, str) else None)
                return True
            if status in (401, 403):
                self._fence_problem(self._error(status, answer, "write"))
                return True
            if status == 404:
                self._raise_if_namespace_missing(answer)
            if status not in (404, 409):
                raise self._error(status, answer, f"write fence {self.fence_name} of")
            fence = self._read_fence(timeout)  # moved by another replica, or gone: look again
        return not new_only

    def _fence_problem(self, error: SingletonJobsError) -> None:
        if not self._fence_warned:
            self._fence_warned = True
            logger.warning("fence Lease %s/%s unusable (%s): fencing tokens of %s restart at 0 "
                           "if that Lease is deleted; grant get, create and update on the "
                           "fence Lease too", self.namespace, self.fence_name, error, self.name)

    # -- requests -------------------------------------------------------------------------------

    def _lease_body(self, record: LeaseRecord, version: LeaseVersion) -> dict[str, Any]:
        spec = spec_from_record(record)
        with self._lock:
            kept = self._lease
        if kept is not None and kept["metadata"].get("uid", "") == version.uid:
            # The same object as last seen: keep its labels, annotations, owners and any spec
            # field this store does not own.
            lease = dict(kept)
            metadata = dict(kept["metadata"])
            old_spec = kept.get("spec")
            if isinstance(old_spec, dict):
                spec = {**{key: value for key, value in old_spec.items()
                           if key not in _OWN_SPEC_FIELDS}, **spec}
        else:
            lease = {}
            metadata = {"name": self.lease_name, "namespace": self.namespace}
            if version.uid:
                metadata["uid"] = version.uid
        metadata["resourceVersion"] = version.resource_version
        lease.update(apiVersion=API_VERSION, kind="Lease", metadata=metadata, spec=spec)
        return lease

    def _request(self, method: str, path: str, body: dict[str, Any] | None,
                 timeout: float) -> tuple[int, bytes]:
        """Send one request; return the HTTP status and body. Only transport failures raise."""
        timeout = max(timeout, MIN_REQUEST_TIMEOUT)
        # One total for connect and read: an API server that answers slowly gets the whole
        # budget. kubernetes < 36 silently ignores a float, so there a (connect, read) pair.
        request_timeout: float | tuple[float, float] = (
            timeout if self._total_timeout else (timeout, timeout))
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        client = self._api_client
        try:
            if hasattr(client, "param_serialize"):  # kubernetes >= 37
                request = client.param_serialize(method=method, resource_path=path,
                                                 header_params=headers, body=body,
                                                 auth_settings=["BearerToken"])
                response = client.call_api(*request, _request_timeout=request_timeout)
                data = response.read()
            else:  # kubernetes 24-36 raise ApiException for any status outside 2xx
                response = client.call_api(path, method, header_params=headers, body=body,
                                           auth_settings=["BearerToken"],
                                           _preload_content=False, _return_http_data_only=True,
                                           _request_timeout=request_timeout)
                data = response.data
            return int(response.status), bytes(data or b"")
        except self._api_exception as exc:
            status = getattr(exc, "status", 0)
            if not status:  # the client's own failures (TLS, a bad request) have status 0
                raise LeaseStoreError(self._failure(method, timeout, exc)) from exc
            content = getattr(exc, "body", None) or b""
            return int(status), content.encode() if isinstance(content, str) else bytes(content)
        except self._transport_errors as exc:
            raise LeaseStoreError(self._failure(method, timeout, exc)) from exc

    def _failure(self, method: str, timeout: float, exc: BaseException) -> str:
        return (f"{method} lease {self.name} on {self.host} failed (timeout {timeout:.3g}s): "
                f"{type(exc).__name__}: {exc}")

    def _read_lease(self, status: int, body: bytes, action: str) -> tuple[dict[str, Any],
                                                                          LeaseVersion]:
        """The Lease in a successful answer, remembered for the next write."""
        try:
            lease = json.loads(body)
        except ValueError:
            lease = None
        metadata = lease.get("metadata") if isinstance(lease, dict) else None
        version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if (not isinstance(lease, dict) or lease.get("kind") != "Lease"
                or not isinstance(metadata, dict) or metadata.get("name") != self.lease_name
                or not isinstance(version, str) or not version):
            raise LeaseStoreError(f"{action} lease {self.name} on {self.host}: HTTP {status} "
                                  f"answer is not the Lease: {body[:120]!r}")
        uid = metadata.get("uid")
        with self._lock:
            self._lease = lease
        return lease, LeaseVersion(version, uid if isinstance(uid, str) else "")

    def _raise_if_namespace_missing(self, body: bytes) -> None:
        status = _status_object(body)
        details = status.get("details")
        if isinstance(details, dict) and details.get("kind") == "namespaces":
            raise ConfigurationError(
                f"namespace {self.namespace!r} does not exist on {self.host}: create it, or pass "
                "namespace='...' (the default is the pod's own namespace)")

    def _error(self, status: int, body: bytes, verb: str) -> SingletonJobsError:
        answer = _status_object(body)
        message = answer.get("message") if isinstance(answer.get("message"), str) else None
        reason = answer.get("reason") if isinstance(answer.get("reason"), str) else ""
        said = message or body[:200].decode("utf-8", "replace").strip() or "(no message)"
        where = f"lease {self.name} on {self.host}"
        if status == 401:
            return ConfigurationError(
                f"cannot {verb} {where}: 401 Unauthorized, the API server rejected the "
                f"credentials (an expired token or the wrong kubeconfig user?); then "
                f"{RBAC_HINT.format(namespace=self.namespace)}")
        if status == 403:
            return ConfigurationError(
                f"cannot {verb} {where}: 403 Forbidden ({said}); "
                f"{RBAC_HINT.format(namespace=self.namespace)}")
        label = f"{status} {reason}".strip()
        return LeaseStoreError(f"cannot {verb} {where}: HTTP {label}: {said}")


def _status_object(body: bytes) -> dict[str, Any]:
    """The ``Status`` object in an error answer, or {} if there is none."""
    try:
        status = json.loads(body)
    except ValueError:
        return {}
    return status if isinstance(status, dict) else {}


def _private_api_client(client: Any, api_client: Any) -> Any:
    """An ApiClient for the store: ``api_client``'s configuration, else in-cluster or kubeconfig.

    :raises ConfigurationError: no configuration was given and none could be loaded.
    """
    if api_client is not None:
        configuration = copy.copy(api_client.configuration)
    else:
        configuration = _load_configuration(client)
    # A urllib3 retry would start the request timeout over (up to 4 times by default), and an
    # automatic retry of a PUT is not what the elector wants: it retries on its own schedule.
    configuration.retries = False
    store_client = client.ApiClient(configuration)
    if api_client is not None:
        store_client.default_headers.update(api_client.default_headers)
        store_client.cookie = api_client.cookie
    return store_client


def _load_configuration(client: Any) -> Any:
    kube_config = importlib.import_module("kubernetes.config")
    configuration = client.Configuration()
    try:
        kube_config.load_incluster_config(client_configuration=configuration)
        return configuration
    except kube_config.ConfigException as in_cluster:
        reason = str(in_cluster)
    try:
        kube_config.load_kube_config(config_file=kubeconfig_path(),
                                     client_configuration=configuration)
    except Exception as exc:  # noqa: BLE001 - any kubeconfig failure means: no configuration
        raise ConfigurationError(
            f"no Kubernetes API configuration: not running in a pod ({reason}) and no usable "
            f"kubeconfig at {kubeconfig_path()} ({type(exc).__name__}: {exc}); run in a "
            "cluster, set KUBECONFIG, or pass api_client=kubernetes.client.ApiClient(...)"
        ) from exc
    return configuration


class KubernetesElector(Elector):
    """An :class:`~singleton_jobs.Elector` on the Lease ``name``; see :class:`KubernetesLeaseStore`.

    ``identity`` defaults to ``<POD_NAME>_<pid>_<random>`` (set ``POD_NAME`` from the downward
    API; the host name stands in without it): readable, and unique to each worker process of a
    pod. ``lease_duration`` must be a whole number of seconds.

    :raises ConfigurationError: invalid timing, identity, name or namespace, or no Kubernetes
        configuration.
    :raises ImportError: the ``kubernetes`` package is not installed.
    """

    store: KubernetesLeaseStore

    def __init__(
        self,
        name: str,
        *,
        namespace: str | None = None,
        api_client: Any = None,
        identity: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callable[[], Any] | None = None,
        on_stopped_leading: Callable[[], Any] | None = None,
        on_new_leader: Callable[[str], Any] | None = None,
        liveness_timeout: float | None = None,
    ) -> None:
        super().__init__(KubernetesLeaseStore(name, namespace=namespace, api_client=api_client),
                         identity=identity, lease_duration=lease_duration,
                         renew_deadline=renew_deadline, retry_period=retry_period,
                         on_started_leading=on_started_leading,
                         on_stopped_leading=on_stopped_leading, on_new_leader=on_new_leader,
                         liveness_timeout=liveness_timeout)

    @property
    def lease_name(self) -> str:
        return self.store.lease_name

    @property
    def namespace(self) -> str:
        return self.store.namespace
