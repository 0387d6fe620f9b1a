#!/usr/bin/env python3
"""Renders an account's usage dashboard to PNG, straight from the views:
the usage ring (credits.account_summary) and day-over-day usage per
product, stacked (credits_usage_daily), like the products' own dashboards.

    python3 examples/usage_chart.py --dsn "host=127.0.0.1 port=25430 user=postgres dbname=credits" \\
        --account acme --days 30 --out usage.png

The role needs credits_reader (or more)."""

import argparse
import datetime

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import psycopg  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--account", required=True)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--to", help="last day (YYYY-MM-DD), default today (UTC)")
    ap.add_argument("--out", default="usage.png")
    args = ap.parse_args()

    to_day = datetime.date.fromisoformat(args.to) if args.to else datetime.datetime.utcnow().date()
    from_day = to_day - datetime.timedelta(days=args.days - 1)
    with psycopg.connect(args.dsn) as conn:
        ring = conn.execute(
            "SELECT used, allocation, percent_used, reserved, available, overage, next_reset, days_until_reset "
            "FROM credits.account_summary WHERE account_id = %s", (args.account,)).fetchone()
        if ring is None:
            raise SystemExit(f"no account {args.account!r}")
        rows = conn.execute("SELECT day, product, net_used FROM credits_usage_daily(%s, %s, %s)",
                            (args.account, from_day, to_day)).fetchall()

    used, allocation, percent, reserved, available, overage, next_reset, days_left = ring
    days = [from_day + datetime.timedelta(days=i) for i in range(args.days)]
    products = sorted({p for _, p, _ in rows})
    series = {p: [0.0] * len(days) for p in products}
    for day, product, net in rows:
        series[product][(day - from_day).days] = float(net)

    fig, (ax_ring, ax_bars) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2.6]})
    shown = min(float(percent or 0), 100.0)
    ax_ring.pie([shown, 100.0 - shown], startangle=90, counterclock=False, colors=["#4f46e5", "#e5e7eb"],
                wedgeprops={"width": 0.28})
    ax_ring.text(0, 0.08, f"{percent or 0}%", ha="center", va="center", fontsize=22, weight="bold")
    ax_ring.text(0, -0.22, f"{used} of {allocation} credits", ha="center", va="center", fontsize=10)
    ax_ring.set_title(f"{args.account}: resets {next_reset:%Y-%m-%d} ({days_left} days)\n"
                      f"reserved {reserved}, available {available}, overage {overage}", fontsize=10)

    bottom = [0.0] * len(days)
    for product in products:
        ax_bars.bar(days, series[product], bottom=bottom, label=product, width=0.8)
        bottom = [b + v for b, v in zip(bottom, series[product])]
    ax_bars.set_title(f"Credits used per day and product, {from_day} to {to_day}", fontsize=10)
    ax_bars.set_ylabel("credits")
    if products:
        ax_bars.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
