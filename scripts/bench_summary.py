#!/usr/bin/env python3
"""Prints the figures of scripts/bench.sh's JSON files as the tables of docs/BENCHMARKS.md, with the targets' ratios."""
import json
import os
import re
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "target/bench"


def load(name):
    path = os.path.join(out, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None


base_wide = load("baseline_wide")
base_id = load("baseline_identity")
print("| scenario | throughput (req/s) | p50 us | p90 us | p99 us | max us | statuses | server batches (mean rows) |")
print("|---|---|---|---|---|---|---|---|")
for name in ["wide_c64_json", "wide_c64_binary", "wide_c64_grpc", "identity_c1_blocking_binary", "identity_c1_blocking_json",
             "identity_c1_hyper_binary", "identity_c1_grpc", "wide_overload_3x", "wide_overload_c512", "fraud_mlp_c1_json",
             "wide_c1_json"]:
    r = load(name)
    if not r:
        continue
    l = r["latency_ok"] or {}
    print(f"| {name} | {r['throughput_rps']:.1f} | {l.get('p50_us')} | {l.get('p90_us')} | {l.get('p99_us')} | {l.get('max_us')} "
          f"| {r['status']} | {r['server_mean_batch_rows']:.1f} |")
if base_wide:
    print()
    print("raw ONNX Runtime, wide, 1 thread: " + ", ".join(
        f"b{x['batch']} {x['rows_per_s']:.0f} rows/s (p50 {x['latency']['p50_us']} us)" for x in base_wide["results"]))
    best = base_wide["best_rows_per_s"]
    full = [x for x in base_wide["results"] if x["batch"] == 64]
    for name in ["wide_c64_json", "wide_c64_binary", "wide_c64_grpc"]:
        r = load(name)
        if r:
            print(f"{name}: {r['throughput_rows_per_s']:.0f} rows/s = {r['throughput_rows_per_s'] / best:.3f} x raw best ({best:.0f} rows/s); "
                  f"p99 {r['latency_ok']['p99_us']} us vs budget max_queue_delay 5000 + 2 x full batch "
                  f"{2 * full[0]['latency']['p50_us'] if full else '?'} us")
if base_id:
    ort = base_id["results"][0]["latency"]["p50_us"]
    for name in ["identity_c1_blocking_binary", "identity_c1_blocking_json", "identity_c1_hyper_binary", "identity_c1_grpc"]:
        r = load(name)
        if r:
            print(f"{name}: p50 {r['latency_ok']['p50_us']} us - raw run p50 {ort} us = {r['latency_ok']['p50_us'] - ort} us added")
over = load("wide_overload_3x")
sat = load("wide_c64_binary")
if over and sat:
    rej = over["latency_rejected"] or {}
    print(f"overload 3x ({over['rate_per_s']}/s): goodput {over['throughput_rps']:.0f} req/s = "
          f"{over['throughput_rps'] / sat['throughput_rps']:.3f} x saturation ({sat['throughput_rps']:.0f}); "
          f"accepted p99 {over['latency_ok']['p99_us']} us (queue timeout 1 s); rejections p50 {rej.get('p50_us')} us, p99 {rej.get('p99_us')} us")
grpc = load("wide_c64_grpc")
http = load("wide_c64_binary")
if grpc and http:
    print(f"wide c64: gRPC {grpc['throughput_rps']:.0f} req/s vs HTTP binary {http['throughput_rps']:.0f} req/s "
          f"= {grpc['throughput_rps'] / http['throughput_rps']:.3f}")
for name in ["perf_analyzer_wide_c64", "perf_analyzer_wide_c64_grpc", "perf_analyzer_identity_c1_http", "perf_analyzer_identity_c1_grpc"]:
    pa = os.path.join(out, name + ".txt")
    if os.path.exists(pa):
        text = open(pa).read()
        m = re.search(r"Throughput: ([\d.]+) infer/sec.*?p50 latency: (\d+) usec.*?p99 latency: (\d+) usec", text, re.S)
        if m:
            print(f"{name}: {m.group(1)} infer/s, p50 {m.group(2)} us, p99 {m.group(3)} us")
closed = load("wide_overload_c512")
if closed and sat:
    rej = closed["latency_rejected"] or {}
    print(f"closed-loop overload (512 clients): goodput {closed['throughput_rps']:.0f} req/s = "
          f"{closed['throughput_rps'] / sat['throughput_rps']:.3f} x saturation ({sat['throughput_rps']:.0f}); statuses {closed['status']}; "
          f"accepted p99 {closed['latency_ok']['p99_us']} us; rejections p50 {rej.get('p50_us')} us, p99 {rej.get('p99_us')} us")


def wrk(path):
    """Requests/s, answers 200/s, p50 and p99 of a wrk --latency report."""
    text = open(path).read()
    total = re.search(r"(\d+) requests in ([\d.]+)s", text)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    p50 = re.search(r"50%\s+(\S+)", text)
    p99 = re.search(r"99%\s+(\S+)", text)
    if not total:
        return None
    n, secs = int(total.group(1)), float(total.group(2))
    good = n - (int(bad.group(1)) if bad else 0)
    return n / secs, good / secs, p50.group(1) if p50 else "?", p99.group(1) if p99 else "?"


runs = {c: wrk(os.path.join(out, f"wrk_wide_c{c}.txt")) for c in (64, 512) if os.path.exists(os.path.join(out, f"wrk_wide_c{c}.txt"))}
for c, r in runs.items():
    if r:
        print(f"wrk -c{c} wide JSON: {r[0]:.0f} answers/s, {r[1]:.0f} answers 200/s, p50 {r[2]}, p99 {r[3]}")
fraud = os.path.join(out, "wrk_fraud_mlp_c64.txt")
if os.path.exists(fraud) and wrk(fraud):
    r = wrk(fraud)
    print(f"wrk -c64 fraud_mlp JSON: {r[0]:.0f} answers/s, {r[1]:.0f} answers 200/s, p50 {r[2]}, p99 {r[3]}")
if runs.get(64) and runs.get(512):
    print(f"wrk closed-loop overload goodput: {runs[512][1]:.0f} / {runs[64][1]:.0f} = {runs[512][1] / runs[64][1]:.3f} of c=64")


def queue_mean(model, when):
    path = os.path.join(out, f"metrics_{when}_c1_{model}.txt")
    if not os.path.exists(path):
        return None
    total = count = 0.0
    for line in open(path):
        m = re.match(r'sluice_queue_duration_seconds_(sum|count)\{model="' + model + r'",version="\d+"\} (\S+)', line)
        if m and m.group(1) == "sum":
            total += float(m.group(2))
        elif m:
            count += float(m.group(2))
    return total, count


for model in ("fraud_mlp", "wide"):
    before, after = queue_mean(model, "before"), queue_mean(model, "after")
    r = load(f"{model}_c1_json")
    if before and after and r and after[1] > before[1]:
        mean = (after[0] - before[0]) / (after[1] - before[1])
        print(f"{model} c=1 JSON: p50 {r['latency_ok']['p50_us']} us, p99 {r['latency_ok']['p99_us']} us, "
              f"mean queue wait {mean * 1e6:.0f} us over {after[1] - before[1]:.0f} requests")
