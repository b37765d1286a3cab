# Comparison point for CONNECT + TLS interception: what someone would write with mitmproxy, a
# header-injecting addon. Loaded by run.mjs as `mitmdump -q -s bench/proxies/mitm-addon.py ...`.
# Env: AUTHORIZATION (the static bearer header), UPSTREAM_HOST and UPSTREAM_PORT (where the
# intercepted host really lives: the benchmark's names do not resolve, so every server connection
# is pointed there; TLS to it is verified against ssl_verify_upstream_trusted_ca).
import os

from mitmproxy import http
from mitmproxy.proxy import server_hooks

AUTHORIZATION = os.environ["AUTHORIZATION"]
UPSTREAM = (os.environ["UPSTREAM_HOST"], int(os.environ["UPSTREAM_PORT"]))


def server_connect(data: server_hooks.ServerConnectionHookData) -> None:
    data.server.address = UPSTREAM


def request(flow: http.HTTPFlow) -> None:
    flow.request.headers["authorization"] = AUTHORIZATION
