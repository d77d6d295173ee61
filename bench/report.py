#!/usr/bin/env python3
"""Turns the load tool's JSON lines into the markdown tables of BENCHMARKS.md."""
import json
import statistics
import sys

TARGETS = ["relay", "relay-v2", "nats", "mosquitto", "node", "floor"]
PEERS = ["nats", "mosquitto", "node"]


def fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def main(path):
    runs, ingest, sqs, client = [], [], [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if r.get("kind") == "client":
                client.append(r)
            elif r.get("kind") == "sqs":
                sqs.append(r)
            elif "messages_per_s" in r:
                ingest.append(r)
            else:
                runs.append(r)
    order = lambda r: (r.get("label", ""), TARGETS.index(r["target"]) if r.get("target") in TARGETS else 9)

    print("### Connections and memory\n")
    print("| scenario | server | subscribers | connected | failed | connect time s | connect p99 ms | RSS idle MB | RSS connected MB | KB / idle conn | peak RSS MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(runs, key=order):
        if "error" in r:
            print(f"| {r['label']} | {r['target']} | {fmt(r['subs'])} | failed | | | | | | | |")
            continue
        mb = lambda k: fmt(r[k] / 1024, 1) if r.get(k) else "–"
        print(f"| {r['label']} | {r['target']} | {fmt(r['subs'])} | {fmt(r['connected'])} | {fmt(r['failed'])} | "
              f"{fmt(r['connect_secs'], 2)} | {fmt(r['connect_p99_ms'])} | {mb('rss_idle_kb')} | {mb('rss_connected_kb')} | "
              f"{fmt(r['kb_per_conn'], 1)} | {mb('rss_peak_kb')} |")

    print("\n### Delivery\n")
    print("Offered = messages/s published × subscribers per site. CPU-s/M = server CPU seconds per million "
          "deliveries. Latency: publish (sender's clock, just before the write) → kernel receive timestamp "
          "of the subscriber's socket.\n")
    print("| scenario | phase | server | offered deliveries/s | delivered/s | lost | disconnected | server CPU-s/M | server CPU % | load tool CPU % | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    cells = {}
    for r in sorted(runs, key=order):
        for p in r.get("phases", []):
            offered = p["ticks_per_s"] * p["per_tick"] * r["connected"] / r["sites"]
            cells[(r["label"], p["phase"], r["target"])] = p
            print(f"| {r['label']} ({fmt(r['subs'])} subs, {r['sites']} site{'s' if r['sites'] > 1 else ''}) | {p['phase']} | {r['target']} | "
                  f"{fmt(int(offered))} | {fmt(int(p['delivered_per_s']))} | {fmt(p['lost'])} | {fmt(p['disconnected'])} | "
                  f"{fmt(p['server_cpu_s_per_m'], 1)} | {fmt(p['server_cpu_pct'], 0)} | {fmt(p['tool_cpu_pct'], 0)} | "
                  f"{fmt(p['p50_ms'], 2)} | {fmt(p['p90_ms'], 2)} | {fmt(p['p99_ms'], 2)} | {fmt(p['p999_ms'], 2)} | {fmt(p['max_ms'], 1)} |")

    print("\n### Relay CPU per million deliveries against the best peer (target: ratio ≤ 0.5)\n")
    print("floor: `loadgen floor`, which does nothing but write what it has read to each subscriber, one blocking "
          "write per subscriber per batch; its ratio is the lowest a server that does not hold messages back "
          "can reach here.\n")
    print("| scenario | phase | relay | relay-v2 | best peer | ratio relay | ratio v2 | floor | ratio floor |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    seen = []
    for (label, phase, _t) in cells:
        if (label, phase) not in seen:
            seen.append((label, phase))
    for label, phase in seen:
        best, who = best_peer(cells, label, phase)
        if who is None:
            continue
        rel = cells.get((label, phase, "relay"), {}).get("server_cpu_s_per_m")
        v2 = cells.get((label, phase, "relay-v2"), {}).get("server_cpu_s_per_m")
        floor = cells.get((label, phase, "floor"), {}).get("server_cpu_s_per_m")
        ratio = lambda v: fmt(v / best, 2) if v is not None and best > 0 else "–"
        print(f"| {label} | {phase} | {fmt(rel, 1)} | {fmt(v2, 1)} | {who} {fmt(best, 1)} | {ratio(rel)} | {ratio(v2)} | "
              f"{fmt(floor, 1)} | {ratio(floor)} |")
    repeated_table(cells, seen)

    if ingest or sqs:
        print("\n### Ingest\n")
        print("| path | messages | per request | connections | messages/s | server CPU ms per 1k messages |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in ingest:
            print(f"| {r['label']} | {fmt(r['messages'])} | {r['batch']} | {r['conns']} | {fmt(int(r['messages_per_s']))} | {fmt(r['server_cpu_ms_per_1k'], 1)} |")
        for r in sqs:
            net = r.get("net_cpu_ms_per_1k")
            cost = fmt(r['server_cpu_ms_per_1k'], 1) + (f" ({fmt(net, 1)} net of idle)" if net is not None else "")
            print(f"| {r['label']} | {fmt(r['messages'])} | 10 (SQS batch) | {r['pollers']} pollers | {fmt(int(r['messages_per_s']))} | {cost} |")
    client_table(client)




def best_peer(cells, label, phase):
    """The lowest CPU per million among the peers in this run and phase, and which peer; (None, None) if none ran."""
    peers = [(cells[(label, phase, t)]["server_cpu_s_per_m"], t) for t in PEERS if (label, phase, t) in cells]
    return min(peers) if peers else (None, None)


def repeated_table(cells, seen):
    """With BENCH_REPEAT, labels are `scenario#run`: each ratio's range and median over the runs."""
    groups = {}
    for label, phase in seen:
        if "#" in label:
            groups.setdefault((label.split("#")[0], phase), []).append(label)
    if not groups:
        return
    print("\n### Over the repeated runs: range and median of each ratio to the best peer of the same run\n")
    print("| scenario | phase | runs | best peer CPU-s/M | ratio relay | ratio v2 | ratio floor |")
    print("|---|---|---:|---|---|---|---|")
    for (scenario, phase), labels in groups.items():
        ratios = {"relay": [], "relay-v2": [], "floor": []}
        bests = []
        for label in labels:
            best, who = best_peer(cells, label, phase)
            if who is None or best <= 0:
                continue
            bests.append(best)
            for t in ratios:
                if (label, phase, t) in cells:
                    ratios[t].append(cells[(label, phase, t)]["server_cpu_s_per_m"] / best)
        span = lambda v: f"{fmt(min(v), 2)}–{fmt(max(v), 2)} (median {fmt(statistics.median(v), 2)})" if v else "–"
        print(f"| {scenario} | {phase} | {len(bests)} | {fmt(min(bests), 1)}–{fmt(max(bests), 1)} | "
              f"{span(ratios['relay'])} | {span(ratios['relay-v2'])} | {span(ratios['floor'])} |")


def client_table(client):
    for c in client:
        print("\n### Client dispatch (headless Chromium, v2 stream)\n")
        print("| handler | messages | wall ms | messages/s (wall) | main-thread script s | main-thread task s | messages per script-second |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for k, name in (("plain", "plain WebSocket + JSON.parse"), ("sdk", "WASM SDK `on` callbacks")):
            r = c[k]
            print(f"| {name} | {fmt(r['messages'])} | {fmt(r['ms'])} | {fmt(r['messages_per_s'])} | {r['script_s']} | {r['task_s']} | {fmt(r['messages_per_script_s'])} |")
        cpu = f"main-thread CPU time {c['sdk_vs_plain_cpu']}×, " if "sdk_vs_plain_cpu" in c else ""
        print(f"\nSDK / plain: {cpu}main-thread task time {c['sdk_vs_plain_task']}×, script time {c['sdk_vs_plain_script']}×, "
              f"wall {c['sdk_vs_plain_wall']}× (target ≤ 1.2×). Bundle (wasm + glue + dispatcher + wrapper), gzip -9: "
              f"{c['bundle_gzip_total'] / 1024:.1f} KB.")


if __name__ == "__main__":
    main(sys.argv[1])
