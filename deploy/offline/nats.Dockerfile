# nats-server from Debian's package (2.9) on the debootstrapped base
# (scripts/images.sh), standing in for the public nats image: the same
# entrypoint (compose passes --config), JetStream data in /data (a volume
# owned by the unprivileged user nats), wget for the healthcheck.
#
# The user nats gets the fixed uid and gid 10002 (the package makes it a
# system user with whatever number is free; its postinst refuses one made
# beforehand outside the system range, so it is renumbered afterwards): the
# pki service of docker-compose.yml gives the server's key to that owner,
# readable by it alone, and cannot ask this image which number it has.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nats-server wget \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && (id nats >/dev/null 2>&1 || useradd --system --user-group --home-dir /nonexistent nats) \
 && groupmod --gid 10002 nats && usermod --uid 10002 --gid 10002 nats \
 && install -d -o nats -g nats -m 0750 /data \
 && ln -sf "$(command -v nats-server || echo /usr/sbin/nats-server)" /usr/local/bin/nats-server
USER nats
EXPOSE 4222 6222 8222
ENTRYPOINT ["nats-server"]
