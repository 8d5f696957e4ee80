#!/usr/bin/env bash
# Build (and optionally push) the relevance image from infra/docker/Dockerfile, with the repository root as context.
#
#   IMAGE=registry.example.com/relevance:0.1.0 infra/docker/build.sh
#   docker push registry.example.com/relevance:0.1.0          # or PUSH=1 in the line above
#
# Environment:
#   IMAGE            image name:tag to build                      (default relevance:<version in pyproject.toml>)
#   BASE_IMAGE       FROM image, Python 3.11 with venv            (default python:3.11-slim-bookworm;
#                    registry-free: relevance-base:bookworm from infra/docker/build-base.sh)
#   TORCH_VERSION    pinned torch                                 (default 2.13.0, as in pyproject.toml)
#   TORCH_INDEX_URL  CPU torch index                              (default https://download.pytorch.org/whl/cpu;
#                    set it empty to install torch only from local wheels)
#   WHEELS_DIR       a folder of local wheels (e.g. /opt/wheels with the torch CPU wheel). The build context is then
#                    staged in a temporary folder with those wheels in infra/docker/wheels/; TORCH_INDEX_URL defaults
#                    to empty. Without it, only wheels already in infra/docker/wheels/ are used.
#   CA_CERTS         space-separated PEM files trusted for HTTPS during the build (a TLS-intercepting proxy, a
#                    private mirror); staged like WHEELS_DIR into infra/docker/certs/. Build stage only.
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST   passed on as build args when set (a PyPI mirror)
#   DOCKER_BUILD_NETWORK   e.g. host, where the daemon has no bridge network (dockerd --bridge=none)
#   PUSH=1           docker push "$IMAGE" after the build
# Extra arguments go to `docker build` as they are (e.g. --no-cache, --platform linux/amd64).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/pyproject.toml" | head -n1)
IMAGE=${IMAGE:-relevance:${version:-dev}}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [[ -n ${WHEELS_DIR:-} && -z ${TORCH_INDEX_URL+set} ]]; then TORCH_INDEX_URL=""; fi
TORCH_INDEX_URL=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
vcs_ref=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)

for d in relevance components pipelines feature_repo configs; do
    [[ -d $repo/$d ]] || { echo "build.sh: $repo/$d is missing; the Dockerfile copies it" >&2; exit 1; }
done

# With WHEELS_DIR or CA_CERTS, build from a staged copy of the context, so the checkout is left as it is.
context=$repo
if [[ -n ${WHEELS_DIR:-} || -n ${CA_CERTS:-} ]]; then
    context=$(mktemp -d "${TMPDIR:-/tmp}/relevance-context.XXXXXX")
    trap 'rm -rf "$context"' EXIT
    for p in .dockerignore pyproject.toml README.md relevance components pipelines feature_repo configs; do
        cp -a "$repo/$p" "$context/"
    done
    mkdir -p "$context/infra/docker"
    cp -a "$here/Dockerfile" "$here/wheels" "$here/certs" "$context/infra/docker/"
    if [[ -n ${WHEELS_DIR:-} ]]; then
        compgen -G "$WHEELS_DIR/*.whl" >/dev/null || { echo "build.sh: no *.whl in WHEELS_DIR=$WHEELS_DIR" >&2; exit 1; }
        for w in "$WHEELS_DIR"/*.whl; do   # hard links where possible: no copy of a 200 MB wheel
            ln -f "$w" "$context/infra/docker/wheels/" 2>/dev/null || cp "$w" "$context/infra/docker/wheels/"
        done
    fi
    for c in ${CA_CERTS:-}; do
        cp "$c" "$context/infra/docker/certs/$(basename "${c%.*}").crt"
    done
fi

args=(-f "$context/infra/docker/Dockerfile" -t "$IMAGE"
      --build-arg "BASE_IMAGE=$BASE_IMAGE"
      --build-arg "TORCH_VERSION=$TORCH_VERSION"
      --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"
      --build-arg "IMAGE_VERSION=${version:-dev}"
      --build-arg "VCS_REF=$vcs_ref")
for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST KUBECTL_IMAGE; do
    if [[ -n ${!v:-} ]]; then args+=(--build-arg "$v=${!v}"); fi
done
if [[ -n ${DOCKER_BUILD_NETWORK:-} ]]; then args+=(--network "$DOCKER_BUILD_NETWORK"); fi

echo ">> building $IMAGE FROM $BASE_IMAGE (torch $TORCH_VERSION from ${TORCH_INDEX_URL:-local wheels})"
start=$SECONDS
docker build "${args[@]}" "$@" "$context"
echo ">> built $IMAGE in $((SECONDS - start)) s"
docker image ls "$IMAGE"

# smoke test, offline: the CLI and the platform imports
docker run --rm --network none "$IMAGE" python3 -c \
    'import kfp, feast, great_expectations, mlflow, torch, relevance; print("ok: torch", torch.__version__, "kfp", kfp.__version__)'

if [[ ${PUSH:-0} == 1 ]]; then
    echo ">> pushing $IMAGE"
    docker push "$IMAGE"
fi
