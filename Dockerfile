# syntax=docker/dockerfile:1
# token-proxy container image: build with dev dependencies, run with production ones only.

FROM node:24.21.0-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY src ./src
# `npm ci` runs `prepare`, which compiles src/ to dist/.
RUN npm ci --no-audit --no-fund

FROM node:24.21.0-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY config/token-proxy.example.yaml config/token-proxy.schema.json ./config/
USER node
EXPOSE 8080 9464
# The proxy must listen on all interfaces inside a container; mount the config at /etc/token-proxy.
ENV TOKEN_PROXY_CONFIG=/etc/token-proxy/config.yaml \
    TOKEN_PROXY_LISTEN=0.0.0.0:8080 \
    TOKEN_PROXY_ADMIN_LISTEN=0.0.0.0:9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9464/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# Exec form: SIGTERM reaches node itself, which drains and exits 0. Run with `--init` for zombie reaping.
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["serve"]
