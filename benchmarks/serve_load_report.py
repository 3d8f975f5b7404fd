"""The aims and the printed table of benchmarks/serve_load.py (each aim against the phases of one run)."""

from __future__ import annotations


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def aims(out: dict, args) -> list[dict]:
    ph, ip = out["phases"], out["in_process"]

    def aim(name, value, target, ok):
        return {"aim": name, "value": value, "target": target, "met": None if value is None else bool(ok)}

    rows = []
    for key, kind, unit, goal in (("a_text", "text", "tokens_per_s", 0.7), ("b_images_4", "image", "images_per_s", 0.7),
                                  ("c_images_1", "image", "images_per_s", 0.4)):
        v = ratio(ph.get(key, {}).get(unit), ip.get(kind, {}).get(unit))
        rows.append(aim(f"{key}: server {unit} / in-process batched", v, f">= {goal}", v is not None and v >= goal))
    for kind in ("text", "image"):
        o, u = ph.get(f"d_overload_{kind}"), ph.get(f"d_unloaded_{kind}")
        if o:
            fives = sum(n for s, n in o["statuses"].items() if s.startswith("5"))
            rows.append(aim(f"{kind} overload: 5xx", fives, "== 0", fives == 0))
            v = ratio(o["p99_ms"], u and u["p99_ms"])
            rows.append(aim(f"{kind} overload: p99 of admitted / unloaded p99", v, "<= 2", v is not None and v <= 2))
            v = o.get("p99_vs_p99_at_clients")
            rows.append(aim(f"{kind} overload: p99 of admitted / p99 at {args.clients} clients (1x load)", v, "<= 2",
                            v is not None and v <= 2))
        r = ph.get(f"d_retry_after_{kind}")
        if r:
            v = r["relative_error_median"]
            rows.append(aim(f"{kind}: Retry-After vs the wait seen (median |R-W|/W)", v, "<= 0.5", v is not None and v <= 0.5))
    two, one = ph.get("e_two_replicas"), ph.get("a_text")
    if two and one:
        v, cores = ratio(two["tokens_per_s"], one["tokens_per_s"]), two["cpu_s_per_s"]["cores"]
        row = aim(f"two replicas / one (text tokens/s; {cores} cores)", v, ">= 1.6 given the cores", v >= 1.6)
        if cores < 4:
            row["met"], row["why"] = None, f"{cores} cores: each replica's model threads already use them all"
        rows.append(row)
    for free, torch_phase, unit in (("g_free_text", "a_text", "tokens_per_s"),
                                    ("g_free_images_1", "c_images_1", "images_per_s")):
        if ph.get(free) and ph.get(torch_phase):
            v = ratio(ph[free][unit], ph[torch_phase][unit])
            rows.append(aim(f"torch-free server of the export / torch server ({unit})", v, ">= 1", v is not None and v >= 1))
    for key, kind, unit, goal in (("w_text", "text", "tokens_per_s", 0.7), ("w_images_4", "image", "images_per_s", 0.7),
                                  ("w_images_1", "image", "images_per_s", 0.4)):
        v = ratio(ph.get(key, {}).get(unit), ip.get(kind, {}).get(unit))
        if v is not None:
            rows.append(aim(f"{key} (--workers {args.workers}): server {unit} / in-process batched", v, f">= {goal}",
                            v >= goal))
    for now, before, unit in (("a_text", "z_before_text", "tokens_per_s"), ("b_images_4", "z_before_images_4",
                              "images_per_s"), ("c_images_1", "z_before_images_1", "images_per_s")):
        if ph.get(now) and ph.get(before):
            v = ratio(ph[now][unit], ph[before][unit])
            rows.append({"aim": f"{now}: this server / the earlier server (--before-src), same load and run", "value": v,
                         "target": "> 1", "met": None if v is None else v > 1})
    f = ph.get("e_failover")
    if f:
        rows.append(aim("one replica stopped mid-run: failed requests", f["failed"], "== 0", f["failed"] == 0))
    return rows


def table(out: dict) -> str:
    lines = [f"{'phase':<20}{'conns':>6}{'req/s':>8}{'tok|img/s':>10}{'% in-proc':>10}{'p50 ms':>9}{'p95 ms':>9}"
             f"{'p99 ms':>9}  statuses            cpu-s/s server/nginx/wrk/bench/other"]
    for name, r in out["phases"].items():
        if "clients" not in r or "statuses" not in r:  # the HTTP ceiling: a line of its own
            if "requests_per_s" in r:
                lines.append(f"{name:<20}{r['clients']:>6}{r['requests_per_s']:>8}   (GET /healthz: the HTTP stack's ceiling)")
            continue
        kind = "text" if "tokens_per_s" in r else "image"
        amount = r.get("tokens_per_s", r.get("images_per_s"))
        share = ratio(amount, out["in_process"].get(kind, {}).get("tokens_per_s" if kind == "text" else "images_per_s"))
        c = r["cpu_s_per_s"]
        cpu = "/".join(f"{c.get(k, 0):.2f}" for k in ("server", "nginx", "load_generator", "benchmark_process", "other"))
        st = " ".join(f"{k}:{v}" for k, v in sorted(r["statuses"].items())) + (f" err:{r['failed']}" if r["failed"] else "")
        lines.append(f"{name:<20}{r['clients']:>6}{r['requests_per_s']:>8}{amount:>10}{'' if share is None else f'{share:.0%}':>10}"
                     f"{str(r['p50_ms']):>9}{str(r['p95_ms']):>9}{str(r['p99_ms']):>9}  {st:<20}{cpu}")
    for a in out["aims"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[a["met"]]
        lines.append(f"  [{verdict}] {a['aim']}: {a['value']} (aim {a['target']})")
    return "\n".join(lines)
