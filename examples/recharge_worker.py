#!/usr/bin/env python3
"""A payment worker for auto-recharge: it LISTENs on credits_events, claims
recharge_requested events, "charges the card" (simulated here) and
completes each request with credits_purchase(payment_ref => request_id),
then acknowledges the event.

Delivery is at least once: an event whose worker crashed comes back after
its visibility timeout, and another worker may see it again. That is safe
because credits_purchase is idempotent on payment_ref: a request is bought
once, however often it is handled.

    python3 examples/recharge_worker.py --dsn "host=127.0.0.1 port=25430 user=postgres dbname=credits"

The role it connects as needs credits_app (events) and credits_admin
(purchases). --idle-exit N stops it after N seconds without events (tests).
"""

import argparse
import os
import socket
import sys
import time

import psycopg


def handle(conn, event_id, payload, fail):
    if fail:
        conn.execute("SELECT credits_recharge_fail(request_id => %s, reason => 'simulated decline')",
                     (payload["request_id"],))
    else:
        # A real worker charges the card for payload["price"] payload["currency"] here,
        # with the request id as the payment provider's idempotency key.
        conn.execute("SELECT credits_purchase(account_id => %s, pack => %s, payment_ref => %s)",
                     (payload["account_id"], payload["pack"], payload["payment_ref"]))
    conn.execute("SELECT credits_events_ack(event_ids => ARRAY[%s]::bigint[])", (event_id,))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--consumer", default=f"{socket.gethostname()}:{os.getpid()}")
    ap.add_argument("--idle-exit", type=float, default=None)
    ap.add_argument("--fail", action="store_true", help="decline every payment (for trying failures)")
    args = ap.parse_args()

    listener = psycopg.connect(args.dsn, autocommit=True)
    listener.execute("LISTEN credits_events")
    conn = psycopg.connect(args.dsn, autocommit=True)
    handled = 0
    idle_since = time.monotonic()
    while True:
        rows = conn.execute(
            "SELECT event_id, payload FROM credits_events_claim(consumer => %s, max_events => 10, "
            "visibility => '30 seconds', kinds => ARRAY['recharge_requested'])",
            (args.consumer,)).fetchall()
        for event_id, payload in rows:
            # Each event in its own transaction: purchase and ack commit together.
            with conn.transaction():
                handle(conn, event_id, payload, args.fail)
            handled += 1
        if rows:
            idle_since = time.monotonic()
            continue
        if args.idle_exit is not None and time.monotonic() - idle_since > args.idle_exit:
            break
        # Wait for a NOTIFY (or poll again after a second: events whose
        # visibility ran out come back without a notification).
        for _ in listener.notifies(timeout=1.0, stop_after=1):
            pass
    print(f"{args.consumer}: handled {handled} recharge requests", file=sys.stderr)


if __name__ == "__main__":
    main()
