# PostgreSQL 15 from Debian's packages on the debootstrapped base
# (scripts/images.sh), standing in for the public postgres image: the same
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB variables, the data in
# /var/lib/postgresql/data (a volume), pg_isready for the healthcheck.
ARG BASE
FROM ${BASE}
# No "main" cluster from the package: the entrypoint makes the one in
# $PGDATA on first start.
RUN mkdir -p /etc/postgresql-common \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
 && install -d -o postgres -g postgres -m 2775 /run/postgresql
COPY entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
# SIGINT is PostgreSQL's fast shutdown: sessions are ended, nothing waits
# for clients to leave (SIGTERM would wait for every one of them).
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint"]
