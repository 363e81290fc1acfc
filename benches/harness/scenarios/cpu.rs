//! Scenario 2: the proxy's CPU time per request at concurrency 8, and the same for a bare
//! pingora proxy: the part of switchyard's figure that pingora's own request handling takes.

use super::*;

pub(super) fn cpu_per_request(ctx: &Ctx) -> Result<ScenarioResult> {
    let stack = Stack::single(&ctx.env, "s2", SimTiming::default())?;
    let floor = Floor::start(&ctx.env, "s2", Some(stack.sims[0].addr));
    let targets = stack.targets_with(&floor);
    let mut reports = BTreeMap::new();
    for t in targets {
        let mut spec = ctx.spec(chat_body(16));
        spec.mode = Mode::Closed { concurrency: 8 };
        spec.duration = ctx.p.cpu_duration;
        let (_, r) = ctx.run(&t, spec);
        reports.insert(t.kind, r);
    }
    let cpu = |k: Kind| reports.get(&k).and_then(|r| r.cpu_us_per_req);
    let cpu_cell = |k: Kind| {
        let r = reports.get(&k)?;
        Some(format!(
            "{:.1} @ {:.0} rps",
            r.cpu_us_per_req?, r.achieved_rps
        ))
    };
    let [d, n, s] = cells(&stack, |k| {
        if k == Kind::Direct {
            let r = reports.get(&k)?;
            Some(format!(
                "({:.1} sim) @ {:.0} rps",
                r.cpu_us_per_req?, r.achieved_rps
            ))
        } else {
            cpu_cell(k)
        }
    });
    let r = ratio(cpu(Kind::Switchyard), cpu(Kind::Nginx));
    let mut result = ScenarioResult::new("CPU per request, concurrency 8");
    result.rows.push(Row {
        metric: "proxy user+sys CPU µs/request (direct: the sim's own)".into(),
        cells: [d, n.clone(), s],
        ratio: r,
        target: Some(Verdict::at_most("≤ 1.3× nginx", r, 1.3)),
    });
    let floor_cell = match &floor {
        Ok(_) => cpu_cell(Kind::Floor).map_or_else(|| Cell::na("no data"), Cell::text),
        Err(e) => Cell::na(e),
    };
    result.rows.push(Row {
        metric: "pingora floor: a bare ProxyHttp, same load (switchyard column; ratio ÷ nginx)"
            .into(),
        cells: [Cell::na("not available: a proxy's row"), n, floor_cell],
        ratio: ratio(cpu(Kind::Floor), cpu(Kind::Nginx)),
        target: None,
    });
    result.notes = errors_note(&reports);
    result.notes.push(format!(
        "/proc/PID/stat utime+stime of the process tree (nginx: master + worker), {} ticks/s, over {:?} per target",
        ctx.ticks_per_s, ctx.p.cpu_duration
    ));
    if let Some(over) = ratio(cpu(Kind::Switchyard), cpu(Kind::Floor)) {
        result.notes.push(format!(
            "switchyard ÷ pingora floor: {over:.2}× (the floor is `switchyard-bench floor`: pingora's ProxyHttp with only upstream_peer, one thread, the same allocator)"
        ));
    }
    for (k, r) in reports {
        store(&mut result, k.name(), r);
    }
    Ok(result)
}
