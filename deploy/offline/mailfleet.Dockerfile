# The Mailfleet image without a registry (scripts/images.sh): the binaries
# built on this machine, copied onto the debootstrapped Debian base. No
# network is used here; ca-certificates and nc come with the base. The
# runtime part is the same as deploy/Dockerfile's: user mailfleet (uid
# 10001), and the blob directory owned by it, so the named volume mounted
# there starts out writable (Docker copies a new volume's owner from the
# image's directory).
ARG BASE
FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/mailfleet --create-home mailfleet \
 && install -d -o mailfleet -g mailfleet -m 0750 /var/lib/mailfleet/blobs
COPY bin/ /usr/local/bin/
USER mailfleet
WORKDIR /var/lib/mailfleet
HEALTHCHECK --interval=10s --timeout=3s --retries=5 CMD ["storage", "health", "--url", "https://127.0.0.1:50051"]
CMD ["storage"]
