# HAProxy from Debian's package (2.6) on the debootstrapped base
# (scripts/images.sh), standing in for the public haproxy image: the
# configuration read from /usr/local/etc/haproxy/haproxy.cfg, run as the
# unprivileged user haproxy in the foreground (-db) with a master process
# (-W), bash for the healthcheck (it comes with the base).
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /usr/local/etc/haproxy
USER haproxy
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
