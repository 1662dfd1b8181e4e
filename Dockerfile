# tunnat image for docker-compose.yml (the three-network lab with containers).
# The image installs tunnat from its own `npm pack` tarball, the way users install it, so the
# addon is compiled by node-gyp exactly as on a fresh machine.
#   docker build -t tunnat .

# The pack stage only compiles the TypeScript: no addon build (--ignore-scripts), so no toolchain.
FROM node:24-bookworm-slim AS pack
WORKDIR /src
COPY . .
RUN npm ci --ignore-scripts --no-audit --no-fund && npm pack --pack-destination /tmp \
  && mv /tmp/tunnat-*.tgz /tmp/tunnat.tgz

FROM node:24-bookworm-slim
# iproute2 for the plumbing, nftables for the kernel filter, ping/curl/iperf3/socat/tcpdump to
# try the NAT, python3 + make + g++ for the addon's build during `npm install`.
RUN apt-get update -q && apt-get install -y -q --no-install-recommends \
    iproute2 nftables iputils-ping curl iperf3 socat tcpdump procps python3 make g++ \
    ca-certificates \
  && rm -rf /var/lib/apt/lists/*
COPY --from=pack /tmp/tunnat.tgz /tmp/tunnat.tgz
RUN npm install --global --no-audit --no-fund /tmp/tunnat.tgz && rm /tmp/tunnat.tgz \
  && tunnat --version
COPY deploy/compose-nat.sh /usr/local/bin/tunnat-compose-nat
CMD ["tunnat", "--help"]
