"""Replica discovery: the Triton replicas behind one name, looked up again at every rollout.

Triton usually runs as many pods behind a Kubernetes headless Service: one DNS name whose A/AAAA
records are the pods' addresses. A load request sent to the Service reaches one pod, so every
control call must go to every address. A target URL ``dns+http://NAME:PORT`` (or
``dns+https``, ``dns+grpc``) stands for all of them::

    triton:/dns+http://triton-headless.ml.svc.cluster.local:8000

:func:`resolve_urls` turns it into ``http://ADDRESS:PORT`` for each address the name has *now*;
the deployment client calls it at each publish, ``get``, ``list`` and ``predict``, and
``sync``/``watch`` at each round, so a pod that was added or replaced is found on the next one.

The lookup goes through an injectable :data:`Resolver` (default: :func:`dns_resolver`,
``socket.getaddrinfo``), so tests bind replicas to 127.0.0.2, 127.0.0.3... and map a name to
them without touching the machine's DNS configuration::

    previous = set_resolver(lambda host, port: ["127.0.0.2", "127.0.0.3"])
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Callable, Sequence
from urllib.parse import urlparse

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

#: ``resolver(host, port)`` -> the addresses (IPv4 or IPv6 literals) of ``host`` right now.
Resolver = Callable[[str, int], Sequence[str]]

DISCOVERY_PREFIX = "dns+"
#: Schemes a discovery URL may wrap, i.e. ``dns+http``, ``dns+https``, ``dns+grpc``.
DISCOVERABLE_SCHEMES = ("http", "https", "grpc")


def dns_resolver(host: str, port: int) -> list[str]:
    """Every address of ``host`` (A and AAAA records), as ``socket.getaddrinfo`` returns them.

    Raises:
        OSError: ``socket.gaierror`` when the name does not resolve.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


_resolver: Resolver = dns_resolver


def set_resolver(resolver: Resolver | None) -> Resolver:
    """Use ``resolver`` for every later lookup (None: back to :func:`dns_resolver`).

    Returns:
        The resolver in use before, so a caller can put it back.
    """
    global _resolver
    previous = _resolver
    _resolver = resolver or dns_resolver
    return previous


def is_discovery_url(url: str) -> bool:
    """Whether ``url`` names a set of replicas to discover (``dns+http://...``)."""
    return url.startswith(DISCOVERY_PREFIX)


def check_discovery_url(url: str) -> None:
    """Validate a ``dns+SCHEME://host:port`` URL without resolving it.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE naming the URL and the expected form.
    """
    parsed = urlparse(url)
    scheme = parsed.scheme[len(DISCOVERY_PREFIX):]
    try:
        port = parsed.port
    except ValueError:
        port = None
    if scheme not in DISCOVERABLE_SCHEMES or not parsed.hostname or port is None:
        raise MlflowException.invalid_parameter_value(
            f"Invalid discovery URL {url!r}: expected dns+http://NAME:PORT (or dns+https, dns+grpc), "
            "where NAME resolves to every replica (a headless Service) and PORT is the port each "
            "replica listens on."
        )


def resolve_urls(urls: Sequence[str], resolver: Resolver | None = None) -> list[str]:
    """The replica URLs of ``urls``: plain URLs as they are, each ``dns+`` URL expanded to one
    URL per address its name has now (duplicates dropped, order kept).

    Args:
        urls: URLs from :func:`~mlflow_triton.config.parse_target_uri`.
        resolver: default: the one :func:`set_resolver` installed (DNS).

    Returns:
        ``["http://10.0.0.7:8000", ...]``.

    Raises:
        MlflowException: TEMPORARILY_UNAVAILABLE when a name does not resolve, or resolves to
            no address (a Service without ready pods): nothing can be rolled out now.
    """
    resolve = resolver or _resolver
    found: list[str] = []
    for url in urls:
        if not is_discovery_url(url):
            found.append(url)
            continue
        check_discovery_url(url)
        parsed = urlparse(url)
        scheme = parsed.scheme[len(DISCOVERY_PREFIX):]
        host, port = str(parsed.hostname), int(parsed.port)  # type: ignore[arg-type]
        try:
            addresses = list(resolve(host, port))
        except OSError as err:  # socket.gaierror: the name does not resolve
            raise MlflowException(
                f"Cannot resolve the Triton replicas of {url!r}: {err}. Check the name (a headless "
                "Service's DNS name) and that this machine can resolve it.",
                error_code=TEMPORARILY_UNAVAILABLE,
            ) from err
        if not addresses:
            raise MlflowException(
                f"{url!r} resolves to no address: no Triton replica is ready behind {host!r}.",
                error_code=TEMPORARILY_UNAVAILABLE,
            )
        found.extend(f"{scheme}://{_host_literal(address)}:{port}" for address in addresses)
    return list(dict.fromkeys(found))


def _host_literal(address: str) -> str:
    """``address`` as it goes in a URL: IPv6 literals in brackets."""
    try:
        return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:  # a resolver may answer host names
        return address
