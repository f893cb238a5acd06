# syntax=docker/dockerfile:1.7
# gpulet's image: one static-ish binary on a glibc base (go-nvml dlopens the
# host's libnvidia-ml.so.1 at run time, so the binary is built with cgo and
# needs glibc). Build: docker build -t gpulet:dev --build-arg VERSION=$(git describe --always) .

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS=linux
ARG TARGETARCH=amd64
WORKDIR /src
# cgo cross-compilers, only used when the target differs from the builder.
RUN if [ "$TARGETARCH" = "arm64" ] && [ "$(dpkg --print-architecture)" != "arm64" ]; then \
      apt-get update && apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross && rm -rf /var/lib/apt/lists/*; \
    fi
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY internal/ internal/
ARG VERSION=dev
ARG COMMIT=unknown
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    set -eu; \
    if [ "$TARGETARCH" = "arm64" ] && [ "$(dpkg --print-architecture)" != "arm64" ]; then export CC=aarch64-linux-gnu-gcc; fi; \
    CGO_ENABLED=1 CGO_CFLAGS=-Wno-deprecated-declarations GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/gpulet ./cmd/gpulet

# distroless/base has glibc and CA certificates and nothing else. The image
# defaults to a non-root user; the DaemonSet runs it as root only because
# the kubelet's socket directories and /var/run/cdi are root-owned host paths
# (see deployments/helm/gpulet/values.yaml).
FROM gcr.io/distroless/base-debian12:nonroot
COPY --from=build /out/gpulet /usr/bin/gpulet
COPY LICENSE /licenses/LICENSE
USER 65532:65532
ENTRYPOINT ["/usr/bin/gpulet"]
CMD ["serve"]
