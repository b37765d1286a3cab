# syntax=docker/dockerfile:1
# token-proxy container image: compiled with the dev dependencies, run with the production ones only.
#
#   docker build -t token-proxy .
#   docker run --init --stop-timeout 30 -p 8080:8080 -p 9464:9464 \
#     -v "$PWD/config.yaml:/etc/token-proxy/config.yaml:ro" \
#     -e PARTNER_CLIENT_SECRET -v "$PWD/secrets:/run/secrets:ro" token-proxy
#
# Config: a file mounted at /etc/token-proxy/config.yaml (TOKEN_PROXY_CONFIG names another). Secrets
# never go into the image: the config reads them from the environment (`clientSecret:
# ${PARTNER_CLIENT_SECRET}`) or from mounted files (`clientSecretFile: /run/secrets/partner`).
# scripts/verify-image.sh replays this file without a Docker engine (`npm run verify:image`): keep
# RUN steps free of absolute paths and OS packages, or extend that script.

# Official Node.js image, the active LTS line (24), pinned to a release. For byte-for-byte
# reproducible builds also pin the digest: node:24.21.0-bookworm-slim@sha256:<digest>.
FROM node:24.21.0-bookworm-slim AS build
WORKDIR /app
# Dependencies first: this layer is rebuilt only when the lock file changes.
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

FROM node:24.21.0-bookworm-slim AS runtime
LABEL org.opencontainers.image.title="token-proxy" \
      org.opencontainers.image.description="An HTTP proxy that injects cached OAuth2 bearer tokens into calls to partner APIs" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV NODE_ENV=production
WORKDIR /app
# Production dependencies only (no install scripts: none of them needs one). The files stay owned
# by root, so the non-root process below cannot modify its own code.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY config/token-proxy.example.yaml config/token-proxy.schema.json ./config/

# The official image's `node` user, by number so that Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
# Proxy listener and admin listener (/metrics, /healthz, /readyz).
EXPOSE 8080 9464
# Inside a container the listeners must bind all interfaces; these win over the file's `listen`
# and `admin.listen` (override with -e). A non-loopback `listen` requires `inbound.allowCidrs` or
# `inbound.proxyAuth` in the config: the proxy refuses to start as an open proxy.
ENV TOKEN_PROXY_CONFIG=/etc/token-proxy/config.yaml \
    TOKEN_PROXY_LISTEN=0.0.0.0:8080 \
    TOKEN_PROXY_ADMIN_LISTEN=0.0.0.0:9464

# Liveness, against the admin listener's /healthz on the port TOKEN_PROXY_ADMIN_LISTEN names
# (the slim image has no curl; Node's fetch does it). Readiness (/readyz) is for orchestrators.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "const a=process.env.TOKEN_PROXY_ADMIN_LISTEN||'';const p=a.slice(a.lastIndexOf(':')+1)||'9464';fetch('http://127.0.0.1:'+p+'/healthz',{signal:AbortSignal.timeout(2500)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]

# Exec form: node is PID 1 and receives SIGTERM itself: it stops accepting, lets in-flight requests
# finish (shutdownTimeoutSeconds, default 25 s) and exits 0, so give the runtime more time than
# that (`docker run --stop-timeout 30`, Kubernetes terminationGracePeriodSeconds). The proxy
# starts no child processes, so it needs no init to reap zombies; `docker run --init` (tini)
# is harmless and recommended where you exec extra processes into the container.
STOPSIGNAL SIGTERM
# --initial-old-space-size=64 (MB) keeps V8's old-generation limit from shrinking below 64 MB
# after an idle spell. V8 counts ArrayBuffers allocated since the last mark-compact against that
# limit, so with a small limit request bodies (socket chunks, replay buffers) set off a full GC
# every few requests: 1 MiB POSTs after an idle spell ran at 260-430 req/s without it and at
# 670-1,250 with it (`npm run bench:post-after-idle`; BENCHMARKS.md, "What was tried"). It is a
# floor for the limit, not memory taken up front.
ENTRYPOINT ["node", "--initial-old-space-size=64", "dist/cli.js"]
CMD ["serve"]
