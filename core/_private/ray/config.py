"""Our options in Ray's words: `core.init(address=..., ...)` as `ray.init` keyword arguments, our
`spill=` as Ray's `object_spilling_config`, and Ray's resource dict back in our keys.

    core.init(address, num_cpus, ..., spill, **ray_kwargs)
        │ ray_init_kwargs (pure)                            ray.cluster_resources()
        ▼                                                         │ our_resources (pure)
    ray.init(**kwargs) + names of options a running cluster ignores     ▼
                                                          {"CPU", "GPU", "object_store_memory", custom...}

Everything here is a pure function except `import_ray`, which sets the environment Ray reads at
import time and imports it (the one place `ray` is imported).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from core._private.objects.spill import parse_spill_config
from core.exceptions import ConfigError, CoreError

__all__ = ["LOCAL_RAY", "LOOPBACK", "import_ray", "ignored_options", "our_resources", "ray_init_kwargs",
           "spilling_config", "DropMessages"]

LOCAL_RAY = "local-ray"
LOOPBACK = "127.0.0.1"
_SIZED = ("num_cpus", "num_gpus", "resources", "object_store_memory", "spill")


def import_ray(address: str | None = None) -> Any:
    """The `ray` module, imported now: it is an optional extra and takes a second to import, so
    `import core` never imports it."""
    # Read by ray at import time: a local instance then uses the loopback address for everything.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    imported_before = "ray" in sys.modules
    if address == LOCAL_RAY and not imported_before:
        # Token auth stays on (Ray's default for a new local instance), without its banner.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray  # lazy: heavy optional dependency (the `ray` extra)
    except ImportError as exc:
        raise CoreError("core.init(address=...) runs on Ray, which is not installed; install the extra "
                        "with `pip install 'ddsf[ray]'` (or `pip install ray`), or call core.init() "
                        "without address for the local engine") from exc
    if address == LOCAL_RAY and imported_before:
        _export_auth_mode()
    return ray


def _export_auth_mode() -> None:
    """Give the processes a local instance starts (GCS, raylet) the auth mode this driver read when
    `ray` was first imported: the GCS reads RAY_AUTH_MODE from the environment at its start, the
    driver only at import, and a mismatch fails the start with "InvalidAuthToken"."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:  # another Ray version: leave the environment as it is
        return
    os.environ["RAY_AUTH_MODE"] = "token" if is_token_auth_enabled() else "disabled"


def spilling_config(spill: Any) -> dict | None:
    """Ray's `object_spilling_config` for our `spill=` value (a folder, a URI, or the dict form),
    or None for Ray's default. S3 goes through smart_open with our buffer_size."""
    if spill is None:
        return None
    config = parse_spill_config(spill)
    if config.scheme == "file":
        path = config.uri or ""
        path = path[len("file://"):] if path.startswith("file://") else path
        return {"type": "filesystem", "params": {"directory_path": os.path.abspath(os.path.expanduser(path))}}
    # buffer_size is what Ray hands smart_open; smart_open >= 5 sizes multipart parts with
    # min_part_size, so that gets our buffer_size too (as our own S3 spill target does).
    size = int(config.buffer_size)
    return {"type": "smart_open", "params": {"uri": config.uri, "buffer_size": size,
                                             "override_transport_params": {"min_part_size": size}}}


def ignored_options(**options: Any) -> list[str]:
    """Names of the sizing options given (not None): what a Ray we do not start ignores."""
    return [key for key in _SIZED if options.get(key) is not None]


def ray_init_kwargs(address: str, *, num_cpus=None, num_gpus=None, resources=None,
                    object_store_memory=None, spill=None, **ray_kwargs: Any) -> tuple[dict, list[str]]:
    """(keyword arguments for `ray.init`, names of our arguments that an existing cluster ignores).

    "local-ray" starts a Ray instance in this process, bound to 127.0.0.1, without dashboard;
    anything else ("auto", "ray://host:10001", "host:port") connects to a running cluster, whose
    size and spilling are its own."""
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "configure_logging": True, "log_to_driver": True}
    ignored: list[str] = []
    if address == LOCAL_RAY:
        kwargs.update(address=None, _node_ip_address=LOOPBACK)
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
        if resources:
            kwargs["resources"] = dict(resources)
        if object_store_memory is not None:
            kwargs["object_store_memory"] = int(object_store_memory)
        spilling = spilling_config(spill)
        if spilling is not None:
            system = dict(ray_kwargs.pop("_system_config", None) or {})
            system["object_spilling_config"] = json.dumps(spilling)
            if isinstance(spill, dict) and "min_spilling_size" in spill:
                system["min_spilling_size"] = parse_spill_config(spill).min_spilling_size
            kwargs["_system_config"] = system
    else:
        if not isinstance(address, str) or not address.strip():
            raise ConfigError(f"address: expected \"local-ray\", \"auto\", \"ray://host:port\" or a "
                              f"Ray address such as \"127.0.0.1:6379\", got {address!r}")
        kwargs["address"] = address
        ignored = ignored_options(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                  object_store_memory=object_store_memory, spill=spill)
        if address.startswith("ray://"):
            # Ray Client forwards ray.init's arguments to the driver it starts on the cluster.
            kwargs = {"address": address}
    kwargs.update(ray_kwargs)
    return kwargs, ignored


def our_resources(ray_resources: dict) -> dict:
    """Ray's resource dict in our keys: CPU, GPU, object_store_memory, then custom resources
    (Ray's bookkeeping keys `memory`, `node:*`, `accelerator_type:*` left out)."""
    out = {"CPU": float(ray_resources.get("CPU", 0.0)), "GPU": float(ray_resources.get("GPU", 0.0)),
           "object_store_memory": float(ray_resources.get("object_store_memory", 0.0))}
    for key, value in ray_resources.items():
        if key in out or key == "memory" or key.startswith(("node:", "accelerator_type:")):
            continue
        out[key] = float(value)
    return out


class DropMessages(logging.Filter):
    """Drops Ray's log records that start with one of the given texts (notices about what we chose)."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)
