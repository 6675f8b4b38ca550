#!/usr/bin/env python3
"""Check the reference stack (setup.sh up) with standard-library clients.

    verify.py delivery [--count 20]     SMTP in, then IMAP and POP3 out
    verify.py idle                      IMAP IDLE sees a new message
    verify.py connections [--count N]   N concurrent logged-in IMAP sessions,
                                        with Dovecot's process count and
                                        unshared memory per connection
    verify.py all                       delivery, idle, connections (2000)

Ports, domain and password come from the same REF_* variables as setup.sh.
Every connection goes to 127.0.0.1 only. Exit status 0 means every check
passed.
"""

import argparse
import asyncio
import email.message
import email.utils
import imaplib
import os
import poplib
import re
import resource
import smtplib
import socket
import subprocess
import sys
import time
import uuid

HOST = "127.0.0.1"
SMTP_PORT = int(os.environ.get("REF_SMTP_PORT", "12525"))
IMAP_PORT = int(os.environ.get("REF_IMAP_PORT", "11143"))
POP3_PORT = int(os.environ.get("REF_POP3_PORT", "11110"))
DOMAIN = os.environ.get("REF_DOMAIN", "bench.test")
USERS = int(os.environ.get("REF_USERS", "50"))
PASSWORD = os.environ.get("REF_PASSWORD", "bench-password")
HERE = os.path.dirname(os.path.abspath(__file__))

failures = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if not cond:
        failures.append(what)


def addr(n):
    return f"load{n}@{DOMAIN}"


def make_message(to, subject, body):
    msg = email.message.EmailMessage()
    msg["From"] = f"sender@client.{DOMAIN}"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain=f"client.{DOMAIN}")
    msg.set_content(body)
    return msg


def imap_login(user):
    imap = imaplib.IMAP4(HOST, IMAP_PORT, timeout=30)
    imap.login(user, PASSWORD)
    return imap


def inbox_count(imap):
    typ, data = imap.status("INBOX", "(MESSAGES)")
    assert typ == "OK", data
    return int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))


# --- delivery ------------------------------------------------------------


def test_delivery(count):
    user = addr(1)
    imap = imap_login(user)
    before = inbox_count(imap)
    sent = []
    latencies = []
    with smtplib.SMTP(HOST, SMTP_PORT, timeout=30) as smtp:
        smtp.ehlo("client." + DOMAIN)
        # The server must refuse what it does not host.
        code, _ = smtp.docmd("MAIL FROM:<probe@client.%s>" % DOMAIN)
        check(code == 250, "MAIL FROM accepted")
        code, resp = smtp.docmd("RCPT TO:<nobody@%s>" % DOMAIN)
        check(code == 550, f"unknown local user refused at RCPT ({code} {resp.decode()[:60]})")
        code, resp = smtp.docmd("RCPT TO:<someone@example.org>")
        check(code == 554, f"other domain refused at RCPT, no relaying ({code} {resp.decode()[:60]})")
        smtp.rset()
        for i in range(count):
            subject = f"reference check {i} {uuid.uuid4().hex}"
            body = f"message {i}\nline two of message {i}\n" + "x" * (i * 50) + "\n"
            msg = make_message(user, subject, body)
            t0 = time.monotonic()
            refused = smtp.send_message(msg)
            check(not refused, f"SMTP accepted message {i}")
            # Wait until IMAP sees it: end-to-end delivery latency.
            want = before + i + 1
            while inbox_count(imap) < want:
                if time.monotonic() - t0 > 10:
                    break
                time.sleep(0.005)
            latencies.append(time.monotonic() - t0)
            # What went over the wire, byte for byte; the stored message must
            # be exactly that plus the trace headers the servers prepend.
            sent.append(msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")))
    ok_in_time = sum(1 for x in latencies if x < 2.0)
    check(ok_in_time == count, f"{ok_in_time}/{count} messages visible over IMAP within 2 s")
    lat = sorted(latencies)
    print(f"      SMTP-accept -> visible-in-IMAP latency: min {lat[0]*1000:.0f} ms, "
          f"median {lat[len(lat)//2]*1000:.0f} ms, max {lat[-1]*1000:.0f} ms", flush=True)

    # IMAP: SELECT count and every body compared.
    typ, data = imap.select("INBOX")
    total = int(data[0])
    check(total == before + count, f"IMAP SELECT INBOX reports {total} (expected {before + count})")
    matched = 0
    for i, wire in enumerate(sent):
        typ, data = imap.fetch(str(before + i + 1), "(BODY.PEEK[])")
        if data[0][1].endswith(wire):
            matched += 1
    check(matched == count, f"IMAP FETCH: {matched}/{count} bodies identical to what was sent")
    imap.logout()

    # POP3: STAT, UIDL, RETR.
    pop = poplib.POP3(HOST, POP3_PORT, timeout=30)
    pop.user(user)
    pop.pass_(PASSWORD)
    n, size = pop.stat()
    check(n == before + count, f"POP3 STAT: {n} messages, {size} octets")
    resp, uidls, _ = pop.uidl()
    uids = [line.split()[1] for line in uidls]
    check(len(set(uids)) == n and all(re.fullmatch(rb"[0-9A-Fa-f]{16}", u) for u in uids),
          f"POP3 UIDL: {len(uids)} unique ids in %08Xu%08Xv form (e.g. {uids[-1].decode()})")
    matched = 0
    for i, wire in enumerate(sent):
        resp, lines, _ = pop.retr(before + i + 1)
        if (b"\r\n".join(lines) + b"\r\n").endswith(wire):
            matched += 1
    check(matched == count, f"POP3 RETR: {matched}/{count} bodies identical to what was sent")
    pop.quit()

    # A wrong password is refused.
    try:
        imaplib.IMAP4(HOST, IMAP_PORT, timeout=30).login(user, PASSWORD + "x")
        check(False, "IMAP refuses a wrong password")
    except imaplib.IMAP4.error:
        check(True, "IMAP refuses a wrong password")


# --- IDLE ---------------------------------------------------------------------


def test_idle():
    user = addr(2)
    sock = socket.create_connection((HOST, IMAP_PORT), timeout=15)
    f = sock.makefile("rwb", buffering=0)

    def cmd(tag, line):
        f.write(f"{tag} {line}\r\n".encode())
        out = []
        while True:
            resp = f.readline()
            out.append(resp)
            if resp.startswith(tag.encode() + b" "):
                return out

    f.readline()  # greeting
    resp = cmd("a1", f'LOGIN "{user}" "{PASSWORD}"')
    check(resp[-1].startswith(b"a1 OK"), "IDLE test: login")
    resp = cmd("a2", "SELECT INBOX")
    exists = max([int(m.group(1)) for r in resp if (m := re.match(rb"\* (\d+) EXISTS", r))] or [0])
    f.write(b"a3 IDLE\r\n")
    cont = f.readline()
    check(cont.startswith(b"+"), f"IDLE accepted ({cont.strip().decode()})")
    subject = "idle check " + uuid.uuid4().hex
    t0 = time.monotonic()
    with smtplib.SMTP(HOST, SMTP_PORT, timeout=30) as smtp:
        smtp.send_message(make_message(user, subject, "wake up\n"))
    seen = None
    sock.settimeout(10)
    try:
        while True:
            line = f.readline()
            if not line:
                break
            m = re.match(rb"\* (\d+) EXISTS", line)
            if m and int(m.group(1)) > exists:
                seen = (int(m.group(1)), time.monotonic() - t0)
                break
    except socket.timeout:
        pass
    check(seen is not None,
          f"IDLE saw '* {seen[0]} EXISTS' {seen[1]*1000:.0f} ms after SMTP send" if seen
          else "IDLE saw no EXISTS within 10 s")
    f.write(b"DONE\r\n")
    sock.settimeout(15)
    while not f.readline().startswith(b"a3 "):
        pass
    cmd("a4", "LOGOUT")
    sock.close()


# --- many connections ---------------------------------------------------------


def dovecot_tree():
    out = subprocess.run([os.path.join(HERE, "setup.sh"), "pids"], capture_output=True, text=True)
    pids = out.stdout.split()
    if len(pids) != 2:
        raise SystemExit("setup.sh pids did not print two pids: " + out.stdout + out.stderr)
    master = int(pids[1])
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [master]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def private_kib(pid):
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        pass
    return total


def process_names(pids):
    names = {}
    for p in pids:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as fh:
                name = fh.read().split(b"\0")[0].decode() or "?"
        except OSError:
            continue
        names[name] = names.get(name, 0) + 1
    return names


async def open_session(n, user, sem, sessions, errors):
    async with sem:
        try:
            reader, writer = await asyncio.open_connection(HOST, IMAP_PORT)
            await reader.readline()
            writer.write(f'a1 LOGIN "{user}" "{PASSWORD}"\r\n'.encode())
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError("closed during login")
                if line.startswith(b"a1 "):
                    break
            if not line.startswith(b"a1 OK"):
                raise ConnectionError(line.decode().strip())
            writer.write(b"a2 SELECT INBOX\r\n")
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError("closed during select")
                if line.startswith(b"a2 "):
                    break
            sessions.append((reader, writer))
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"{n}: {exc!r}")


async def many_connections(count, parallel):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    base_tree = dovecot_tree()
    base_mem = sum(private_kib(p) for p in base_tree)
    print(f"      before: {len(base_tree)} Dovecot processes, {base_mem} KiB unshared", flush=True)
    sem = asyncio.Semaphore(parallel)
    sessions, errors = [], []
    t0 = time.monotonic()
    await asyncio.gather(*(open_session(i, addr(i % USERS + 1), sem, sessions, errors)
                           for i in range(count)))
    elapsed = time.monotonic() - t0
    check(len(sessions) == count,
          f"{len(sessions)}/{count} concurrent IMAP sessions logged in and SELECTed "
          f"in {elapsed:.1f} s ({count / elapsed:.0f} logins/s)")
    for e in errors[:5]:
        print("      error:", e)
    await asyncio.sleep(1.0)  # let login processes finish handing over
    tree = dovecot_tree()
    names = process_names(tree)
    mem = sum(private_kib(p) for p in tree)
    imap_pids = [p for p in tree if process_names([p]).get("dovecot-ref/imap")]
    imap_mem = sum(private_kib(p) for p in imap_pids)
    print(f"      with {len(sessions)} sessions: {len(tree)} Dovecot processes "
          f"({', '.join(f'{k} x{v}' for k, v in sorted(names.items()))})", flush=True)
    if sessions:
        print(f"      unshared memory (Private_Clean+Private_Dirty), whole Dovecot tree: "
              f"{mem} KiB = {mem / len(sessions):.0f} KiB per connection", flush=True)
        print(f"      growth over the idle tree: {mem - base_mem} KiB = "
              f"{(mem - base_mem) / len(sessions):.0f} KiB per connection; "
              f"imap processes alone: {imap_mem / max(1, len(imap_pids)):.0f} KiB each", flush=True)
    # Open descriptors of the shared service processes: each of them must
    # stay under the open-file limit when the count goes to ~10,000.
    fds = []
    for p in tree:
        name = process_names([p])
        if not name or "dovecot-ref/imap" in name:
            continue
        try:
            fds.append(f"{next(iter(name)).split('/')[-1]} {len(os.listdir(f'/proc/{p}/fd'))}")
        except OSError:
            pass
    print("      open fds of the service processes: " + ", ".join(sorted(fds)), flush=True)
    # A session still works after all that.
    if sessions:
        reader, writer = sessions[0]
        writer.write(b"a3 NOOP\r\n")
        line = await reader.readline()
        while not line.startswith(b"a3 "):
            line = await reader.readline()
        check(line.startswith(b"a3 OK"), "an old session still answers NOOP")
    for reader, writer in sessions:
        writer.write(b"a9 LOGOUT\r\n")
    for reader, writer in sessions:
        try:
            await asyncio.wait_for(writer.drain(), 5)
        except Exception:  # noqa: BLE001
            pass
        writer.close()
    await asyncio.sleep(0)
    # Dovecot's processes go away again.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = len(dovecot_tree())
        if left <= len(base_tree) + 5:
            break
        await asyncio.sleep(0.5)
    check(left <= len(base_tree) + 5, f"after closing: {left} Dovecot processes remain")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["delivery", "idle", "connections", "all"])
    ap.add_argument("--count", type=int, default=None)
    ap.add_argument("--parallel", type=int, default=100,
                    help="logins in flight at once for 'connections' (default 100)")
    args = ap.parse_args()
    if args.what in ("delivery", "all"):
        test_delivery(args.count if args.what == "delivery" and args.count else 20)
    if args.what in ("idle", "all"):
        test_idle()
    if args.what in ("connections", "all"):
        count = args.count if args.what == "connections" and args.count else 2000
        asyncio.run(many_connections(count, args.parallel))
    if failures:
        print(f"\n{len(failures)} check(s) failed:")
        for f in failures:
            print("  -", f)
        sys.exit(1)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
