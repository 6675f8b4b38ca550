#!/usr/bin/env python3
"""The benchmark's targets (issue "Measure it"), checked against a combined
report from `loadgen report`: each is a ratio Mailfleet/reference measured
in one run on one machine.

    targets.py var/bench/results/<time>/combined.json
"""
import json
import sys

# (result, figure, how it compares, bound, what it stands for)
TARGETS = [
    ("smtp", "delivered_msg_per_s", ">=", 1.5, "SMTP ingest end to end (250 to visible over IMAP)"),
    ("imap-full-fetch", "full_fetch_msg_per_s", ">=", 1.2, "IMAP UID FETCH 1:* BODY.PEEK[], one client"),
    ("pop3-one-client", "messages_per_s", ">=", 1.2, "POP3 RETR of everything, one client"),
    ("pop3", "messages_per_s", ">=", 1.2, "POP3 RETR of everything, concurrent clients"),
    ("idle", "unshared_bytes_per_conn", "<=", 1 / 8, "unshared memory per idle IMAP connection"),
]


def main():
    report = json.load(open(sys.argv[1]))
    rows = {(r["result"], r["figure"]): r for r in report["rows"]}
    print()
    print("targets (Mailfleet/reference):")
    met = 0
    for result, figure, op, bound, what in TARGETS:
        row = rows.get((result, figure))
        ratio = row and row.get("ratio")
        if ratio is None:
            print(f"  ?    {what}: no ratio ({result}.{figure} missing on one side)")
            continue
        ok = ratio >= bound if op == ">=" else ratio <= bound
        met += ok
        print(f"  {'met ' if ok else 'MISS'} {what}: {ratio:.3f} (target {op} {bound:.3g})")
    print(f"  {met} of {len(TARGETS)} met")


if __name__ == "__main__":
    main()
