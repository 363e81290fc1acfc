//! Scenario 2: the proxy's CPU time per request at concurrency 8.

use super::*;

pub(super) fn cpu_per_request(ctx: &Ctx) -> Result<ScenarioResult> {
    let stack = Stack::single(&ctx.env, "s2", SimTiming::default())?;
    let mut reports = BTreeMap::new();
    for t in stack.targets() {
        let mut spec = ctx.spec(chat_body(16));
        spec.mode = Mode::Closed { concurrency: 8 };
        spec.duration = ctx.p.cpu_duration;
        let (_, r) = ctx.run(&t, spec);
        reports.insert(t.kind, r);
    }
    let cpu = |k: Kind| reports.get(&k).and_then(|r| r.cpu_us_per_req);
    let [d, n, s] = cells(&stack, |k| {
        let r = reports.get(&k)?;
        let c = r.cpu_us_per_req?;
        Some(if k == Kind::Direct {
            format!("({c:.1} sim) @ {:.0} rps", r.achieved_rps)
        } else {
            format!("{c:.1} @ {:.0} rps", r.achieved_rps)
        })
    });
    let r = ratio(cpu(Kind::Switchyard), cpu(Kind::Nginx));
    let mut result = ScenarioResult::new("CPU per request, concurrency 8");
    result.rows.push(Row {
        metric: "proxy user+sys CPU µs/request (direct: the sim's own)".into(),
        cells: [d, n, s],
        ratio: r,
        target: Some(Verdict::at_most("≤ 1.3× nginx", r, 1.3)),
    });
    result.notes = errors_note(&reports);
    result.notes.push(format!(
        "/proc/PID/stat utime+stime of the process tree (nginx: master + worker), {} ticks/s, over {:?} per target",
        ctx.ticks_per_s, ctx.p.cpu_duration
    ));
    for (k, r) in reports {
        store(&mut result, k.name(), r);
    }
    Ok(result)
}
