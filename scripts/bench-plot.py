"""Growth plot for BENCHMARKS.md: time and peak RSS of case (b) against population size.

Usage: python3 scripts/bench-plot.py growth.csv out.png  (growth.csv is written by scripts/bench)."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")  # no display on build machines
import matplotlib.pyplot as plt


def main(src, dst):
    rows = list(csv.DictReader(open(src)))
    if not rows:
        print("bench-plot: no growth rows", file=sys.stderr)
        return
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for backend in sorted({r["backend"] for r in rows}):
        rs = sorted((r for r in rows if r["backend"] == backend), key=lambda r: int(r["contacts"]))
        x = [int(r["contacts"]) for r in rs]
        t = [float(r["seconds_median"]) for r in rs]
        lo = [t_ - float(r["seconds_min"]) for t_, r in zip(t, rs)]
        hi = [float(r["seconds_max"]) - t_ for t_, r in zip(t, rs)]
        label = {"sqlite": "SQLite", "postgres": "PostgreSQL"}.get(backend, backend)
        ax_t.errorbar(x, t, yerr=[lo, hi], marker="o", capsize=3, label=label)
        ax_m.plot(x, [float(r["peak_rss_mib_median"]) for r in rs], marker="o", label=label)
    ax_t.axhline(60, color="grey", linestyle="--", linewidth=1, label="target 60 s at 1M")
    for ax in (ax_t, ax_m):
        ax.set_xscale("log")
        ax.set_xlabel("care contacts in the population")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_t.set_yscale("log")
    ax_t.set_ylabel("seconds, journal → outbox (median, min–max)")
    ax_t.set_title("Time")
    ax_m.set_ylabel("peak RSS, MiB (whole process incl. sandbox journal)")
    ax_m.set_title("Peak memory")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"bench-plot: wrote {dst}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
