# One image holds all three binaries: api, workers, scheduler.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p groundcrew-api -p workers -p scheduler \
 && mkdir -p /out \
 && cp target/release/api target/release/workers target/release/scheduler /out/

FROM debian:bookworm-slim
# ffmpeg for the media family; curl for container healthchecks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates ffmpeg curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/groundcrew groundcrew
COPY --from=build /out/ /usr/local/bin/
USER groundcrew
WORKDIR /var/lib/groundcrew
ENV GROUNDCREW_DATA_DIR=/var/lib/groundcrew/data \
    GROUNDCREW_LOG_FORMAT=json
CMD ["api", "serve"]
