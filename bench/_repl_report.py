"""The tables bench/replication.py prints from the summary of its result.

Not a benchmark itself; `python bench/replication.py` finds it next to the script."""

from __future__ import annotations

from typing import Any

from _repl_base import MiB, say
from _repl_channel import CHANNEL_WINDOW
from _repl_resync import RESYNC_CASES, SUM_BLOCK

# -- report ----------------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "met" if ok else "NOT met"


def print_report(result: dict[str, Any]) -> None:
    s = result["summary"]
    st = result["settings"]
    src = result["hakit_source"]
    dirty = " with uncommitted changes" if src.get("uncommitted_changes") else ""
    start, end = result["machine"]["loadavg_at_start"], st.get("loadavg_at_end", [])
    say(
        f"\nReplication benchmark: hakit {(src.get('commit') or '?')[:10]}{dirty} "
        f"({src.get('path')}), load average at start {' '.join(start)}, at end {' '.join(end)}"
    )
    if st.get("added_rtt_ms"):
        say(f"  primary -> secondary through a delay proxy: +{st['added_rtt_ms']:g} ms round trip")
    if float(start[0]) > 1.0:  # at the end, the load is also the benchmark's own
        say("  the machine was busy at the start (load average > 1): expect noisy figures")
    if "throughput" in s:
        report_throughput(s["throughput"], st)
    if "latency" in s:
        report_latency(s["latency"], st)
    if "pgbench" in s:
        report_pgbench(s["pgbench"], st)
    if "resync" in s:
        report_resync(s["resync"], st)
    if "channel" in s:
        report_channel(s["channel"], st)
    if "metadata" in s:
        report_metadata(s["metadata"])


def report_throughput(t: dict[str, Any], st: dict[str, Any]) -> None:
    say(f"\n1. Sequential write, {st['size_mib']} MiB in 1 MiB writes + fsync (MB/s)")
    say(f"  {'configuration':28} {'runs':>4} {'median':>8} {'min':>8} {'max':>8}")
    for key, label in (
        ("direct_mb_per_s", "direct (same disk)"),
        ("sync_mb_per_s", "replicated, sync"),
    ):
        v = t[key]
        if v["n"]:
            say(f"  {label:28} {v['n']:4} {v['median']:8.1f} {v['min']:8.1f} {v['max']:8.1f}")
    pct = t["pct_of_direct"]
    if pct is not None:
        rounds = ", ".join(f"{x:.0f}" for x in t["pct_of_direct_per_round"])
        say(
            f"  replicated / direct: {pct:.1f} % (medians; per round: {rounds} %); "
            f"target >= {t['target_pct']:.0f} %: {verdict(pct >= t['target_pct'])}"
        )
    prim, sec = t["cpu_primary_ms_per_mib"], t["cpu_secondary_ms_per_mib"]
    if prim["n"]:
        say(
            f"  CPU per MiB written: primary's replication process {prim['median']:.2f} ms, "
            f"secondary's {sec['median']:.2f} ms"
        )
    if t["dropped"]:
        d = t["dropped_sync_mb_per_s"]
        say(
            f"  {t['dropped']} of {t['dropped'] + t['sync_mb_per_s']['n']} replicated runs lost "
            f"the secondary ({'; '.join(t['dropped_reasons'])}): not counted; they wrote at "
            f"{d['median']:.1f} MB/s (median), the end of it unreplicated until the resync"
        )


def report_latency(lt: dict[str, Any], st: dict[str, Any]) -> None:
    say(
        f"\n2. 4 KiB pwrite + fsync latency, {st['lat_ops']} ops x {st['rounds']} rounds "
        "(microseconds, medians of the rounds)"
    )
    say(
        f"  {'configuration':28} {'p50':>8} {'p99':>8} {'p50 x':>7} {'p99 x':>7}"
        f" {'CPU/op: primary':>16} {'secondary':>10}"
    )
    for config, label in (
        ("direct", "direct (same disk)"),
        ("sync", "replicated, sync"),
        ("semi", "replicated, semi"),
    ):
        c = lt[config]
        if not c["p50_us"]["n"]:
            continue
        line = f"  {label:28} {c['p50_us']['median']:8.0f} {c['p99_us']['median']:8.0f}"
        if c.get("p50_ratio") is not None:
            line += f" {c['p50_ratio']:6.2f}x {c['p99_ratio']:6.2f}x"
            prim, sec = c["cpu_primary_us_per_op"], c["cpu_secondary_us_per_op"]
            line += f" {prim['median']:13.0f} us {sec['median']:7.0f} us"
        say(line)
    for config in ("sync", "semi"):
        ratio = lt[config].get("p50_ratio")
        if ratio is not None:
            rounds = ", ".join(f"{x:.2f}" for x in lt[config]["p50_ratio_per_round"])
            target = lt["target_p50_ratio"]
            say(
                f"  {config} / direct, p50: {ratio:.2f}x (per round: {rounds}); "
                f"target <= {target:g}x: {verdict(ratio <= target)}"
            )
    say_dropped(lt)


def say_dropped(part: dict[str, Any]) -> None:
    if part["dropped"]:
        why = "; ".join(part["dropped_reasons"])
        say(f"  {part['dropped']} run(s) lost the secondary ({why}): not counted")


def report_pgbench(pg: dict[str, Any], st: dict[str, Any]) -> None:
    say(f"\n3. pgbench, scale {st['pgbench_scale']}, -c 4 -j 2 -T {st['pgbench_seconds']} (TPS)")
    if "skipped" in pg:
        say(f"  skipped: {pg['skipped']}")
        return
    say(
        f"  {'configuration':28} {'runs':>4} {'median':>8} {'min':>8} {'max':>8} "
        f"{'initdb s':>9} {'-i s':>6}"
    )
    for key, config, label in (
        ("plain_tps", "plain", "plain data directory"),
        ("sync_tps", "sync", "replicated, sync"),
    ):
        v, su = pg[key], pg["setup"][config]
        if v["n"]:
            say(
                f"  {label:28} {v['n']:4} {v['median']:8.1f} {v['min']:8.1f} "
                f"{v['max']:8.1f} {su['initdb_s']:9.1f} {su['pgbench_init_s']:6.1f}"
            )
    pct = pg["pct_of_plain"]
    if pct is not None:
        say(
            f"  replicated / plain: {pct:.1f} % (medians); target >= "
            f"{pg['target_pct']:.0f} %: {verdict(pct >= pg['target_pct'])}"
        )
    say_dropped(pg)


def report_resync(rs: dict[str, Any], st: dict[str, Any]) -> None:
    tg = rs["targets"]
    total = rs["data_set_bytes"]
    say(
        f"\n4. Resynchronisation, data set {total / MiB:.0f} MiB in {rs['files']} files, "
        f"{st['resync_rounds']} round(s) (medians)"
    )
    say(f"  {'case':42} {'sent MiB':>9} {'% data':>7} {'time s':>7} {'% full':>7}  compared")
    for case, label in RESYNC_CASES:
        c = rs[case]
        compared = "tracked regions" if all(c["trusted"]) else "everything, by checksums"
        if case == "full":
            compared = "nothing (empty secondary)"
        say(
            f"  {label:42} {c['bytes_sent']['median'] / MiB:9.1f} "
            f"{c['sent_pct_of_data']:7.2f} {c['seconds']['median']:7.2f} "
            f"{c['time_pct_of_full_copy']:7.1f}  {compared}"
        )
    for case in ("tracked", "tracked_8k"):
        ch = rs[case].get("change")
        if ch:
            least = ch["blocks_64k_touched"] * SUM_BLOCK / total * 100
            say(
                f"  {case}: 1 % rewritten = {ch['pieces']:.0f} pieces in "
                f"{ch['files_touched']:.0f} files, touching {ch['blocks_64k_touched']:.0f} "
                f"blocks of 64 KiB = {least:.2f} % of the data (the least a resync by "
                "64 KiB blocks can send)"
            )
    for case in ("tracked", "crash"):
        c = rs[case]
        sent, spent = c["sent_pct_of_data"], c["time_pct_of_full_copy"]
        say(
            f"  {dict(RESYNC_CASES)[case]}: sent {sent:.2f} % of the data (target <= "
            f"{tg['sent_pct_of_data']:g} %: {verdict(sent <= tg['sent_pct_of_data'])}), "
            f"time {spent:.1f} % of the full copy (target <= "
            f"{tg['time_pct_of_full_copy']:g} %: {verdict(spent <= tg['time_pct_of_full_copy'])})"
        )


def report_channel(c: dict[str, Any], st: dict[str, Any]) -> None:
    say(
        f"\n5. Channel: mutual TLS 1.3 vs plain TCP (baseline, bench only), same frames; "
        f"{c['mib']} MiB in 64 KiB writes ({CHANNEL_WINDOW} in flight), {c['small_ops']} "
        "4 KiB writes one at a time; both ends in this process"
    )
    say(f"  {'':28} {'TLS':>9} {'plain':>9} {'TLS/plain':>10}")
    for key, label, fmt in (
        ("stream_mb_per_s", "64 KiB stream, MB/s", "{:9.0f}"),
        ("cpu_s_per_gb", "CPU s per GB (both ends)", "{:9.2f}"),
        ("small_p50_us", "4 KiB round trip p50, us", "{:9.0f}"),
        ("small_p99_us", "4 KiB round trip p99, us", "{:9.0f}"),
        ("rss_growth_mib", "RSS growth, MiB", "{:9.1f}"),
    ):
        tls, plain, ratio = c["tls"][key]["median"], c["plain"][key]["median"], c[f"{key}_ratio"]
        ratio_text = f"{ratio:9.2f}x" if ratio is not None else "        -"
        say(f"  {label:28} {fmt.format(tls)} {fmt.format(plain)} {ratio_text}")


def report_metadata(m: dict[str, Any]) -> None:
    say("\n6. metadata and small files (microseconds per operation, medians of the rounds)")
    say(f"  {'workload':34} {'direct':>9} {'sync':>9} {'sync x':>8}")
    for key, label in (
        ("stat_walk_us", "lstat walk"),
        ("create_us", "create + write 4 KiB + close"),
        ("read_us", "open + read + close"),
        ("unlink_us", "unlink"),
        ("linked_chmod_stat_us", "chmod b, lstat a, lstat b"),
    ):
        d, s = m["direct"][key], m["sync"][key]
        if not d["n"] or not s["n"]:
            continue
        say(f"  {label:34} {d['median']:9.1f} {s['median']:9.1f} {m['ratio'][key]:7.2f}x")
