//! Scenario 6: policy swaps (switchyard) and reloads (nginx) under load.

use super::*;

/// What a series of policy swaps (or nginx reloads) came to.
#[derive(Debug, Default)]
struct SwapTally {
    accepted: u32,
    attempted: u32,
    slowest: Duration,
    first_error: Option<String>,
}

/// Calls `swap(i)` `count` times, `every` apart, starting `every` from now.
fn run_swaps(every: Duration, count: u32, swap: &(dyn Fn(u32) -> Result<()> + Sync)) -> SwapTally {
    let mut tally = SwapTally::default();
    let start = Instant::now();
    for i in 0..count {
        let at = start + every * (i + 1);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let t = Instant::now();
        let outcome = swap(i);
        tally.slowest = tally.slowest.max(t.elapsed());
        tally.attempted += 1;
        match outcome {
            Ok(()) => tally.accepted += 1,
            Err(e) => {
                tally.first_error.get_or_insert(e);
            }
        }
    }
    tally
}

pub(super) fn swap_under_load(ctx: &Ctx) -> Result<ScenarioResult> {
    let a = Sim::start(&ctx.env, "s6-a", SimTiming::default())?;
    let b = Sim::start(&ctx.env, "s6-b", SimTiming::default())?;
    let conf_a = NginxConf::new(local(free_port()), a.addr);
    let conf_b = NginxConf::new(conf_a.listen, b.addr);
    let nginx = Nginx::start(&ctx.env, "s6", &conf_a);
    let policy_a = {
        let mut p = Policy::single(local(free_port()), local(free_port()), &a);
        p.backends.push(PolicyBackend {
            name: b.name.clone(),
            addr: b.addr,
        });
        p
    };
    let policy_b = {
        let mut p = policy_a.clone();
        p.arms[0].backends = vec![b.name.clone()];
        p
    };
    let (toml_a, toml_b) = (policy_a.render(), policy_b.render());
    let switchyard = start_switchyard(&ctx.env, "s6", &policy_a);
    let stack = Stack {
        sims: vec![a, b],
        nginx,
        switchyard,
    };

    let swaps = ctx.p.swaps;
    let every = ctx.p.swap_duration / (swaps + 1);
    let mut result = ScenarioResult::new("Policy swap under load (open loop)");
    let mut reports = BTreeMap::new();
    let mut tallies = BTreeMap::new();
    for t in stack.targets() {
        let mut spec = ctx.spec(chat_body(16));
        spec.mode = Mode::Open {
            rate: ctx.p.swap_rate,
            connections: 16,
        };
        // Direct has nothing to swap: a shorter run gives its baseline.
        spec.duration = match t.kind {
            Kind::Direct => ctx.p.swap_duration / 3,
            _ => ctx.p.swap_duration,
        };
        let swap: Option<Box<dyn Fn(u32) -> Result<()> + Sync + '_>> =
            match (t.kind, &stack.nginx, &stack.switchyard) {
                (Kind::Nginx, Ok(n), _) => Some(Box::new(|i: u32| {
                    n.reload(if i.is_multiple_of(2) {
                        &conf_b
                    } else {
                        &conf_a
                    })
                })),
                (Kind::Switchyard, _, Ok(sy)) => Some(Box::new(|i: u32| {
                    let body = if i.is_multiple_of(2) {
                        &toml_b
                    } else {
                        &toml_a
                    };
                    let token = Some(ctx.env.token.as_str());
                    match blocking_request(
                        sy.admin,
                        "PUT",
                        "/admin/config",
                        token,
                        body,
                        Duration::from_secs(5),
                    ) {
                        Ok((200, _)) => Ok(()),
                        Ok((status, body)) => Err(format!("HTTP {status}: {body:.200}")),
                        Err(e) => Err(e.to_string()),
                    }
                })),
                _ => None,
            };
        let (r, tally) = std::thread::scope(|scope| {
            let swapper = swap
                .as_deref()
                .map(|f| scope.spawn(move || run_swaps(every, swaps, f)));
            let (_, r) = ctx.run(&t, spec);
            (
                r,
                swapper.map(|h| h.join().expect("swapper thread does not panic")),
            )
        });
        if let Some(tally) = tally {
            tallies.insert(t.kind, tally);
        }
        reports.insert(t.kind, r);
    }
    let [d, n, s] = cells(&stack, |k| {
        let r = reports.get(&k)?;
        let p99 = r.latency?.p99_us;
        Some(match tallies.get(&k) {
            None => format!("{} errors; p99 {p99:.0} µs", r.errors),
            Some(t) => format!(
                "{} errors; {}/{} swaps; p99 {p99:.0} µs",
                r.errors, t.accepted, t.attempted
            ),
        })
    });
    let sy_errors = reports.get(&Kind::Switchyard).map(|r| r.errors as f64);
    result.rows.push(Row {
        metric: "request errors; swaps accepted; p99 latency".into(),
        cells: [d, n, s],
        ratio: None,
        target: Some(Verdict::at_most("0 errors across swaps", sy_errors, 0.0)),
    });
    result.notes = errors_note(&reports);
    result.notes.push(format!(
        "{:.0} req/s for {:?}; {swaps} swaps {every:?} apart alternating the arm between two sims. nginx: config rewritten + SIGHUP (its reload); switchyard: PUT /admin/config",
        ctx.p.swap_rate, ctx.p.swap_duration
    ));
    for (k, t) in &tallies {
        let served = reports.get(k).map(|r| &r.backends);
        result.notes.push(format!(
            "{}: slowest swap {:?}; responses by sim {served:?}{}",
            k.name(),
            t.slowest,
            t.first_error
                .as_ref()
                .map_or(String::new(), |e| format!("; first failed swap: {e}"))
        ));
    }
    for (k, r) in reports {
        store(&mut result, k.name(), r);
    }
    Ok(result)
}
