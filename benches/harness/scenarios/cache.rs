//! Scenario 10: the response cache. The same deterministic body goes straight to a zero-work
//! sim, through nginx, and through switchyard with `[routes.cache]`, where every measured
//! request is a hit (each connection's warm-up request fills the entry). Hit latency at
//! concurrency 1, then closed-loop throughput and CPU per request. The targets: a hit faster
//! than a direct request to the sim, and at least nginx's throughput.

use super::*;

/// A greedy (temperature 0) chat request: eligible by default.
fn cached_body() -> String {
    serde_json::json!({
        "model": MODEL,
        "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8,
    })
    .to_string()
}

/// How many connections the throughput run keeps busy.
const THROUGHPUT_CONCURRENCY: usize = 16;

pub(super) fn cache_hits(ctx: &Ctx) -> Result<ScenarioResult> {
    let env = ctx.one_cpu_env();
    let sim = Sim::start(&env, "s10-a", SimTiming::default())?;
    let nginx = Nginx::start(&env, "s10", &NginxConf::new(local(free_port()), sim.addr));
    let policy = Policy::single(local(free_port()), local(free_port()), &sim);
    let text = policy.render() + "\n  [routes.cache]\n  ttl_s = 3600\n";
    let switchyard = Switchyard::start_text(&env, "s10", policy.listen, policy.admin, &text)
        .map_err(|e| format!("did not start: {e}"));
    let stack = Stack {
        sims: vec![sim],
        nginx,
        switchyard,
    };
    let mut result = ScenarioResult::new("Response cache hits vs a zero-work upstream");
    // pingora's HTTP/1 session answering every request itself: the least a hit can cost on the
    // sessions switchyard is built on, measured beside the others.
    let floor = Floor::start(&env, "s10", None);
    let targets = stack.targets_with(&floor);

    let mut latency = BTreeMap::new();
    for t in &targets {
        let mut spec = ctx.spec(cached_body());
        spec.max_requests = Some(ctx.p.c1_samples);
        spec.duration = Duration::from_secs(60);
        let (_, r) = ctx.run(t, spec);
        latency.insert(t.kind, r);
    }
    let p = |k: Kind, q: Quantile| latency.get(&k)?.latency.map(|l| l.at(q));
    let [d, n, s] = cells(&stack, |k| {
        Some(format!(
            "{:.0} / {:.0}",
            p(k, Quantile::P50)?,
            p(k, Quantile::P99)?
        ))
    });
    let hit_vs_direct = p(Kind::Switchyard, Quantile::P50)
        .zip(p(Kind::Direct, Quantile::P50))
        .filter(|(_, d)| *d > 0.0)
        .map(|(s, d)| s / d);
    result.rows.push(Row {
        metric: "concurrency 1: p50 / p99 µs (switchyard: cache hits); ratio hit p50 ÷ direct p50"
            .into(),
        cells: [d, n, s],
        ratio: hit_vs_direct,
        target: Some(Verdict::at_most(
            "a hit faster than a direct request (ratio < 1)",
            hit_vs_direct,
            1.0,
        )),
    });

    let mut throughput = BTreeMap::new();
    for t in &targets {
        let mut spec = ctx.spec(cached_body());
        spec.mode = Mode::Closed {
            concurrency: THROUGHPUT_CONCURRENCY,
        };
        spec.duration = ctx.p.cpu_duration;
        let (_, r) = ctx.run(t, spec);
        throughput.insert(t.kind, r);
    }
    let rps = |k: Kind| throughput.get(&k).map(|r| r.achieved_rps);
    let rate = |k: Kind| {
        let r = throughput.get(&k)?;
        Some(match r.cpu_us_per_req {
            Some(cpu) => format!("{:.0} req/s, {cpu:.1} µs CPU/req", r.achieved_rps),
            None => format!("{:.0} req/s", r.achieved_rps),
        })
    };
    let [d, n, s] = cells(&stack, rate);
    let nginx_vs_hits = rps(Kind::Nginx)
        .zip(rps(Kind::Switchyard))
        .filter(|(_, s)| *s > 0.0)
        .map(|(n, s)| n / s);
    result.rows.push(Row {
        metric: format!(
            "closed loop, {THROUGHPUT_CONCURRENCY} connections: throughput and CPU per request; ratio nginx ÷ switchyard"
        ),
        cells: [d, n, s],
        ratio: nginx_vs_hits,
        target: Some(Verdict::at_most(
            "hits at least at nginx's throughput (ratio ≤ 1)",
            nginx_vs_hits,
            1.0,
        )),
    });

    let floor_cell = match &floor {
        Ok(_) => p(Kind::Floor, Quantile::P50)
            .zip(p(Kind::Floor, Quantile::P99))
            .zip(rate(Kind::Floor))
            .map_or_else(
                || Cell::na("no data"),
                |((p50, p99), rate)| Cell::text(format!("{p50:.0} / {p99:.0}; {rate}")),
            ),
        Err(e) => Cell::na(e),
    };
    result.rows.push(Row {
        metric: "pingora floor, pingora's HTTP/1 session answering by itself (switchyard column): p50 / p99 µs at concurrency 1; throughput; ratio its p50 ÷ direct p50".into(),
        cells: [
            Cell::na("not available: a proxy's row"),
            Cell::na("not available: a proxy's row"),
            floor_cell,
        ],
        ratio: p(Kind::Floor, Quantile::P50)
            .zip(p(Kind::Direct, Quantile::P50))
            .filter(|(_, d)| *d > 0.0)
            .map(|(f, d)| f / d),
        target: None,
    });

    // The figures are only about hits if the sim saw (almost) none of switchyard's requests:
    // the admin API counts them.
    if stack.switchyard.is_ok() {
        match blocking_request(
            policy.admin,
            "GET",
            "/admin/cache",
            None,
            "",
            Duration::from_secs(5),
        ) {
            Ok((200, body)) => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let route = &v["routes"][0];
                result.notes.push(format!(
                    "switchyard cache: {} L1 hits, {} flight hits, {} misses",
                    route["hits"]["l1"], route["hits"]["flight"], route["misses"]
                ));
            }
            Ok((status, _)) => result
                .notes
                .push(format!("GET /admin/cache answered {status}")),
            Err(e) => result.notes.push(format!("GET /admin/cache failed: {e}")),
        }
    }
    result.notes.extend(errors_note(&latency));
    result.notes.extend(errors_note(&throughput));
    result.notes.push(
        "direct and nginx go to a sim with no generation delay (the zero-work upstream); switchyard answers from its cache".into(),
    );
    for (k, r) in latency {
        store(&mut result, &format!("{}/c1", k.name()), r);
    }
    for (k, r) in throughput {
        store(&mut result, &format!("{}/throughput", k.name()), r);
    }
    Ok(result)
}
