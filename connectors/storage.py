"""Storage: a URI plus storage options in, a filesystem out; foreign errors in, ours out.

::

    "s3://anonymous@bucket/key" + {"endpoint_url": ...}
        │ parse_uri                              (scheme, anonymous marker, path)
        ▼
    Location(protocol="s3", path="bucket/key", anonymous=True)
        │ _s3_settings                           storage_options > URI > AWS environment
        ▼
    _S3Settings (frozen, hashable; credentials kept out of repr)
        ├── fsspec_filesystem() -> s3fs.S3FileSystem      listing, globbing, sinks
        └── arrow_filesystem()  -> pyarrow.fs.S3FileSystem Parquet footers and column reads

S3 gets two clients on purpose: pyarrow's native client does ranged, coalesced, pre-buffered
reads in C++ without holding the GIL (the speed of ``pyarrow.parquet.read_table``), while s3fs
gives fsspec semantics for listing, globbing and writing. Both are built from the same settings,
with the same bounded retries (AWS "standard" mode: exponential backoff with jitter, which
covers 503 SlowDown) and short connect timeouts, so a dead endpoint fails in seconds instead of
hanging. Local paths use the local filesystems of fsspec and pyarrow; any other fsspec protocol
works through fsspec, wrapped for pyarrow by ``FSSpecHandler``.

Storage options understood for S3 (anything else is passed to s3fs unchanged):
``endpoint_url``, ``anon``, ``key``/``aws_access_key_id``, ``secret``/``aws_secret_access_key``,
``token``/``aws_session_token``, ``region``/``region_name``, ``profile``. Unset ones fall back to
the standard AWS environment (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``AWS_DEFAULT_REGION``, ``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID`` ...) through botocore and the AWS
SDK, which is also where profiles and instance credentials come from.

`wrap_error` turns botocore, pyarrow and OSError failures into `StorageError` (or the caller's
class for "not found") naming the URI, what was being done and the cause in one line.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .exceptions import ConnectorError, StorageError

if TYPE_CHECKING:
    import fsspec
    import pyarrow.fs

__all__ = [
    "Location",
    "arrow_filesystem",
    "fsspec_filesystem",
    "parse_uri",
    "redact",
    "wrap_error",
]

ANONYMOUS_USER = "anonymous"
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
MAX_ATTEMPTS = 3  # first try + 2 retries with exponential backoff (the AWS default)

_S3_PROTOCOLS = ("s3", "s3a", "s3n")
_ALIASES = {
    "aws_access_key_id": "key",
    "aws_secret_access_key": "secret",
    "aws_session_token": "token",
    "region_name": "region",
}
_S3_KNOWN = {"endpoint_url", "anon", "key", "secret", "token", "region", "profile"}


@dataclass(frozen=True)
class Location:
    """Where a URI points: a protocol and a path in that protocol's filesystem."""

    protocol: str  # "file", "s3", or any other fsspec protocol
    path: str  # "/abs/path" for files, "bucket/key" for S3
    anonymous: bool = False  # s3://anonymous@bucket/...: unsigned requests

    def uri(self, path: str | None = None) -> str:
        """The URI of `path` (default: this location's path) in the same filesystem."""
        path = self.path if path is None else path
        if self.protocol == "file":
            return path
        user = f"{ANONYMOUS_USER}@" if self.anonymous else ""
        return f"{self.protocol}://{user}{path}"

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0] if self.protocol in _S3_PROTOCOLS else ""


def parse_uri(uri: str) -> Location:
    """Split a URI into protocol, path and the anonymous marker.

    Local paths (with or without ``file://``) become absolute. ``s3://anonymous@bucket/key``
    means unsigned access; any other user info in the URI is dropped (and never echoed).
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"expected a URI or path as a non-empty string, found {uri!r}")
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$", uri)
    if match is None:
        return Location("file", os.path.abspath(os.path.expanduser(uri)))
    protocol, rest = match.group(1).lower(), match.group(2)
    if protocol in ("file", "local"):
        return Location("file", os.path.abspath(rest))
    anonymous = False
    head, sep, tail = rest.partition("/")
    if "@" in head:
        user, _, host = head.rpartition("@")
        anonymous = user == ANONYMOUS_USER
        rest = host + sep + tail
    if protocol in _S3_PROTOCOLS:
        protocol = "s3"
    return Location(protocol, rest, anonymous)


def redact(uri: str) -> str:
    """`uri` without user info other than the anonymous marker: safe for messages and logs."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@]*)@",
                  lambda m: m.group(0) if m.group(2) == ANONYMOUS_USER else m.group(1), uri)


# --------------------------------------------------------------------------- S3 settings


@dataclass(frozen=True)
class _S3Settings:
    """Everything that picks an S3 client; hashable so clients can be cached by it."""

    anon: bool = False
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    extra: tuple[tuple[str, Any], ...] = field(default=(), repr=False)


def _s3_settings(location: Location, storage_options: dict | None) -> _S3Settings:
    options = {_ALIASES.get(k, k): v for k, v in (storage_options or {}).items()}
    env = os.environ
    endpoint = (options.get("endpoint_url") or env.get("AWS_ENDPOINT_URL_S3")
                or env.get("AWS_ENDPOINT_URL") or None)
    region = options.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    extra = tuple(sorted((k, _freeze(v)) for k, v in options.items() if k not in _S3_KNOWN))
    return _S3Settings(
        anon=bool(options.get("anon", False)) or location.anonymous,
        endpoint_url=endpoint,
        region=region,
        profile=options.get("profile"),
        key=options.get("key"),
        secret=options.get("secret"),
        token=options.get("token"),
        extra=extra,
    )


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and all(isinstance(i, tuple) and len(i) == 2 for i in value):
        return {k: _thaw(v) for k, v in value}
    return value


# --------------------------------------------------------------------------- filesystems


def fsspec_filesystem(uri: str, storage_options: dict | None = None
                      ) -> tuple[fsspec.AbstractFileSystem, Location]:
    """The fsspec filesystem for `uri` and the parsed location (its ``path`` is fs-relative)."""
    location = parse_uri(uri)
    if location.protocol == "file":
        return _local_fsspec(), location
    if location.protocol == "s3":
        return _s3fs(_s3_settings(location, storage_options)), location
    try:
        import fsspec

        return fsspec.filesystem(location.protocol, **(storage_options or {})), location
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open {redact(uri)}: no filesystem for protocol "
                           f"{location.protocol!r} ({exc})") from exc


def arrow_filesystem(uri: str, storage_options: dict | None = None
                     ) -> tuple[pyarrow.fs.FileSystem, Location]:
    """The pyarrow filesystem for `uri` and the parsed location (its ``path`` is fs-relative)."""
    location = parse_uri(uri)
    if location.protocol == "file":
        return _local_arrow(), location
    if location.protocol == "s3":
        settings = _s3_settings(location, storage_options)
        return _arrow_s3(settings, _region_for(settings, location.bucket)), location
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, _ = fsspec_filesystem(uri, storage_options)
    return PyFileSystem(FSSpecHandler(fs)), location


@functools.cache
def _local_fsspec() -> fsspec.AbstractFileSystem:
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem()


@functools.cache
def _local_arrow() -> pyarrow.fs.FileSystem:
    from pyarrow.fs import LocalFileSystem

    return LocalFileSystem()


@functools.lru_cache(maxsize=32)
def _s3fs(settings: _S3Settings) -> fsspec.AbstractFileSystem:
    import s3fs

    client_kwargs: dict[str, Any] = {}
    if settings.region:
        client_kwargs["region_name"] = settings.region
    kwargs: dict[str, Any] = {
        "anon": settings.anon,
        "endpoint_url": settings.endpoint_url,
        "key": settings.key,
        "secret": settings.secret,
        "token": settings.token,
        "profile": settings.profile,
        "client_kwargs": client_kwargs,
        # botocore does the backoff ("standard" mode retries throttling and 5xx); s3fs's own
        # loop adds a few more tries for dropped connections.
        "config_kwargs": {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
            "retries": {"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        },
        "skip_instance_cache": True,  # ours alone: we set its retry count and cache it here
    }
    for key, value in settings.extra:
        value = _thaw(value)
        if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
            kwargs[key] = {**kwargs[key], **value}
        else:
            kwargs[key] = value
    fs = s3fs.S3FileSystem(**kwargs)
    fs.retries = 2
    return fs


@functools.lru_cache(maxsize=32)
def _arrow_s3(settings: _S3Settings, region: str | None) -> pyarrow.fs.FileSystem:
    from pyarrow import fs as pafs

    key, secret, token = settings.key, settings.secret, settings.token
    if settings.profile and not settings.anon and not key:
        key, secret, token = _profile_credentials(settings.profile)
    kwargs: dict[str, Any] = {
        "anonymous": settings.anon,
        "region": region,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "request_timeout": READ_TIMEOUT_S,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS),
    }
    if not settings.anon and key:
        kwargs.update(access_key=key, secret_key=secret, session_token=token)
    if settings.endpoint_url:
        scheme, _, host = settings.endpoint_url.rpartition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
    return pafs.S3FileSystem(**kwargs)


def _profile_credentials(profile: str) -> tuple[str | None, str | None, str | None]:
    # pyarrow has no profile option: resolve it the way botocore does and pass the keys.
    import botocore.session

    credentials = botocore.session.Session(profile=profile).get_credentials()
    if credentials is None:
        return None, None, None
    frozen = credentials.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token


@functools.lru_cache(maxsize=128)
def _resolved_region(bucket: str) -> str | None:
    from pyarrow import fs as pafs

    try:
        return pafs.resolve_s3_region(bucket)
    except (OSError, ValueError):
        return None


def _region_for(settings: _S3Settings, bucket: str) -> str | None:
    # AWS answers a request signed for the wrong region with a redirect that the C++ client
    # does not follow, so find the bucket's region unless a custom endpoint makes it moot.
    if settings.region or settings.endpoint_url:
        return settings.region or "us-east-1"
    return _resolved_region(bucket) if bucket else None


# --------------------------------------------------------------------------- errors

_NOT_FOUND = ("NoSuchKey", "NoSuchBucket", "NO_SUCH_BUCKET", "NO_SUCH_KEY", "Not Found",
              "NOT_FOUND", "Path does not exist", "does not exist", "(404)")
_DENIED = ("AccessDenied", "ACCESS_DENIED", "InvalidAccessKeyId", "INVALID_ACCESS_KEY_ID",
           "SignatureDoesNotMatch", "SIGNATURE_DOES_NOT_MATCH",
           "Forbidden", "(403)", "ExpiredToken", "NoCredentials", "Unable to locate credentials")
_THROTTLED = ("SlowDown", "SLOW_DOWN", "Throttl", "THROTTL", "RequestLimitExceeded",
              "reduce your request rate", "(503)", "Service Unavailable", "SERVICE_UNAVAILABLE")
_UNREACHABLE = ("Could not connect", "Couldn't connect", "Connection refused", "curlCode: 7",
                "curlCode: 28", "ConnectTimeout", "Connect timeout", "Cannot connect to host",
                "NETWORK_CONNECTION", "Failed to connect")


def classify(exc: BaseException) -> str:
    """One of "not_found", "denied", "throttled", "unreachable", "other" for a foreign error."""
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, PermissionError):
        return "denied"
    text = _cause(exc)
    names = {type(e).__name__ for e in _chain(exc)}
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                "ConnectionRefusedError", "ServerDisconnectedError"}:
        return "unreachable"
    if names & {"NoCredentialsError", "PartialCredentialsError"}:
        return "denied"
    for kind, markers in (("denied", _DENIED), ("throttled", _THROTTLED),
                          ("not_found", _NOT_FOUND), ("unreachable", _UNREACHABLE)):
        if any(marker in text for marker in markers):
            return kind
    return "other"


def wrap_error(exc: BaseException, uri: str, action: str, *,
               not_found: type[ConnectorError] = StorageError,
               storage_options: dict | None = None) -> ConnectorError:
    """Our error for a foreign one, naming the URI, the action and the cause.

    Our own errors pass through untouched. Use as ``raise wrap_error(exc, uri, "read") from exc``.
    """
    if isinstance(exc, ConnectorError):
        return exc
    kind = classify(exc)
    if kind in ("denied", "other") and _no_credentials(uri, storage_options):
        # Unsigned requests fail in store-specific ways (403, or worse); say what is missing.
        return StorageError(
            f"cannot {action} {redact(uri)}: no AWS credentials found ({_cause(exc)}); give "
            "storage_options key/secret or profile, set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "or AWS_PROFILE, or use s3://anonymous@bucket/... for a public bucket")
    uri = redact(uri)
    cause = _cause(exc)
    if kind == "not_found":
        return not_found(f"cannot {action} {uri}: not found ({cause})")
    if kind == "denied":
        return StorageError(
            f"cannot {action} {uri}: access denied ({cause}); check the credentials "
            "(storage_options key/secret/profile or AWS_ACCESS_KEY_ID/AWS_PROFILE), or use "
            "s3://anonymous@bucket/... for a public bucket")
    if kind == "throttled":
        return StorageError(
            f"cannot {action} {uri}: the store is still throttling or unavailable after "
            f"{MAX_ATTEMPTS} attempts with backoff ({cause}); retry later or lower the "
            "number of concurrent tasks")
    if kind == "unreachable":
        endpoint = _endpoint_for(uri, storage_options)
        return StorageError(
            f"cannot {action} {uri}: storage endpoint {endpoint} unreachable ({cause}); "
            "check endpoint_url / AWS_ENDPOINT_URL and that the service is running")
    return StorageError(f"cannot {action} {uri}: {cause}")


def _no_credentials(uri: str, storage_options: dict | None) -> bool:
    """An S3 URI, not anonymous, and neither the options nor the AWS environment (variables,
    profiles, instance metadata) give credentials."""
    try:
        location = parse_uri(uri)
        if location.protocol != "s3":
            return False
        settings = _s3_settings(location, storage_options)
        if settings.anon or settings.key or settings.profile:
            return False
        import botocore.session

        return botocore.session.Session().get_credentials() is None
    except Exception:
        return False


def _endpoint_for(uri: str, storage_options: dict | None) -> str:
    location = parse_uri(uri)
    if location.protocol != "s3":
        return location.protocol
    return _s3_settings(location, storage_options).endpoint_url or "(AWS default)"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 8:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _cause(exc: BaseException) -> str:
    """A one-line description of `exc` and what caused it, without credentials.

    Wrappers often repeat their cause's message (s3fs turns ``InvalidAccessKeyId`` into a
    ``PermissionError`` with the same text): each message is kept once, under the most
    specific name, the S3 error code when there is one.
    """
    entries: dict[str, str] = {}  # message -> name
    for e in _chain(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            error = response["Error"]
            name, message = str(error.get("Code") or type(e).__name__), str(error.get("Message", ""))
            coded = True
        else:
            name, message, coded = type(e).__name__, str(e), False
        message = re.sub(r"\s*\(Request ID: [^)]*\)", "", " ".join(message.split()))
        if message not in entries or coded:
            entries[message] = name
    joined = "; caused by ".join(f"{name}: {message}" if message else name
                                 for message, name in entries.items())
    return joined if len(joined) <= 400 else joined[:397] + "..."
