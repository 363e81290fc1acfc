//! Scenarios 1 and 5: what a proxy hop adds to one request at concurrency 1
//! (small body, then 4 KiB to 400 KiB prompts), everything on one CPU.

use super::*;

pub(super) fn added_latency(ctx: &Ctx) -> Result<ScenarioResult> {
    let stack = Stack::single(&ctx.one_cpu_env(), "s1", SimTiming::default())?;
    let targets = stack.targets();
    let per_round = ctx.p.c1_samples.div_ceil(ctx.p.c1_rounds);
    let mut recs: BTreeMap<Kind, Recorder> = BTreeMap::new();
    for round in 0..ctx.p.c1_rounds {
        // Rotate the order each round so no target always runs first.
        for i in 0..targets.len() {
            let t = &targets[(i + round as usize) % targets.len()];
            let mut spec = ctx.spec(chat_body(16));
            spec.max_requests = Some(per_round);
            spec.duration = Duration::from_secs(60);
            let (rec, _) = ctx.run(t, spec);
            recs.entry(t.kind).or_default().merge(&rec);
        }
    }
    let mut result = ScenarioResult::new("Added latency, concurrency 1, small body");
    let mut reports = BTreeMap::new();
    for (kind, rec) in &recs {
        result.series.insert(
            format!("cdf/{}", kind.name()),
            cdf_points(&rec.latency, 200),
        );
        reports.insert(*kind, rec.report(kind.name()));
    }
    let qs = [Quantile::P50, Quantile::P99, Quantile::P999];
    let [d, n, s] = cells(&stack, |k| {
        let v: Vec<String> = if k == Kind::Direct {
            let l = reports.get(&k)?.latency?;
            qs.iter().map(|q| format!("{:.0}", l.at(*q))).collect()
        } else {
            qs.iter()
                .map(|q| added(&reports, k, *q).map(|v| format!("{v:+.0}")))
                .collect::<Option<_>>()?
        };
        Some(v.join(" / "))
    });
    let r99 = ratio(
        added(&reports, Kind::Switchyard, Quantile::P99),
        added(&reports, Kind::Nginx, Quantile::P99),
    );
    result.rows.push(Row {
        metric: "p50 / p99 / p99.9 µs (direct: absolute; proxies: added over direct)".into(),
        cells: [d, n, s],
        ratio: r99,
        target: Some(Verdict::at_most("added p99 ≤ 1.25× nginx's", r99, 1.25)),
    });
    result.notes = errors_note(&reports);
    result.notes.push(format!(
        "{} rounds × {per_round} requests per target, order rotated each round; ratio is of added p99",
        ctx.p.c1_rounds
    ));
    for (k, r) in reports {
        store(&mut result, k.name(), r);
    }
    Ok(result)
}

pub(super) fn body_sizes(ctx: &Ctx) -> Result<ScenarioResult> {
    let stack = Stack::single(&ctx.one_cpu_env(), "s5", SimTiming::default())?;
    let mut result = ScenarioResult::new("Request body size, concurrency 1");
    for &size in ctx.p.body_sizes {
        let mut reports = BTreeMap::new();
        for t in stack.targets() {
            let mut spec = ctx.spec(chat_body(size));
            spec.duration = ctx.p.body_duration;
            let (_, r) = ctx.run(&t, spec);
            reports.insert(t.kind, r);
        }
        let [d, n, s] = cells(&stack, |k| {
            let r = reports.get(&k)?;
            let errs = if r.errors > 0 {
                format!(" ({} errors)", r.errors)
            } else {
                String::new()
            };
            let l = r.latency?;
            Some(if k == Kind::Direct {
                format!("{:.0} / {:.0}{errs}", l.p50_us, l.p99_us)
            } else {
                format!(
                    "{:+.0} / {:+.0}{errs}",
                    added(&reports, k, Quantile::P50)?,
                    added(&reports, k, Quantile::P99)?
                )
            })
        });
        let kib = size >> 10;
        let sy_errors = reports.get(&Kind::Switchyard).map(|r| r.errors as f64);
        result.rows.push(Row {
            metric: format!("{kib} KiB prompt: p50 / p99 µs (proxies: added); ratio of added p50"),
            cells: [d, n, s],
            // p50: a 1.5 s run's p99 sits within noise of the direct one.
            ratio: ratio(
                added(&reports, Kind::Switchyard, Quantile::P50),
                added(&reports, Kind::Nginx, Quantile::P50),
            ),
            target: Some(Verdict::at_most("0 errors", sy_errors, 0.0)),
        });
        result.notes.extend(errors_note(&reports));
        for (k, r) in reports {
            store(&mut result, &format!("{}/{kib}KiB", k.name()), r);
        }
    }
    Ok(result)
}
