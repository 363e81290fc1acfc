//! Scenario 4: SSE streams: added time to first event, gaps, stalls.

use super::*;

pub(super) fn streaming(ctx: &Ctx) -> Result<ScenarioResult> {
    let timing = ctx.p.stream_timing;
    let stack = Stack::single(&ctx.env, "s4", timing)?;
    let mut reports = BTreeMap::new();
    let mut result = ScenarioResult::new("Streaming SSE");
    for t in stack.targets() {
        let mut spec = ctx.spec(stream_body(ctx.p.stream_events));
        spec.stream = true;
        spec.mode = Mode::Closed {
            concurrency: ctx.p.stream_concurrency,
        };
        spec.duration = ctx.p.stream_duration;
        spec.warmup = 1;
        spec.request_timeout = Duration::from_secs(30);
        spec.ramp =
            Duration::from_millis(timing.ttft_ms + timing.tpot_ms * u64::from(ctx.p.stream_events));
        let (rec, r) = ctx.run(&t, spec);
        result.series.insert(
            format!("ttfe/{}", t.kind.name()),
            cdf_points(&rec.ttfe, 200),
        );
        reports.insert(t.kind, r);
    }
    let ttfe = |k: Kind, q: Quantile| Some(reports.get(&k)?.ttfe?.at(q));
    let gap = |k: Kind, q: Quantile| Some(reports.get(&k)?.gap?.at(q));
    let added_by = |f: &dyn Fn(Kind, Quantile) -> Option<f64>, k: Kind, q: Quantile| {
        Some(f(k, q)? - f(Kind::Direct, q)?)
    };
    let ms = |us: f64| format!("{:.2}", us / 1000.0);
    let [d, n, s] = cells(&stack, |k| {
        if k == Kind::Direct {
            Some(format!(
                "{} / {}",
                ms(ttfe(k, Quantile::P50)?),
                ms(ttfe(k, Quantile::P99)?)
            ))
        } else {
            Some(format!(
                "{:+.2} / {:+.2}",
                added_by(&ttfe, k, Quantile::P50)? / 1000.0,
                added_by(&ttfe, k, Quantile::P99)? / 1000.0
            ))
        }
    });
    let sy_ttfe99 = added_by(&ttfe, Kind::Switchyard, Quantile::P99);
    result.rows.push(Row {
        metric: "time to first event p50 / p99 ms (proxies: added)".into(),
        cells: [d, n, s],
        ratio: ratio(sy_ttfe99, added_by(&ttfe, Kind::Nginx, Quantile::P99)),
        target: Some(Verdict::at_most(
            "switchyard added TTFE p99 ≤ 1 ms",
            sy_ttfe99.map(|v| v / 1000.0),
            1.0,
        )),
    });
    let [d, n, s] = cells(&stack, |k| {
        let r = reports.get(&k)?;
        let incomplete = r.error_kinds.get("incomplete_stream").copied().unwrap_or(0);
        let g = if k == Kind::Direct {
            ms(gap(k, Quantile::P99)?)
        } else {
            format!("{:+.2}", added_by(&gap, k, Quantile::P99)? / 1000.0)
        };
        Some(format!(
            "{g}; {} stalls; {}/{} complete",
            r.stalls,
            r.ok,
            r.ok + incomplete
        ))
    });
    let sy_stalls = reports.get(&Kind::Switchyard).map(|r| r.stalls as f64);
    result.rows.push(Row {
        metric: "p99 gap between events ms (proxies: added); stalls ≥ 40 ms; complete streams"
            .into(),
        cells: [d, n, s],
        ratio: ratio(
            added_by(&gap, Kind::Switchyard, Quantile::P99),
            added_by(&gap, Kind::Nginx, Quantile::P99),
        ),
        target: Some(Verdict::at_most("no 40 ms stalls", sy_stalls, 0.0)),
    });
    result.notes = errors_note(&reports);
    result.notes.push(format!(
        "{} events per stream, sim TTFT {} ms and {} ms per token, {} concurrent streams for {:?}",
        ctx.p.stream_events,
        timing.ttft_ms,
        timing.tpot_ms,
        ctx.p.stream_concurrency,
        ctx.p.stream_duration
    ));
    for (k, r) in reports {
        store(&mut result, k.name(), r);
    }
    Ok(result)
}
