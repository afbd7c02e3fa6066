# Builds both binaries (wxnotify, wechat-sim) into one slim image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/wxnotify /src/target/release/wechat-sim /usr/local/bin/
COPY templates.toml /app/templates.toml
COPY examples /app/examples
WORKDIR /app
CMD ["wxnotify", "worker"]
