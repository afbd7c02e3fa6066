# Two images. The default (last) stage is the service: wxnotify alone, no simulator.
# The WeChat API simulator is a stage of its own, for the demo compose stack only:
#   docker build --target wechat-sim -t wechat-sim .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p wxnotify --bin wxnotify

# Reuses the service's compiled dependencies; built only when the wechat-sim target is asked for.
FROM build AS build-sim
RUN cargo build --release --locked -p wechat-sim --bin wechat-sim

FROM debian:bookworm-slim AS wechat-sim
COPY --from=build-sim /src/target/release/wechat-sim /usr/local/bin/
CMD ["wechat-sim", "--listen", "0.0.0.0:8089"]

FROM debian:bookworm-slim AS wxnotify
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/wxnotify /usr/local/bin/
COPY templates.toml /app/templates.toml
COPY examples /app/examples
WORKDIR /app
CMD ["wxnotify", "worker"]
