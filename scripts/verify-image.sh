#!/usr/bin/env bash
# Proves what the container image holds without a Docker engine (`npm run verify:image`).
#
# It replays the Dockerfile, as parsed by scripts/lib/dockerfile.mjs, not as written down here:
#   1. the build context: a clean `git clone` of this repository's HEAD (or VERIFY_IMAGE_CONTEXT=DIR),
#      less what .dockerignore excludes; every COPY source from it is checked before any step runs;
#   2. every stage in its own directory (an image path /app is STAGE/app): WORKDIR, ENV, COPY
#      (--from=STAGE copies out of that stage's directory) and RUN (`sh -c`, with only the stage's
#      ENV, in its WORKDIR), on the Node.js version of the final stage's `FROM node:X.Y.Z` image,
#      which the npm registry ships as the `node` package (VERIFY_NODE=host uses this machine's);
#   3. then, on the final stage: no devDependency is installed, every package the shipped code
#      imports (statically or through import()) resolves, `import('./dist/index.js')` and
#      `ENTRYPOINT --help` work, and the ENTRYPOINT+CMD, as the image's USER and with only the
#      image's ENV (plus the listen addresses and a secret), serves a request through a partner on
#      loopback with a token from a token server on loopback; /healthz, /readyz, /metrics and the
#      HEALTHCHECK command answer, and SIGTERM ends it with exit code 0. Last, `ENTRYPOINT demo`,
#      the same way, serves a request with a token its own token server signed and its partner
#      verified, and exits 0 on SIGTERM.
# Any failure prints "verify-image: FAIL: ..." and exits non-zero.
#
# Environment: DOCKERFILE=FILE (default: the checkout's Dockerfile), VERIFY_IMAGE_CONTEXT=DIR,
# VERIFY_NODE=host, KEEP=1 (keep the temporary directory), VERIFY_IMAGE_NPM_CACHE=DIR (default: a
# fresh, empty npm cache, as in a Docker build).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HELPER="$HERE/lib/dockerfile.mjs"
HOST_NODE=$(command -v node)
BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
START=$SECONDS

say() { printf 'verify-image: %s\n' "$*" >&2; }
die() {
  printf 'verify-image: FAIL: %s\n' "$*" >&2
  exit 1
}
helper() { "$HOST_NODE" "$HELPER" "$@"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/verify-image.XXXXXX")
chmod 755 "$WORK" # the image's non-root USER must reach the runtime stage below it
PIDS=()
cleanup() {
  local status=$?
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ "${KEEP:-}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# 1. Build context and Dockerfile
# ---------------------------------------------------------------------------------------------
if [ -n "${VERIFY_IMAGE_CONTEXT:-}" ]; then
  SOURCE=$(cd "$VERIFY_IMAGE_CONTEXT" && pwd)
  SOURCE_DESC="directory $SOURCE"
else
  git clone -q "$REPO" "$WORK/checkout" || die "cannot clone $REPO (not a git checkout? set VERIFY_IMAGE_CONTEXT=DIR)"
  SOURCE="$WORK/checkout"
  SOURCE_DESC="clean checkout of $(git -C "$SOURCE" rev-parse --short HEAD)"
fi
DOCKERFILE=${DOCKERFILE:-$SOURCE/Dockerfile}
[ -f "$DOCKERFILE" ] || die "no Dockerfile at $DOCKERFILE"
DOCKERFILE="$(cd "$(dirname "$DOCKERFILE")" && pwd)/$(basename "$DOCKERFILE")"
DF_NAME=$(basename "$DOCKERFILE")
IGNORE_FILE="$DOCKERFILE.dockerignore"
[ -f "$IGNORE_FILE" ] || IGNORE_FILE="$SOURCE/.dockerignore"
say "context: $SOURCE_DESC, less $( [ -f "$IGNORE_FILE" ] && echo "${IGNORE_FILE#"$SOURCE"/}" || echo 'no .dockerignore'); Dockerfile: $DOCKERFILE"

helper context "$SOURCE" "$WORK/context" "$IGNORE_FILE"
helper plan "$DOCKERFILE" > "$WORK/plan.sh" || exit 1
helper preflight "$DOCKERFILE" "$WORK/context" || exit 1

# ---------------------------------------------------------------------------------------------
# 2. Node.js: the final stage's image version, from the npm registry's `node` package
# ---------------------------------------------------------------------------------------------
NODE_VERSION=$(sed -n "s/^'df_stage' '[0-9]*' '[^']*' 'node:\([0-9][0-9.]*\)[-'].*/\1/p" "$WORK/plan.sh" | tail -n 1)
mkdir -p "$WORK/node/bin"
if [ "${VERIFY_NODE:-image}" = host ] || [ -z "$NODE_VERSION" ]; then
  [ -n "$NODE_VERSION" ] || say "the final stage is not FROM node:X.Y.Z: using this machine's Node.js"
  ln -s "$HOST_NODE" "$WORK/node/bin/node"
else
  node_bin=$(npx -y -p "node@$NODE_VERSION" -- node -e 'process.stdout.write(process.execPath)' 2>/dev/null) ||
    die "cannot get Node.js $NODE_VERSION (npx -p node@$NODE_VERSION); VERIFY_NODE=host uses this machine's"
  # A copy: the non-root USER cannot reach npm's cache under root's home.
  cp "$node_bin" "$WORK/node/bin/node"
fi
NODE_USED=$("$WORK/node/bin/node" --version)
say "Node.js $NODE_USED"

NPM_CACHE=${VERIFY_IMAGE_NPM_CACHE:-$WORK/npm-cache}
# This machine's npm settings (registry, CA file) still apply; its cache and home do not.
npm_files=$(npm config get userconfig globalconfig 2>/dev/null || true)
NPM_USERCONFIG=$(sed -n 's/^userconfig=//p' <<<"$npm_files")
NPM_GLOBALCONFIG=$(sed -n 's/^globalconfig=//p' <<<"$npm_files")
PASS_ENV=("npm_config_cache=$NPM_CACHE" npm_config_update_notifier=false)
[ -z "$NPM_USERCONFIG" ] || PASS_ENV+=("npm_config_userconfig=$NPM_USERCONFIG")
[ -z "$NPM_GLOBALCONFIG" ] || PASS_ENV+=("npm_config_globalconfig=$NPM_GLOBALCONFIG")
for name in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY NODE_EXTRA_CA_CERTS SSL_CERT_FILE; do
  if [ -n "${!name:-}" ]; then PASS_ENV+=("$name=${!name}"); fi
done

# ---------------------------------------------------------------------------------------------
# 3. The plan's steps (generated from the Dockerfile; see `node scripts/lib/dockerfile.mjs plan`)
# ---------------------------------------------------------------------------------------------
STAGE_ROOT=''
STAGE_NAME=''
STAGE_WORKDIR=/
STAGE_ENV=()

# AS_USER: setpriv arguments that run a command as USER (uid[:gid]); empty for root, or when this
# script does not run as root and so cannot switch.
AS_USER=()
as_user() {
  local user=$1
  AS_USER=()
  case "$user" in '' | root | 0 | 0:*) return 0 ;; esac
  [[ "$user" =~ ^[0-9]+(:[0-9]+)?$ ]] || die "USER $user: use a numeric uid[:gid] (Kubernetes' runAsNonRoot cannot verify a name)"
  if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
    local uid=${user%%:*} gid=${user#*:}
    AS_USER=(setpriv "--reuid=$uid" "--regid=$gid" --clear-groups --)
  fi
}

df_stage() {
  local index=$1 name=$2 base=$3 parent=$4
  STAGE_NAME=$name
  STAGE_ROOT="$WORK/stages/$name"
  if [ -n "$parent" ]; then cp -a "$WORK/stages/$parent" "$STAGE_ROOT"; else mkdir -p "$STAGE_ROOT"; fi
  STAGE_WORKDIR=/
  STAGE_ENV=()
  say "stage $index ($name) FROM $base${parent:+ (a copy of that stage)}"
}

df_workdir() {
  STAGE_WORKDIR=$2
  mkdir -p "$STAGE_ROOT$STAGE_WORKDIR"
}

df_env() {
  shift
  STAGE_ENV=("$@")
}

df_copy() {
  local line=$1 from=$2 chown=$3 chmod=$4 dest=$5
  shift 5
  local root label
  if [ -z "$from" ]; then
    root="$WORK/context"
    label="is not in the build context (missing from the checkout, or excluded by .dockerignore)"
  else
    root="$WORK/stages/$from"
    label="does not exist in stage $from"
  fi
  say "$DF_NAME:$line: COPY ${from:+--from=$from }$* $dest"
  helper copy "$line" "$DF_NAME" "$root" "$label" "$STAGE_ROOT" "$chown" "$chmod" "$dest" "$@"
}

df_run() {
  local line=$1 user=$2 form=$3
  shift 3
  as_user "$user"
  local -a user_cmd=("${AS_USER[@]}")
  say "$DF_NAME:$line: RUN $*"
  local -a cmd=("$@")
  [ "$form" = exec ] || cmd=(/bin/sh -c "$1")
  mkdir -p "$STAGE_ROOT/root"
  (
    cd "$STAGE_ROOT$STAGE_WORKDIR"
    env -i "PATH=$WORK/node/bin:$BASE_PATH" "HOME=$STAGE_ROOT/root" "${PASS_ENV[@]}" "${STAGE_ENV[@]}" "${user_cmd[@]}" "${cmd[@]}"
  ) > "$WORK/run-$STAGE_NAME-$line.log" 2>&1 || {
    tail -n 30 "$WORK/run-$STAGE_NAME-$line.log" >&2
    die "$DF_NAME:$line: RUN failed in stage $STAGE_NAME: $*"
  }
}

FINAL_WORKDIR=/
FINAL_ENV=()
FINAL_USER=''
FINAL_EXPOSE=()
ENTRYPOINT=()
CMD=()
HEALTHCHECK=()
df_final_workdir() { FINAL_WORKDIR=$1; }
df_final_env() { FINAL_ENV=("$@"); }
df_final_user() { FINAL_USER=$1; }
df_final_expose() { FINAL_EXPOSE=("$@"); }
exec_form() {
  [ "$1" = exec ] || die "$2 is in shell form: use the exec form ([\"node\", ...]) so that SIGTERM reaches node, not a shell"
}
df_final_entrypoint() { [ "$1" = none ] || { exec_form "$1" ENTRYPOINT; shift; ENTRYPOINT=("$@"); }; }
df_final_cmd() { [ "$1" = none ] || { exec_form "$1" CMD; shift; CMD=("$@"); }; }
df_final_healthcheck() { [ "$1" = none ] || { exec_form "$1" HEALTHCHECK; shift; HEALTHCHECK=("$@"); }; }

# shellcheck source=/dev/null
source "$WORK/plan.sh"
say "replayed $DF_NAME in $((SECONDS - START)) s"

# ---------------------------------------------------------------------------------------------
# 4. Checks of the final stage
# ---------------------------------------------------------------------------------------------
RT="$STAGE_ROOT"
APP="$RT$FINAL_WORKDIR"
[ "${#ENTRYPOINT[@]}" -gt 0 ] || die "the final stage has no ENTRYPOINT"
[ "${#HEALTHCHECK[@]}" -gt 0 ] || die "the final stage has no HEALTHCHECK"
[ "${#FINAL_EXPOSE[@]}" -gt 0 ] || die "the final stage EXPOSEs no port"
case "$FINAL_USER" in '' | root | 0 | 0:*) die "the image runs as root: set a non-root USER" ;; esac
as_user "$FINAL_USER"
RUN_AS=("${AS_USER[@]}")

# No devDependency in the runtime stage.
[ -f "$APP/package.json" ] || die "no package.json in $FINAL_WORKDIR of the final stage"
dev_installed=$("$HOST_NODE" -e '
  const { existsSync, readFileSync } = require("node:fs");
  const app = process.argv[1];
  const dev = Object.keys(JSON.parse(readFileSync(app + "/package.json", "utf8")).devDependencies ?? {});
  console.log(dev.filter((d) => existsSync(app + "/node_modules/" + d)).join(" "));
' "$APP")
[ -z "$dev_installed" ] || die "devDependencies installed in the runtime stage: $dev_installed"
for pkg in vitest oauth2-mock-server typescript; do
  [ ! -e "$APP/node_modules/$pkg" ] || die "node_modules/$pkg is in the runtime stage"
done

# Every package the shipped code imports, statically or through import(), resolves from where it
# is: a guarded import() of a package the image lacks still breaks the command that reaches it.
missing=$(helper imports "$APP")
[ -z "$missing" ] || die "the shipped code imports packages that are not installed in the runtime stage (a devDependency?): $(tr '\n' ' ' <<<"$missing")"

unreadable=$(find "$APP" ! -perm -o=r -print -quit)
[ -z "$unreadable" ] || die "not readable by the non-root USER: ${unreadable#"$RT"}"

# The image's ENV; an absolute path (the config file) points into the runtime stage.
RUN_ENV=("PATH=$WORK/node/bin:$BASE_PATH" "HOME=$RT/home/node")
CONFIG_PATH=''
for kv in "${FINAL_ENV[@]}"; do
  key=${kv%%=*} value=${kv#*=}
  case "$key" in
    PATH) continue ;;
    TOKEN_PROXY_LISTEN | TOKEN_PROXY_ADMIN_LISTEN) continue ;; # replaced by loopback ports below
  esac
  if [[ "$value" == /* ]]; then value="$RT$value"; fi
  [ "$key" != TOKEN_PROXY_CONFIG ] || CONFIG_PATH=$value
  RUN_ENV+=("$key=$value")
done
[ -n "$CONFIG_PATH" ] || die "the image sets no ENV TOKEN_PROXY_CONFIG: where is the config file to be mounted?"

in_image_run() {
  local -a vars=()
  while [ $# -gt 0 ] && [[ "$1" == *=* ]]; do vars+=("$1"); shift; done
  (cd "$APP" && env -i "${RUN_ENV[@]}" "${vars[@]}" "${RUN_AS[@]}" "$@")
}

in_image_run node -e "import('./dist/index.js').then(() => process.exit(0), (e) => { console.error(e.message); process.exit(1); })" \
  > "$WORK/import.log" 2>&1 || { cat "$WORK/import.log" >&2; die "import('./dist/index.js') fails in the runtime stage"; }
in_image_run "${ENTRYPOINT[@]}" --help > "$WORK/help.log" 2>&1 ||
  { cat "$WORK/help.log" >&2; die "${ENTRYPOINT[*]} --help fails in the runtime stage"; }
grep -q serve "$WORK/help.log" || die "${ENTRYPOINT[*]} --help does not list the serve command"

# A token server and a partner API on loopback, with this machine's Node.js.
SECRET="check-$RANDOM$RANDOM"
TOKEN_REQUESTS="$WORK/token-requests"
SECRET="$SECRET" "$HOST_NODE" -e '
  const http = require("node:http"), fs = require("node:fs");
  const [portFile, countFile] = process.argv.slice(1);
  const expected = "Basic " + Buffer.from("check-client:" + process.env.SECRET).toString("base64");
  let count = 0;
  const server = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      if (req.method !== "POST" || req.headers.authorization !== expected) {
        res.writeHead(401, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: "invalid_client" }));
        return;
      }
      fs.writeFileSync(countFile, String(++count));
      res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
      res.end(JSON.stringify({ access_token: "x.y.z", expires_in: 60, token_type: "Bearer" }));
    });
  });
  server.listen(0, "127.0.0.1", () => fs.writeFileSync(portFile, String(server.address().port)));
' "$WORK/token.port" "$TOKEN_REQUESTS" > "$WORK/token-server.log" 2>&1 &
PIDS+=($!)
"$HOST_NODE" -e '
  const http = require("node:http"), fs = require("node:fs");
  const server = http.createServer((req, res) => {
    req.resume();
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ method: req.method, url: req.url, authorization: req.headers.authorization ?? null }));
  });
  server.listen(0, "127.0.0.1", () => fs.writeFileSync(process.argv[1], String(server.address().port)));
' "$WORK/partner.port" > "$WORK/partner.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do [ -s "$WORK/token.port" ] && [ -s "$WORK/partner.port" ] && break; sleep 0.1; done
if ! { [ -s "$WORK/token.port" ] && [ -s "$WORK/partner.port" ]; }; then die "the loopback token server or partner did not start"; fi
TOKEN_PORT=$(cat "$WORK/token.port")
PARTNER_PORT=$(cat "$WORK/partner.port")

# Two free loopback ports for the listeners (known in advance, so the HEALTHCHECK can find the admin one).
read -r PROXY_PORT ADMIN_PORT < <("$HOST_NODE" -e '
  const net = require("node:net");
  const a = net.createServer().listen(0, "127.0.0.1"), b = net.createServer().listen(0, "127.0.0.1");
  Promise.all([a, b].map((s) => new Promise((r) => s.on("listening", r)))).then(() => {
    console.log(a.address().port, b.address().port); a.close(); b.close();
  });')

# The config, "mounted" where the image's TOKEN_PROXY_CONFIG says; the secret comes from the environment.
mkdir -p "$(dirname "$CONFIG_PATH")"
cat > "$CONFIG_PATH" <<EOF
logLevel: info
shutdownTimeoutSeconds: 5
upstreams:
  - name: check
    target: http://127.0.0.1:$PARTNER_PORT
    pathPrefix: /check
    auth:
      type: client_credentials
      tokenUrl: http://127.0.0.1:$TOKEN_PORT/token
      clientId: check-client
      clientSecret: \${CHECK_CLIENT_SECRET}
inbound:
  allowCidrs: [127.0.0.0/8]
EOF
chmod 644 "$CONFIG_PATH"
LISTEN_ENV=("TOKEN_PROXY_LISTEN=127.0.0.1:$PROXY_PORT" "TOKEN_PROXY_ADMIN_LISTEN=127.0.0.1:$ADMIN_PORT")

say "starting: ${ENTRYPOINT[*]} ${CMD[*]}$( [ ${#RUN_AS[@]} -gt 0 ] && echo " as USER $FINAL_USER" || echo " (not as USER $FINAL_USER: this script is not root)")"
(cd "$APP" && exec env -i "${RUN_ENV[@]}" "${LISTEN_ENV[@]}" "CHECK_CLIENT_SECRET=$SECRET" "${RUN_AS[@]}" "${ENTRYPOINT[@]}" "${CMD[@]}") > "$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
proxy_failed() {
  tail -n 20 "$WORK/proxy.log" >&2
  die "$*"
}
for _ in $(seq 100); do
  kill -0 "$PROXY_PID" 2>/dev/null || proxy_failed "the proxy exited during start-up"
  curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN_PORT/healthz" 2>/dev/null && break
  sleep 0.2
done
code=$(curl -sS -o "$WORK/healthz" -w '%{http_code}' --max-time 5 "http://127.0.0.1:$ADMIN_PORT/healthz") || true
[ "$code" = 200 ] || proxy_failed "GET /healthz answered ${code:-nothing}, not 200"

code=$(curl -sS -o "$WORK/answer" -w '%{http_code}' --max-time 10 "http://127.0.0.1:$PROXY_PORT/check/hello?x=1") || true
[ "$code" = 200 ] || proxy_failed "GET /check/hello through the proxy answered ${code:-nothing}: $(cat "$WORK/answer" 2>/dev/null)"
seen=$("$HOST_NODE" -e 'const a = JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8")); console.log(a.authorization + " " + a.url)' "$WORK/answer")
[ "$seen" = "Bearer x.y.z /hello?x=1" ] || proxy_failed "the partner saw \"$seen\", not \"Bearer x.y.z /hello?x=1\""
[ "$(cat "$TOKEN_REQUESTS" 2>/dev/null)" = 1 ] || proxy_failed "expected exactly one token request, got $(cat "$TOKEN_REQUESTS" 2>/dev/null || echo 0)"

code=$(curl -sS -o "$WORK/readyz" -w '%{http_code}' --max-time 5 "http://127.0.0.1:$ADMIN_PORT/readyz") || true
[ "$code" = 200 ] || proxy_failed "GET /readyz answered ${code:-nothing}: $(cat "$WORK/readyz" 2>/dev/null)"
curl -sS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -q '^token_proxy_requests_total{.*upstream="check"' ||
  proxy_failed "/metrics has no token_proxy_requests_total for the check upstream"
in_image_run "${LISTEN_ENV[@]}" "${HEALTHCHECK[@]}" > "$WORK/healthcheck.log" 2>&1 ||
  proxy_failed "the HEALTHCHECK command fails against a healthy proxy: $(cat "$WORK/healthcheck.log")"

# SIGTERM (what `docker stop` and Kubernetes send to PID 1): drain and exit 0.
kill -TERM "$PROXY_PID"
status=0
for _ in $(seq 150); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.2; done
kill -0 "$PROXY_PID" 2>/dev/null && proxy_failed "the proxy did not exit within 30 s of SIGTERM"
wait "$PROXY_PID" || status=$?
[ "$status" = 0 ] || proxy_failed "the proxy exited with status $status after SIGTERM, not 0"
if in_image_run "${LISTEN_ENV[@]}" "${HEALTHCHECK[@]}" > /dev/null 2>&1; then
  die "the HEALTHCHECK command succeeds with the proxy stopped: it checks nothing"
fi
grep -q '"event":"listening"' "$WORK/proxy.log" || proxy_failed "the proxy never logged its listening event"
if grep -q "$SECRET" "$WORK/proxy.log"; then die "the client secret appears in the proxy's log"; fi

# `ENTRYPOINT demo` (`docker run IMAGE demo`; `npm start` runs the same command): from the production
# dependencies alone, its token server signs a JWT, its partner verifies it, the proxy injects it.
say "starting: ${ENTRYPOINT[*]} demo"
(cd "$APP" && exec env -i "${RUN_ENV[@]}" "${LISTEN_ENV[@]}" "${RUN_AS[@]}" "${ENTRYPOINT[@]}" demo) > "$WORK/demo.log" 2>&1 &
DEMO_PID=$!
PIDS+=("$DEMO_PID")
demo_failed() {
  tail -n 20 "$WORK/demo.log" >&2
  die "$*"
}
for _ in $(seq 100); do
  kill -0 "$DEMO_PID" 2>/dev/null || demo_failed "${ENTRYPOINT[*]} demo exited during start-up"
  grep -q '/partner/hello' "$WORK/demo.log" && break
  sleep 0.2
done
code=$(curl -sS -o "$WORK/demo-answer" -w '%{http_code}' --max-time 10 "http://127.0.0.1:$PROXY_PORT/partner/hello") || true
[ "$code" = 200 ] || demo_failed "GET /partner/hello through the demo answered ${code:-nothing}: $(cat "$WORK/demo-answer" 2>/dev/null)"
client=$("$HOST_NODE" -e 'const a = JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8")); console.log(a.ok + " " + a.client + " " + a.scope)' "$WORK/demo-answer")
[ "$client" = "true demo-client demo.read" ] || demo_failed "the demo partner answered \"$client\", not a verified token's \"true demo-client demo.read\""
kill -TERM "$DEMO_PID"
status=0
for _ in $(seq 150); do kill -0 "$DEMO_PID" 2>/dev/null || break; sleep 0.2; done
kill -0 "$DEMO_PID" 2>/dev/null && demo_failed "the demo did not exit within 30 s of SIGTERM"
wait "$DEMO_PID" || status=$?
[ "$status" = 0 ] || demo_failed "the demo exited with status $status after SIGTERM, not 0"

say "OK in $((SECONDS - START)) s: $DF_NAME's final stage (Node.js $NODE_USED, USER $FINAL_USER, $(du -sh "$APP/node_modules" | cut -f1) of production node_modules, EXPOSE ${FINAL_EXPOSE[*]}) served a request with an injected token; /healthz, /readyz, /metrics, HEALTHCHECK and SIGTERM behaved; \`demo\` served a verified token"
