#!/usr/bin/env python3
"""The compose deployment, for real: docker-compose.yml with
deploy/compose.offline.yml runs as containers on this machine, built by
scripts/images.sh from this checkout, and is used the way an operator and
mail clients would (README, "What the compose test proves").

  1. Up from nothing: every service healthy by its own healthcheck within
     HEALTHY_WITHIN, the migration run once, volumes owned right.
     Each container mounts only its own fleet identity; a dashboard
     container cannot resolve storage, PostgreSQL or NATS.
  2. mailctl through `docker compose exec` creates a domain and accounts
     (the admin API listens only inside the storage container) and reads
     the queue as the NATS user mailctl, with its own fleet certificate.
  3. Mail in through the balancer's published SMTP port (25) and
     submission (587, STARTTLS + AUTH); read back over IMAP (143 STARTTLS,
     993) and POP3 (110 STLS, 995); the Received: header names the client
     address the balancer saw (PROXY protocol v2).
  4. Scaled (imap-gateway=3, pop3-gateway=2, smtp-ingress=2,
     delivery-queue=2): every replica healthy; 30 IMAP clients through the
     balancer are spread over all three IMAP replicas (their own
     connection metrics, exported to the collector stand-in); an IDLE
     client is told about new mail.
     The POP3 maildrop lock holds across the two POP3 replicas (a second
     session, on the other replica, gets -ERR [IN-USE]), and each replica's
     log names the real client address (PROXY v2), not the balancer's.
  5. One message's trace reaches the collector as one trace across
     smtp-ingress, storage, delivery-queue and the idling IMAP session.
  6. Under a bounded submission load: SIGKILL of a delivery-queue replica,
     of storage and of an smtp-ingress replica, each started again; every
     message that got a 250 arrives exactly once, others at most once.
  7. Rolling restart and upgrade under load: a container of each Mailfleet
     service is restarted in turn (SIGTERM, `docker restart`), then the image is
     replaced by a newer build and the services are recreated one by one,
     storage first (README, "Upgrading"); every 250 arrives exactly once,
     and no connection to the balancer is refused for longer than the
     healthcheck interval.
  8. `down` then `up`: every message is still there (volumes).

Clients connect only to ports published on 127.0.0.1. Containers,
networks and volumes of the test's own compose project are removed at the
end, whatever happens. Fails (never skips) when anything is missing.

Usage: scripts/compose_test.py [--bin-dir DIR]  (default target/debug,
which `cargo test --workspace` has just built under scripts/test.sh).
"""

import argparse
import atexit
import hashlib
import imaplib
import ipaddress
import json
import os
import poplib
import random
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# Generous for a loaded 2-core machine: the services are debug builds, and
# the healthchecks run every 5-10 s.
HEALTHY_WITHIN = 240
# Mail delivered after a fault: ack_wait (20 s) plus restarts and backoff.
ARRIVES_WITHIN = 150
DOMAIN = "example.test"
PASSWORD = "compose test password"
# At most this many submissions, one every 0.2 s or slower.
LOAD_MESSAGES = 600

T0 = time.monotonic()
# Services that run once and exit: the fleet PKI and the migration.
ONE_OFF = {"pki", "migrate"}


def log(msg):
    print(f"compose-test [{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_subnet():
    """A /24 for the edge network that overlaps no Docker network here."""
    out = subprocess.run(
        ["docker", "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}"]
        + subprocess.run(["docker", "network", "ls", "-q"], capture_output=True, text=True, check=True).stdout.split(),
        capture_output=True, text=True, check=True).stdout.split()
    used = [ipaddress.ip_network(s, strict=False) for s in out if ":" not in s]
    # Outside Docker's default address pools (172.17-31.0.0/16 and
    # 192.168.0.0/16): the project's other networks take theirs from those
    # pools, and a later `up` (after `down`) may be handed the /16 that
    # holds a 172.29.x.0/24 chosen here ("Pool overlaps"). In random
    # order: two tests starting at once should not both pick the first.
    for third in random.sample(range(200, 255), 55):
        net = ipaddress.ip_network(f"10.231.{third}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise Failure("no free 10.231.x.0/24 for the edge network")


# The Mailfleet image this checkout's test builds and runs: a name of its
# own, so that a test from another checkout on the same machine neither
# replaces it mid-run nor is replaced by it.
IMAGE = "mailfleet:compose-test-" + hashlib.sha256(ROOT.encode()).hexdigest()[:12]


class Deployment:
    def __init__(self):
        self.project = f"mfcompose{os.getpid()}"
        self.pick_addresses()
        if shutil.which("docker-compose"):
            self.tool = ["docker-compose"]
        else:
            self.tool = ["docker", "compose"]
        self.files = ["-f", "docker-compose.yml", "-f", "deploy/compose.offline.yml"]
        self.scale = []

    def pick_addresses(self):
        self.ports = {name: free_port() for name in
                      ["SMTP", "SUBMISSION", "SUBMISSIONS", "IMAP", "IMAPS", "POP3", "POP3S",
                       "JAEGER", "PROMETHEUS", "GRAFANA"]}
        self.edge = free_subnet()
        self.env = dict(os.environ)
        for key in list(self.env):
            if key.startswith("MAILFLEET_") or key.startswith("COMPOSE_") or key.startswith("OTEL_"):
                del self.env[key]
        self.env.update({f"MAILFLEET_{name}_PORT": str(port) for name, port in self.ports.items()})
        self.env.update({
            "COMPOSE_PROJECT_NAME": self.project,
            "MAILFLEET_PUBLISH_ADDRESS": "127.0.0.1",
            "MAILFLEET_EDGE_SUBNET": str(self.edge),
            "MAILFLEET_HOSTNAME": "mail.example.test",
            "MAILFLEET_IMAGE": IMAGE,
        })

    def compose(self, *args, timeout=300, capture=False):
        cmd = self.tool + self.files + list(args)
        res = subprocess.run(cmd, cwd=ROOT, env=self.env, timeout=timeout, text=True,
                             stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        if res.returncode != 0:
            raise Failure(f"{' '.join(cmd[len(self.tool):])} failed ({res.returncode}):\n{res.stderr}")
        return res.stdout

    def down(self, volumes):
        """Removes the project's containers and networks (and volumes)."""
        args = ["down", "--remove-orphans", "-t", "20"] + (["-v"] if volumes else [])
        self.compose(*args, timeout=300)

    def containers(self):
        """{container name: (service, state, health, exit code)} of the project."""
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"],
            capture_output=True, text=True, check=True).stdout.split()
        if not ids:
            return {}
        out = subprocess.run(["docker", "inspect"] + ids, capture_output=True, text=True, check=True).stdout
        result = {}
        for c in json.loads(out):
            state = c["State"]
            health = state.get("Health", {}).get("Status", "")
            service = c["Config"]["Labels"].get("com.docker.compose.service", "?")
            result[c["Name"].lstrip("/")] = (service, state["Status"], health, state["ExitCode"])
        return result

    def replicas(self, service):
        return sorted(name for name, (svc, state, _, _) in self.containers().items()
                      if svc == service and state == "running")

    def wait_healthy(self, what, within=HEALTHY_WITHIN):
        """Every container healthy (or running, without a healthcheck), the
        one-off services (certificates, migration) exited 0; fails at once
        when one died."""
        start = time.monotonic()
        while True:
            cs = self.containers()
            waiting = []
            for name, (service, state, health, code) in sorted(cs.items()):
                if service in ONE_OFF:
                    if state == "exited":
                        check(code == 0, f"{service} exited {code}:\n{self.logs(service)}")
                    else:
                        waiting.append(f"{name} {state}")
                    continue
                if state != "running" or (health and health != "healthy"):
                    waiting.append(f"{name} {state}/{health or '-'}")
            if cs and not waiting:
                log(f"{what}: {len(cs)} containers healthy in {time.monotonic() - start:.0f} s")
                return time.monotonic() - start
            if time.monotonic() - start > within:
                raise Failure(f"{what}: not healthy within {within} s: {waiting}\n"
                              + "\n".join(self.logs(s) for s in {cs[n.split()[0]][0] for n in waiting}))
            time.sleep(2)

    def logs(self, service, tail=40):
        try:
            return self.compose("logs", "--no-color", f"--tail={tail}", service, capture=True, timeout=60)
        except Exception as e:  # noqa: BLE001 - only for a failure message
            return f"(no logs of {service}: {e})"

    def docker(self, *args):
        subprocess.run(["docker"] + list(args), check=True, capture_output=True, timeout=120)


def tls_context():
    # Each gateway replica made a self-signed certificate at first start.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def retrying(what, fn, within=60):
    """Clients connect through the balancer, which marks a replica up only
    after two checks (deploy/haproxy.cfg): retry until then."""
    deadline = time.monotonic() + within
    while True:
        try:
            return fn()
        except (OSError, smtplib.SMTPException, imaplib.IMAP4.error, poplib.error_proto, EOFError) as e:
            if time.monotonic() > deadline:
                raise Failure(f"{what}: {e!r}") from e
            time.sleep(1)


def message(sender, to, subject, body="Hello from the compose test.\r\n"):
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4()}@compose.test>\r\n\r\n{body}")


def smtp_mx(dep, sender, to, subject):
    def send():
        with smtplib.SMTP("127.0.0.1", dep.ports["SMTP"], timeout=30) as s:
            s.ehlo("client.compose.test")
            s.sendmail(sender, [to], message(sender, to, subject))
    retrying("SMTP to port 25", send)


def submission(dep, user, to, subject):
    with smtplib.SMTP("127.0.0.1", dep.ports["SUBMISSION"], timeout=30) as s:
        s.ehlo("client.compose.test")
        s.starttls(context=tls_context())
        s.ehlo("client.compose.test")
        s.login(user, PASSWORD)
        s.sendmail(user, [to], message(user, to, subject))


def imap_login(dep, user, implicit_tls=False):
    if implicit_tls:
        c = imaplib.IMAP4_SSL("127.0.0.1", dep.ports["IMAPS"], ssl_context=tls_context(), timeout=30)
    else:
        c = imaplib.IMAP4("127.0.0.1", dep.ports["IMAP"], timeout=30)
        c.starttls(ssl_context=tls_context())
    c.login(user, PASSWORD)
    return c


def subjects(dep, user):
    """Subject of every message in the user's INBOX, over IMAP (143 STARTTLS)."""
    def read():
        c = imap_login(dep, user)
        try:
            typ, data = c.select("INBOX", readonly=True)
            check(typ == "OK", f"SELECT {data}")
            if int(data[0]) == 0:
                return []
            typ, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            check(typ == "OK", f"FETCH {data}")
            out = []
            for item in data:
                if isinstance(item, tuple):
                    m = re.search(rb"Subject: (\S+)", item[1])
                    out.append(m.group(1).decode() if m else "")
            return out
        finally:
            c.logout()
    return retrying("IMAP read", read)


def wait_for(what, fn, within=ARRIVES_WITHIN):
    deadline = time.monotonic() + within
    while True:
        result = fn()
        if result is True:
            return
        if time.monotonic() > deadline:
            raise Failure(f"{what} not within {within} s: {result}")
        time.sleep(2)


def read_back_everywhere(dep, user, subject):
    """The message, by subject, over IMAP 143 + STARTTLS, IMAPS 993, POP3
    110 + STLS and POP3S 995; returns its full text."""
    texts = []
    for implicit in (False, True):
        def imap_read():
            c = imap_login(dep, user, implicit_tls=implicit)
            try:
                c.select("INBOX", readonly=True)
                typ, data = c.search(None, "SUBJECT", subject)
                check(typ == "OK" and data[0].split(), f"SEARCH SUBJECT {subject}: {data}")
                typ, data = c.fetch(data[0].split()[0], "(BODY.PEEK[])")
                check(typ == "OK", f"FETCH {data}")
                return data[0][1].decode("utf-8", "replace")
            finally:
                c.logout()
        texts.append(retrying(f"IMAP{'S' if implicit else ''} read", imap_read))
    for implicit in (False, True):
        def pop_read():
            if implicit:
                p = poplib.POP3_SSL("127.0.0.1", dep.ports["POP3S"], context=tls_context(), timeout=30)
            else:
                p = poplib.POP3("127.0.0.1", dep.ports["POP3"], timeout=30)
                p.stls(context=tls_context())
            try:
                p.user(user)
                p.pass_(PASSWORD)
                count, _ = p.stat()
                for i in range(1, count + 1):
                    text = b"\r\n".join(p.retr(i)[1]).decode("utf-8", "replace")
                    if f"Subject: {subject}" in text:
                        return text
                raise Failure(f"POP3: {subject} not among {count} messages")
            finally:
                p.quit()
        texts.append(retrying(f"POP3{'S' if implicit else ''} read", pop_read))
    return texts[0]


def step_up(dep):
    for attempt in range(3):
        log(f"project {dep.project}, edge {dep.edge}, ports {dep.ports}")
        try:
            dep.compose("up", "-d", timeout=600)
            break
        except Failure as e:
            # A port or the subnet taken meanwhile (free_port and
            # free_subnet only looked): new ones, once more.
            if attempt == 2 or not re.search(r"already allocated|address already in use|overlap", str(e), re.I):
                raise
            log(f"up failed, trying other ports and subnet: {e}")
            dep.down(volumes=True)
            dep.pick_addresses()
    took = dep.wait_healthy("up from nothing")
    # Volumes created with the right owners: storage wrote its blob
    # directory (a message is stored below), PostgreSQL initialised its own.
    return took


def step_pki_and_networks(dep):
    """Each container holds its own identity only, the key readable by its
    user alone; a dashboard container cannot even resolve storage,
    PostgreSQL or NATS, only the collector (the networks of issue 15)."""
    out = dep.compose("exec", "-T", "storage", "sh", "-ec",
                      "ls /etc/mailfleet/pki; stat -c '%u %a' /etc/mailfleet/pki/storage.key; "
                      "ls /etc/mailfleet/pki-mailctl", capture=True, timeout=60).split()
    check(out == ["ca.crt", "storage.crt", "storage.key", "10001", "600", "ca.crt", "mailctl.crt", "mailctl.key"],
          f"storage's pki mounts: {out}")
    out = dep.compose("exec", "-T", "nats-1", "ls", "/etc/nats/pki", capture=True, timeout=60).split()
    check(out == ["ca.crt", "nats.crt", "nats.key"], f"nats-1's pki mount: {out}")
    # Idle Debian containers in the offline deployment: getent asks
    # Docker's DNS on their networks only.
    script = ("for h in storage postgres nats-1 otel-collector; do "
              "getent hosts $h >/dev/null && echo $h=yes || echo $h=no; done")
    out = dep.compose("exec", "-T", "grafana", "sh", "-c", script, capture=True, timeout=60).split()
    check(out == ["storage=no", "postgres=no", "nats-1=no", "otel-collector=yes"], f"grafana resolves: {out}")
    log("each container has its own identity only; grafana reaches the collector, not storage, postgres or NATS")


def step_accounts(dep):
    # One exec for the lot: each `docker-compose exec` costs seconds.
    listed = dep.compose(
        "exec", "-T", "-e", f"PASSWORD={PASSWORD}", "storage", "sh", "-ec",
        # mailctl's defaults (admin URL, credentials) are the storage
        # container's, as the README's commands use them.
        'm() { mailctl "$@"; }\n'
        f'm domain add {DOMAIN}\n'
        f'm account add alice@{DOMAIN} --password "$PASSWORD"\n'
        f'm account add bob@{DOMAIN} --password "$PASSWORD"\n'
        'm account list\n'
        # NATS with mailctl's identity (MAILCTL_NATS_* of the container):
        # TLS, the certificate mapped to the user mailctl.
        'm queue list\n',
        capture=True, timeout=120)
    check(f"alice@{DOMAIN}" in listed and f"bob@{DOMAIN}" in listed, f"account list: {listed}")
    check("job(s) in MAIL_QUEUE" in listed, f"queue list: {listed}")
    log("mailctl created the domain and two accounts and listed the queue over NATS")


def edge_gateway(dep):
    """The address the host's port forwarding connects to the balancer
    from: the edge network's gateway."""
    out = subprocess.run(["docker", "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
                          f"{dep.project}_edge"], capture_output=True, text=True, check=True).stdout.strip()
    return out or str(next(dep.edge.hosts()))


def step_first_mail(dep):
    alice, bob = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
    smtp_mx(dep, "someone@sender.test", alice, "first-mx")
    retrying("submission", lambda: submission(dep, bob, alice, "first-submission"))
    wait_for("both first messages in alice's INBOX",
             lambda: {"first-mx", "first-submission"} <= set(subjects(dep, alice)) or subjects(dep, alice))
    text = read_back_everywhere(dep, alice, "first-mx")
    received = re.findall(r"^Received: .*(?:\r\n[ \t].*)*", text, re.M)
    check(received, f"no Received: header in\n{text}")
    # PROXY v2: the gateway names the client the balancer saw, not the
    # balancer itself.
    client = edge_gateway(dep)
    check(client in received[0], f"Received: does not name the client {client}: {received[0]}")
    read_back_everywhere(dep, alice, "first-submission")
    log("first mail in over 25 and 587, read back over 143, 993, 110 and 995; Received: names the client")


SCALE = {"imap-gateway": 3, "pop3-gateway": 2, "smtp-ingress": 2, "delivery-queue": 2}


def step_scale(dep):
    dep.scale = [a for s, n in SCALE.items() for a in ("--scale", f"{s}={n}")]
    dep.compose("up", "-d", "--no-recreate", *dep.scale, timeout=600)
    dep.wait_healthy("scaled")
    for service, n in SCALE.items():
        check(len(dep.replicas(service)) == n, f"{service}: {dep.replicas(service)}")
    wait_for("the balancer sees all three IMAP replicas up", lambda: balancer_up(dep, "imap", 3), within=90)
    alice = f"alice@{DOMAIN}"
    # 30 IMAP clients through the balancer (leastconn): each replica gets
    # some, as its own connection metric (service.instance.id) shows.
    clients = []
    try:
        for _ in range(30):
            clients.append(retrying("IMAP login", lambda: imap_login(dep, alice)))
        # An IDLE client hears of mail delivered meanwhile, whichever
        # replicas it and the delivery went through.
        idler = clients[0]
        idler.select("INBOX")
        tag = idler._new_tag().decode()
        idler.send(f"{tag} IDLE\r\n".encode())
        check(idler.readline().startswith(b"+"), "IDLE continuation")
        retrying("submission", lambda: submission(dep, f"bob@{DOMAIN}", alice, "while-idling"))
        idler.sock.settimeout(60)
        lines = []
        while not (lines and re.match(rb"\* \d+ EXISTS", lines[-1])):
            lines.append(idler.readline())
            check(lines[-1] and len(lines) < 20, f"IDLE got {lines!r}")
        idler.send(b"DONE\r\n")
        log("30 IMAP clients connected; the IDLE client got EXISTS for new mail")
        wait_for("connections on all three IMAP replicas in their metrics",
                 lambda: imap_spread(dep), within=90)
    finally:
        for c in clients:
            try:
                c.logout()
            except Exception:  # noqa: BLE001 - closing anyway
                pass


def pop3_auth_failures(dep):
    """{pop3-gateway container: its log lines about failed logins}."""
    out = {}
    for name in dep.replicas("pop3-gateway"):
        res = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=60)
        # Without the terminal colours tracing may write even to a pipe.
        text = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout + res.stderr)
        out[name] = [l for l in text.splitlines() if "authentication failed" in l]
    return out


def pop3_session(dep, user, fail_first):
    """A POP3 session through the balancer (110, STLS); with `fail_first`
    one wrong password first, which the replica serving it logs."""
    p = poplib.POP3("127.0.0.1", dep.ports["POP3"], timeout=30)
    p.stls(context=tls_context())
    if fail_first:
        p.user(user)
        try:
            p.pass_("not the password")
            raise Failure("a wrong POP3 password was accepted")
        except poplib.error_proto:
            pass
    p.user(user)
    return p


def step_pop3_lock(dep):
    """RFC 1939 §8: one maildrop, one session, across replicas. The
    balancer (leastconn) sends the second session to the replica without
    one; which replica served which session, and the client address each
    saw, come from their own logs."""
    wait_for("the balancer sees both POP3 replicas up", lambda: balancer_up(dep, "pop3", 2), within=90)
    alice, client = f"alice@{DOMAIN}", edge_gateway(dep)
    before = pop3_auth_failures(dep)
    first = pop3_session(dep, alice, fail_first=True)
    first.pass_(PASSWORD)
    middle = pop3_auth_failures(dep)
    second = pop3_session(dep, alice, fail_first=True)
    try:
        second.pass_(PASSWORD)
        raise Failure("a second POP3 session got the locked maildrop")
    except poplib.error_proto as e:
        check(b"[IN-USE]" in e.args[0], f"second session: {e}")
    after = pop3_auth_failures(dep)
    first_on = [n for n in middle if len(middle[n]) > len(before.get(n, []))]
    second_on = [n for n in after if len(after[n]) > len(middle.get(n, []))]
    check(len(first_on) == 1 and len(second_on) == 1 and first_on != second_on,
          f"sessions not on two replicas: first {first_on}, second {second_on}")
    for name in first_on + second_on:
        line = after[name][-1]
        check(f"client={client}" in line, f"{name} does not log the client {client}: {line}")
    for session in (second, first):
        try:
            session.quit()
        except (OSError, poplib.error_proto):
            pass  # the refused session may have been closed already
    # QUIT released the lock: a new session gets the maildrop.
    third = retrying("POP3 after the lock's release", lambda: pop3_session(dep, alice, fail_first=False))
    third.pass_(PASSWORD)
    third.quit()
    log(f"POP3 lock held across {first_on[0]} and {second_on[0]}; both logged the client {client}")


def balancer_up(dep, backend, n):
    """True once HAProxy's log says n servers of the backend are up (it
    finds replicas through Docker's DNS and checks /healthz)."""
    up = set()
    for line in dep.logs("lb", tail=100000).splitlines():
        # "Server imap/imap1 is UP, reason: ...", "... ('imap-gateway') is
        # UP/READY (resolves again)", "... is DOWN", "... is going DOWN for
        # maintenance".
        m = re.search(rf"Server {backend}/(\S+)(?: \('[^']*'\))? is (UP|DOWN|going DOWN)", line)
        if m:
            (up.add if m.group(2) == "UP" else up.discard)(m.group(1))
    return len(up) >= n or f"up: {sorted(up)}"


def sink_lines(dep):
    return dep.compose("logs", "--no-color", "otel-collector", capture=True, timeout=60).splitlines()


def imap_spread(dep):
    """True once each IMAP replica exported a connection count > 0."""
    seen = {}
    for line in sink_lines(dep):
        m = re.search(r"metric service=imap-gateway instance=(\S+) name=mailfleet\.connections .*value=(\S+)", line)
        if m:
            seen[m.group(1)] = max(seen.get(m.group(1), 0), float(m.group(2)))
    busy = [i for i, v in seen.items() if v > 0]
    return len(busy) >= 3 or f"replicas with connections: {seen}"


def step_trace(dep):
    """The message delivered while the client idled: one trace across
    smtp-ingress, storage, delivery-queue and imap-gateway."""
    def connected():
        services = {}
        for line in sink_lines(dep):
            m = re.search(r"span trace=(\S+) span=\S+ parent=\S+ service=(\S+) name=", line)
            if m:
                services.setdefault(m.group(1), set()).add(m.group(2))
        want = {"smtp-ingress", "storage", "delivery-queue", "imap-gateway"}
        full = [t for t, s in services.items() if want <= s]
        return bool(full) or f"no trace with all of {want}; {len(services)} traces"
    wait_for("one trace across the services", connected, within=60)
    log("one message's trace reached the collector across smtp-ingress, storage, delivery-queue, imap-gateway")


class Load(threading.Thread):
    """Submissions as bob to alice, one at a time over a connection kept
    open, reconnecting after any failure; records what got a 250."""

    def __init__(self, dep, prefix="load", limit=LOAD_MESSAGES):
        super().__init__(daemon=True)
        self.dep = dep
        self.prefix = prefix
        self.limit = limit
        self.accepted = []
        self.attempted = []
        self.stop = threading.Event()
        # The longest time the balancer refused (or dropped) connections
        # without a session getting through, and when that began.
        self.refused_since = None
        self.longest_refusal = 0.0

    def run(self):
        bob, alice = f"bob@{DOMAIN}", f"alice@{DOMAIN}"
        s = None
        n = 0
        while not self.stop.is_set() and n < self.limit:
            # Paced: the load must last through every kill, bounded.
            time.sleep(0.2)
            subject = f"{self.prefix}-{n}"
            try:
                if s is None:
                    s = smtplib.SMTP("127.0.0.1", self.dep.ports["SUBMISSION"], timeout=30)
                    s.ehlo("client.compose.test")
                    s.starttls(context=tls_context())
                    s.ehlo("client.compose.test")
                    s.login(bob, PASSWORD)
                self.refused_since = None
                n += 1
                self.attempted.append(subject)
                s.sendmail(bob, [alice], message(bob, alice, subject))
                self.accepted.append(subject)
            except (OSError, smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError) as e:
                # No session: the balancer refused or dropped us.
                if s is None or isinstance(e, (ConnectionError, smtplib.SMTPConnectError)):
                    now = time.monotonic()
                    self.refused_since = self.refused_since or now
                    self.longest_refusal = max(self.longest_refusal, now - self.refused_since)
                s = None
                time.sleep(0.5)
            except smtplib.SMTPException:
                # A 4xx (storage restarting): the session was there.
                s = None
                time.sleep(0.5)
        if s is not None:
            try:
                s.quit()
            except (OSError, smtplib.SMTPException):
                pass


def step_faults(dep):
    load = Load(dep)
    load.start()

    def kill(service, which=0):
        name = dep.replicas(service)[which]
        progress = len(load.accepted)
        wait_for(f"load progressing before killing {name}", lambda: len(load.accepted) >= progress + 5 or
                 len(load.accepted), within=90)
        dep.docker("kill", "-s", "KILL", name)
        log(f"killed {name} after {len(load.accepted)} accepted")
        dep.docker("start", name)
        dep.wait_healthy(f"after killing {name}")

    try:
        kill("delivery-queue")
        kill("storage")
        kill("smtp-ingress", which=1)
    finally:
        load.stop.set()
        load.join(timeout=120)
    check(not load.is_alive(), "the load did not stop")
    log(f"load: {len(load.attempted)} attempts, {len(load.accepted)} accepted")
    check(len(load.accepted) >= 15, f"too little mail got through: {len(load.accepted)}")
    alice = f"alice@{DOMAIN}"
    wait_for("every accepted message in alice's INBOX",
             lambda: not (set(load.accepted) - set(subjects(dep, alice)))
             or f"missing {sorted(set(load.accepted) - set(subjects(dep, alice)))[:10]}")
    check_exactly_once(dep, load)
    return load


def check_exactly_once(dep, load):
    seen = subjects(dep, f"alice@{DOMAIN}")
    counts = {s: seen.count(s) for s in set(seen)}
    twice = sorted(s for s in load.accepted if counts.get(s, 0) != 1)
    check(not twice, f"accepted but not exactly once: {[(s, counts.get(s, 0)) for s in twice]}")
    unaccepted = sorted(s for s in load.attempted if s not in load.accepted and counts.get(s, 0) > 1)
    check(not unaccepted, f"attempts without a 250 there more than once: {unaccepted}")
    unknown = sorted(s for s in counts if s.startswith(("load-", "roll-")) and s not in load.attempted)
    check(not unknown, f"messages nobody sent: {unknown}")
    return len(seen)


# The gateways' healthcheck interval (docker-compose.yml) and HAProxy's
# check interval (deploy/haproxy.cfg, inter 5s).
HEALTHCHECK_INTERVAL = 10
# Services recreated with a new image, in the README's order: storage
# first (its schema and API are what the others need), then the queue,
# then the gateways.
UPGRADE_ORDER = ["storage", "delivery-queue", "smtp-ingress", "imap-gateway", "pop3-gateway"]


def image_id(ref):
    return subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", ref],
                          capture_output=True, text=True, check=True).stdout.strip()


def step_rolling_and_upgrade(dep, earlier):
    """Under a bounded load: every Mailfleet container restarted in turn
    (SIGTERM first, as `docker compose restart` does), then a newer image
    rolled out service by service, storage first."""
    # Ten restarts and recreations of about 20 s each, at up to 5 messages
    # a second: room for all of them, still bounded.
    load = Load(dep, "roll", limit=2000)
    load.start()

    def progressed(what):
        mark = len(load.accepted)
        wait_for(f"mail accepted after {what}", lambda: len(load.accepted) >= mark + 3 or len(load.accepted),
                 within=90)

    try:
        progressed("the load started")
        # One container of each service in turn (a scaled service's other
        # replicas are the same program): the one that serves alone
        # (storage) and one that the balancer must route around.
        for service in UPGRADE_ORDER:
            name = dep.replicas(service)[0]
            dep.docker("restart", "-t", "30", name)
            dep.wait_healthy(f"after restarting {name}")
            progressed(f"restarting {name}")
        log(f"rolling restart, a container of each service in turn: {len(load.accepted)} accepted so far")
        # A newer build: the same binaries with one more layer, so a new
        # image id that every container must end up running.
        newer = IMAGE + "-newer"
        build = subprocess.run(["docker", "build", "-q", "-t", newer, "-"], input=f"FROM {IMAGE}\nLABEL upgrade=1\n",
                               capture_output=True, text=True, timeout=300)
        check(build.returncode == 0, f"building the newer image: {build.stderr}")
        dep.env["MAILFLEET_IMAGE"] = newer
        for service in UPGRADE_ORDER:
            dep.compose("up", "-d", "--no-deps", *dep.scale, service, timeout=600)
            dep.wait_healthy(f"after upgrading {service}")
            progressed(f"upgrading {service}")
        want = image_id(newer)
        for service in UPGRADE_ORDER:
            for name in dep.replicas(service):
                got = subprocess.run(["docker", "inspect", "-f", "{{.Image}}", name],
                                     capture_output=True, text=True, check=True).stdout.strip()
                check(got == want, f"{name} still runs {got}, not the newer image")
    finally:
        load.stop.set()
        load.join(timeout=120)
    check(not load.is_alive(), "the load did not stop")
    log(f"upgraded {', '.join(UPGRADE_ORDER)} in that order; load: {len(load.attempted)} attempts, "
        f"{len(load.accepted)} accepted; longest refusal {load.longest_refusal:.1f} s")
    check(load.longest_refusal <= HEALTHCHECK_INTERVAL,
          f"the balancer refused connections for {load.longest_refusal:.1f} s")
    # Both loads' subjects in one account: each accepted one exactly once.
    merged = Load(dep, "merged")
    merged.accepted = earlier.accepted + [s for s in load.accepted]
    merged.attempted = earlier.attempted + [s for s in load.attempted]
    return merged


def step_down_up(dep, load):
    before = subjects(dep, f"alice@{DOMAIN}")
    dep.down(volumes=False)
    for attempt in range(3):
        try:
            dep.compose("up", "-d", timeout=600)
            break
        except Failure as e:
            # As in step_up: a port or the subnet taken meanwhile; the
            # volumes (the mail) stay.
            if attempt == 2 or not re.search(r"already allocated|address already in use|overlap", str(e), re.I):
                raise
            log(f"up failed, trying other ports and subnet: {e}")
            dep.down(volumes=False)
            dep.pick_addresses()
    dep.wait_healthy("up again after down")
    after = subjects(dep, f"alice@{DOMAIN}")
    check(sorted(after) == sorted(before), f"down/up changed the mailbox: {len(before)} -> {len(after)}")
    check_exactly_once(dep, load)
    log(f"down then up: all {len(after)} messages still there, each load message once")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "debug"))
    args = parser.parse_args()
    for tool in ("docker",):
        check(shutil.which(tool), f"{tool} is not installed")
    check(shutil.which("docker-compose") or subprocess.run(["docker", "compose", "version"],
                                                          capture_output=True).returncode == 0,
          "neither docker-compose nor docker compose is installed")

    t = time.monotonic()
    subprocess.run([os.path.join(ROOT, "scripts", "images.sh"), "--bin-dir", args.bin_dir, "--tag", IMAGE],
                   check=True, timeout=1200)
    timings = {"images": time.monotonic() - t}

    dep = Deployment()

    def cleanup(*_):
        for _ in range(2):
            try:
                dep.down(volumes=True)
                return
            except Exception as e:  # noqa: BLE001 - report, then go on
                log(f"cleanup: {e}")
        # What `down` left (it can fail on a container it is still
        # creating): everything of the project, by its label.
        label = f"label=com.docker.compose.project={dep.project}"
        for kind in ("container", "network", "volume"):
            ids = subprocess.run(["docker", kind, "ls", "-aq" if kind == "container" else "-q", "--filter", label],
                                 capture_output=True, text=True).stdout.split()
            if ids:
                rm = ["docker", kind, "rm"] + (["-f"] if kind != "network" else []) + ids
                subprocess.run(rm, capture_output=True)
    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))

    t = time.monotonic()
    timings["healthy"] = step_up(dep)
    step_pki_and_networks(dep)
    step_accounts(dep)
    step_first_mail(dep)
    step_scale(dep)
    step_trace(dep)
    step_pop3_lock(dep)
    load = step_faults(dep)
    load = step_rolling_and_upgrade(dep, load)
    step_down_up(dep, load)
    timings["tests"] = time.monotonic() - t
    log("passed; " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        log(f"FAILED: {e}")
        sys.exit(1)
