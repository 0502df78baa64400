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

``k8s://NAMESPACE/SERVICE[/PORT_NAME]`` reads the Service's EndpointSlices from the Kubernetes
API instead (the ready endpoints' addresses and the port named ``PORT_NAME``, default ``http``;
a port named ``grpc`` gives ``grpc://`` URLs). It needs the optional ``kubernetes`` package
(``pip install mlflow-triton[k8s]``) and RBAC ``list`` on ``endpointslices``; the API object is
injectable too (:func:`set_endpoint_slice_api`).
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
K8S_PREFIX = "k8s://"
DEFAULT_K8S_PORT_NAME = "http"
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
    """Whether ``url`` names a set of replicas to discover (``dns+http://...``, ``k8s://...``)."""
    return url.startswith(DISCOVERY_PREFIX) or url.startswith(K8S_PREFIX)


def check_discovery_url(url: str) -> None:
    """Validate a ``dns+SCHEME://host:port`` URL without resolving it.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE naming the URL and the expected form.
    """
    if url.startswith(K8S_PREFIX):
        _k8s_parts(url)
        return
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
    URL per address its name has now, each ``k8s://`` URL to one per ready endpoint of the
    Service's EndpointSlices (duplicates dropped, order kept).

    Args:
        urls: URLs from :func:`~mlflow_triton.settings.deployment.parse_target_uri`.
        resolver: default: the one :func:`set_resolver` installed (DNS).

    Returns:
        ``["http://10.0.0.7:8000", ...]``.

    Raises:
        MlflowException: TEMPORARILY_UNAVAILABLE when a name does not resolve, or resolves to
            no address (a Service without ready pods), or the Kubernetes API fails: nothing
            can be rolled out now. INVALID_PARAMETER_VALUE for a malformed discovery URL, or a
            ``k8s://`` URL without the ``kubernetes`` package.
    """
    resolve = resolver or _resolver
    found: list[str] = []
    for url in urls:
        if not is_discovery_url(url):
            found.append(url)
            continue
        check_discovery_url(url)
        if url.startswith(K8S_PREFIX):
            found.extend(_endpoint_slice_urls(url))
            continue
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


# -- Kubernetes EndpointSlices -------------------------------------------------------------------
_endpoint_slice_api: object | None = None


def set_endpoint_slice_api(api: object | None) -> object | None:
    """Use ``api`` (anything with ``list_namespaced_endpoint_slice(namespace, label_selector=)``,
    like ``kubernetes.client.DiscoveryV1Api``) for ``k8s://`` URLs; None: build one from the
    in-cluster config, else ``~/.kube/config``, when first needed. Returns the previous one."""
    global _endpoint_slice_api
    previous, _endpoint_slice_api = _endpoint_slice_api, api
    return previous


def _k8s_parts(url: str) -> tuple[str, str, str]:
    """``(namespace, service, port name)`` of ``k8s://NAMESPACE/SERVICE[/PORT_NAME]``."""
    parts = url[len(K8S_PREFIX):].strip("/").split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise MlflowException.invalid_parameter_value(
            f"Invalid discovery URL {url!r}: expected k8s://NAMESPACE/SERVICE[/PORT_NAME] (PORT_NAME: "
            f"the Service port to use, default {DEFAULT_K8S_PORT_NAME!r})."
        )
    return parts[0], parts[1], parts[2] if len(parts) == 3 else DEFAULT_K8S_PORT_NAME


def _kubernetes_api() -> object:
    global _endpoint_slice_api
    if _endpoint_slice_api is None:
        try:
            from kubernetes import client, config
        except ImportError as err:
            raise MlflowException.invalid_parameter_value(
                "k8s:// targets need the kubernetes package: pip install 'mlflow-triton[k8s]' "
                "(or use dns+http://SERVICE.NAMESPACE.svc:PORT with a headless Service)."
            ) from err
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        _endpoint_slice_api = client.DiscoveryV1Api()
    return _endpoint_slice_api


def _endpoint_slice_urls(url: str) -> list[str]:
    """One URL per ready endpoint address of the Service's EndpointSlices."""
    namespace, service, port_name = _k8s_parts(url)
    api = _kubernetes_api()
    try:
        slices = api.list_namespaced_endpoint_slice(  # type: ignore[attr-defined]
            namespace, label_selector=f"kubernetes.io/service-name={service}"
        ).items
    except Exception as err:  # kubernetes.client.ApiException, urllib3 errors: API unreachable
        raise MlflowException(
            f"Cannot list the EndpointSlices of {namespace}/{service} for {url!r}: {err}",
            error_code=TEMPORARILY_UNAVAILABLE,
        ) from err
    scheme = "grpc" if port_name == "grpc" else "http"
    urls = []
    for endpoint_slice in slices:
        ports = [p.port for p in endpoint_slice.ports or [] if p.name == port_name or len(endpoint_slice.ports) == 1]
        if not ports:
            continue
        for endpoint in endpoint_slice.endpoints or []:
            ready = getattr(endpoint.conditions, "ready", None)
            if ready is False:  # None means ready (the API's rule)
                continue
            urls.extend(f"{scheme}://{_host_literal(address)}:{ports[0]}" for address in endpoint.addresses or [])
    if not urls:
        raise MlflowException(
            f"{url!r}: the Service {namespace}/{service} has no ready endpoint with a port named "
            f"{port_name!r}.",
            error_code=TEMPORARILY_UNAVAILABLE,
        )
    return urls
