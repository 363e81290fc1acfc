//! Scenario 7: a canary split with a 100 % shadow to a slow sim, shadow off vs on.

use super::*;

/// Responses a sim has sent so far, from its `/metrics`.
fn sim_responses(sim: &Sim) -> Option<u64> {
    let (status, text) = blocking_request(
        sim.addr,
        "GET",
        "/metrics",
        None,
        "",
        Duration::from_secs(2),
    )
    .ok()?;
    if status != 200 {
        return None;
    }
    let total = text
        .lines()
        .filter(|l| l.starts_with("switchyard_sim_responses_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    Some(total as u64)
}

/// The gateway's own shadow counters of the first route, from `/admin/shadow`.
fn shadow_report(sy: &Switchyard) -> Option<String> {
    let (status, text) = blocking_request(
        sy.admin,
        "GET",
        "/admin/shadow",
        None,
        "",
        Duration::from_secs(2),
    )
    .ok()?;
    // The body may be chunked; the JSON is what lies between the outer braces.
    let json = &text[text.find('{')?..=text.rfind('}')?];
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let route = value.get("routes")?.get(0)?;
    let fields = ["mirrored", "dropped", "compared", "shadow_errors"]
        .map(|f| format!("{f} {}", route.get(f).unwrap_or(&serde_json::Value::Null)));
    (status == 200).then(|| fields.join(", "))
}

pub(super) fn shadow(ctx: &Ctx) -> Result<ScenarioResult> {
    let champion = Sim::start(&ctx.env, "s7-champion", SimTiming::default())?;
    let canary = Sim::start(&ctx.env, "s7-canary", SimTiming::default())?;
    let slow = Sim::start(
        &ctx.env,
        "s7-shadow",
        SimTiming {
            ttft_ms: ctx.p.shadow_delay_ms,
            tpot_ms: 0,
        },
    )?;
    let policy = |shadow| Policy {
        listen: local(free_port()),
        admin: local(free_port()),
        backends: [&champion, &canary, &slow]
            .iter()
            .map(|s| PolicyBackend {
                name: s.name.clone(),
                addr: s.addr,
            })
            .collect(),
        arms: vec![
            PolicyArm {
                name: "champion".into(),
                backends: vec![champion.name.clone()],
                weight: 90,
            },
            PolicyArm {
                name: "canary".into(),
                backends: vec![canary.name.clone()],
                weight: 10,
            },
        ],
        shadow,
        threads: 1,
    };
    let mut missing: BTreeMap<&str, String> = BTreeMap::new();

    // Every variant stays up for the whole scenario so rounds can alternate
    // between them: off and on see the same machine drift.
    let mut nginx = BTreeMap::new();
    for (key, mirror) in [("nginx/off", None), ("nginx/on", Some(slow.addr))] {
        let conf = NginxConf {
            listen: local(free_port()),
            upstreams: vec![(champion.addr, 9), (canary.addr, 1)],
            mirror,
            workers: 1,
        };
        match Nginx::start(&ctx.env, &key.replace('/', "-"), &conf) {
            Ok(n) => {
                nginx.insert(key, n);
            }
            Err(e) => {
                missing.insert(key, e);
            }
        }
    }
    let mut gateways = BTreeMap::new();
    for (key, shadow) in [
        ("switchyard/off", None),
        ("switchyard/on", Some((slow.name.clone(), 100, 64))),
    ] {
        let policy = policy(shadow);
        let tag = key.replace('/', "-");
        let on = policy.shadow.is_some();
        // A gateway without shadow support rejects the table: report that,
        // don't fail the suite.
        let checked = if on {
            Switchyard::check(&ctx.env, &tag, &policy).map_err(|e| format!("switchyard check: {e}"))
        } else {
            Ok(())
        };
        match checked.and_then(|()| start_switchyard(&ctx.env, &tag, &policy)) {
            Ok(sy) => {
                gateways.insert(key, sy);
            }
            Err(e) if on => {
                missing.insert(key, format!("not available: shadow not implemented ({e})"));
            }
            Err(e) => {
                missing.insert(key, e);
            }
        }
    }

    // (key, target, also load the shadow sim directly)
    let mut variants: Vec<(&str, Target, bool)> = ["direct/off", "direct/on"]
        .iter()
        .map(|key| {
            let t = Target {
                kind: Kind::Direct,
                addr: champion.addr,
                pid: champion.proc.pid(),
            };
            (*key, t, key.ends_with("/on"))
        })
        .collect();
    for (key, n) in &nginx {
        let t = Target {
            kind: Kind::Nginx,
            addr: n.addr,
            pid: n.proc.pid(),
        };
        variants.push((key, t, false));
    }
    for (key, sy) in &gateways {
        let t = Target {
            kind: Kind::Switchyard,
            addr: sy.addr,
            pid: sy.proc.pid(),
        };
        variants.push((key, t, false));
    }

    let spec = || {
        let mut spec = ctx.spec(chat_body(16));
        spec.mode = Mode::Open {
            rate: ctx.p.shadow_rate,
            connections: 64,
        };
        spec.duration = ctx.p.shadow_duration / ctx.p.shadow_rounds;
        spec
    };
    let mut recs: BTreeMap<&str, Recorder> = BTreeMap::new();
    let mut mirrored: Option<u64> = Some(0);
    for round in 0..ctx.p.shadow_rounds as usize {
        for i in 0..variants.len() {
            let (key, target, copies) = variants[(i + round) % variants.len()];
            // The control for "on" without a proxy: the same copies sent
            // straight to the shadow sim alongside the primary load.
            let beside = copies.then(|| {
                let mut s = spec();
                s.addr = slow.addr;
                s
            });
            let before = sim_responses(&slow);
            let (rec, _) = ctx.run_beside(&target, spec(), beside);
            if key == "switchyard/on" {
                let after = sim_responses(&slow);
                mirrored = mirrored
                    .zip(after.zip(before))
                    .map(|(m, (a, b))| m + a.saturating_sub(b + 1));
            }
            recs.entry(key).or_default().merge(&rec);
        }
    }

    let mut result = ScenarioResult::new("Canary 90/10 with a 100 % shadow to a slow sim");
    if let Some(sy) = gateways.get("switchyard/on") {
        result.notes.push(format!(
            "switchyard/on: the shadow sim answered {} requests; /admin/shadow: {}",
            mirrored.map_or("an unknown number of".into(), |m| m.to_string()),
            shadow_report(sy).unwrap_or_else(|| "unavailable".into())
        ));
        if mirrored == Some(0) {
            recs.remove("switchyard/on");
            missing.insert(
                "switchyard/on",
                "not available: policy accepted but nothing reached the shadow sim".into(),
            );
        }
    }
    let mut p99: BTreeMap<&str, f64> = BTreeMap::new();
    let mut p50: BTreeMap<&str, f64> = BTreeMap::new();
    for (key, rec) in &recs {
        let r = rec.report(key);
        if let Some(l) = r.latency {
            p99.insert(key, l.p99_us);
            p50.insert(key, l.p50_us);
        }
        if r.errors > 0 {
            result
                .notes
                .push(format!("{key}: {} errors {:?}", r.errors, r.error_kinds));
        }
        store(&mut result, key, r);
    }

    let change = |proxy: &str| {
        let off = p99.get(format!("{proxy}/off").as_str())?;
        let on = p99.get(format!("{proxy}/on").as_str())?;
        Some((on / off - 1.0) * 100.0)
    };
    let cell = |proxy: &str| {
        let (off_key, on_key) = (format!("{proxy}/off"), format!("{proxy}/on"));
        let why = |key: &str| {
            missing
                .get(key)
                .map_or("no data", |s| s.as_str())
                .to_owned()
        };
        let Some(off) = p99.get(off_key.as_str()) else {
            return Cell::na(&why(&off_key));
        };
        let median = |key: &str| p50.get(key).map_or("?".into(), |v| format!("{v:.0}"));
        match (p99.get(on_key.as_str()), change(proxy)) {
            (Some(on), Some(pct)) => Cell::text(format!(
                "{off:.0} → {on:.0} ({pct:+.1} %); p50 {} → {}",
                median(&off_key),
                median(&on_key)
            )),
            _ => Cell::text(format!("{off:.0} → {}", why(&on_key))),
        }
    };
    result.rows.push(Row {
        metric: "primary p99 µs, shadow off → on (change); p50".into(),
        cells: [cell("direct"), cell("nginx"), cell("switchyard")],
        ratio: None,
        target: Some(Verdict::at_most(
            "shadow moves primary p99 ≤ 10 %",
            change("switchyard"),
            10.0,
        )),
    });
    result.notes.push(format!(
        "{:.0} req/s open loop, {} interleaved rounds, {:?} per variant in all; shadow sim answers after {} ms; nginx's shadow is `mirror` with the request body; direct \"on\" sends the same copies straight to the shadow sim (the floor: what the shadow's work costs the primary on this machine with no proxy)",
        ctx.p.shadow_rate, ctx.p.shadow_rounds, ctx.p.shadow_duration, ctx.p.shadow_delay_ms
    ));
    Ok(result)
}
