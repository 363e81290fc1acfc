//! `balance` and `[routes.prefix]`: how a route orders the chosen arm's backends.

use super::Errors;
use crate::config::raw::RawRoute;
use crate::routing::balance::*;
use crate::routing::prefix::BlockShape;

pub(super) fn validate_balance(path: &str, r: &RawRoute, errors: &mut Errors) -> Option<Balance> {
    let name = r.balance.as_deref().unwrap_or("least_inflight");
    let balance = match name {
        "least_inflight" => Balance::LeastInflight,
        "round_robin" => Balance::RoundRobin,
        "prefix" => Balance::Prefix(validate_prefix(
            &format!("{path}.prefix"),
            r.prefix.clone().unwrap_or_default(),
            errors,
        )),
        other => {
            errors.push(
                format!("{path}.balance"),
                format!("`{other}` is not one of least_inflight, round_robin, prefix"),
            );
            return None;
        }
    };
    if r.prefix.is_some() && !matches!(balance, Balance::Prefix(_)) {
        errors.push(
            format!("{path}.prefix"),
            format!("only applies with balance = \"prefix\" (this route balances by `{name}`)"),
        );
    }
    Some(balance)
}

fn validate_prefix(
    path: &str,
    raw: crate::config::raw::RawPrefix,
    errors: &mut Errors,
) -> PrefixBalance {
    let mut in_range = |field: &str, value: Option<f64>, default: f64, lo: f64, hi: f64| {
        let v = value.unwrap_or(default);
        if v.is_finite() && (lo..=hi).contains(&v) {
            v
        } else {
            errors.push(
                format!("{path}.{field}"),
                format!("{v} must be between {lo} and {hi}"),
            );
            default
        }
    };
    let prefix_weight = in_range(
        "prefix_weight",
        raw.prefix_weight,
        DEFAULT_PREFIX_WEIGHT,
        0.0,
        1000.0,
    );
    let load_weight = in_range(
        "load_weight",
        raw.load_weight,
        DEFAULT_LOAD_WEIGHT,
        0.0,
        1000.0,
    );
    let kv_weight = in_range("kv_weight", raw.kv_weight, DEFAULT_KV_WEIGHT, 0.0, 1000.0);
    let load_bound = in_range(
        "load_bound",
        raw.load_bound,
        DEFAULT_LOAD_BOUND,
        1.0,
        1000.0,
    );
    let load_bound_floor = in_range(
        "load_bound_floor",
        raw.load_bound_floor,
        DEFAULT_LOAD_BOUND_FLOOR,
        1.0,
        1_000_000.0,
    );
    let explore = in_range(
        "explore_percent",
        raw.explore_percent,
        DEFAULT_EXPLORE_PERCENT,
        0.0,
        100.0,
    );
    let block_tokens = raw.block_tokens.unwrap_or(u64::from(DEFAULT_BLOCK_TOKENS));
    if !(1..=4096).contains(&block_tokens) {
        errors.push(format!("{path}.block_tokens"), "must be between 1 and 4096");
    }
    let max_blocks = raw.max_blocks.unwrap_or(DEFAULT_MAX_BLOCKS as u64);
    if !(1..=8192).contains(&max_blocks) {
        errors.push(
            format!("{path}.max_blocks"),
            "must be between 1 and 8192 (it bounds the hashing work per request)",
        );
    }
    PrefixBalance {
        shape: BlockShape {
            block_tokens: block_tokens.clamp(1, 4096) as u32,
            max_blocks: max_blocks.clamp(1, 8192) as usize,
        },
        prefix_weight,
        load_weight,
        kv_weight,
        load_bound,
        load_bound_floor,
        explore_bp: (explore * 100.0).round() as u32,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::parse_policy;
    use crate::routing::Balance;

    fn policy(route_extra: &str) -> String {
        format!(
            r#"
            [[backends]]
            name = "a"
            url = "http://127.0.0.1:9101"
            [[routes]]
            name = "chat"
            models = ["m"]
            {route_extra}
              [[routes.arms]]
              name = "only"
              backends = ["a"]
              weight = 100
            "#
        )
    }

    #[test]
    fn least_inflight_by_default() {
        let p = parse_policy(&policy("")).unwrap();
        assert_eq!(p.routes[0].balance, Balance::LeastInflight);
    }

    #[test]
    fn prefix_with_defaults_and_knobs() {
        let p = parse_policy(&policy(
            "balance = \"prefix\"\n[routes.prefix]\nload_bound = 2.0\nexplore_percent = 0.5",
        ))
        .unwrap();
        let Balance::Prefix(knobs) = &p.routes[0].balance else {
            panic!("expected prefix, got {:?}", p.routes[0].balance);
        };
        assert_eq!(knobs.load_bound, 2.0);
        assert_eq!(knobs.explore_bp, 50);
        assert_eq!(knobs.shape.block_tokens, 16, "documented default");
    }

    #[test]
    fn every_bad_knob_is_named() {
        let errors = parse_policy(&policy(
            "balance = \"prefix\"\n[routes.prefix]\nload_bound = 0.5\nexplore_percent = 101\nblock_tokens = 0\nmax_blocks = 0\nkv_weight = -1",
        ))
        .unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        for field in [
            "load_bound",
            "explore_percent",
            "block_tokens",
            "max_blocks",
            "kv_weight",
        ] {
            let want = format!("routes[0].prefix.{field}");
            assert!(
                paths.contains(&want.as_str()),
                "{want} missing in {paths:?}"
            );
        }
    }

    #[test]
    fn unknown_strategy_and_stray_prefix_table() {
        let errors = parse_policy(&policy("balance = \"random\"")).unwrap_err();
        assert_eq!(errors[0].path, "routes[0].balance");
        let errors = parse_policy(&policy(
            "balance = \"round_robin\"\n[routes.prefix]\nload_bound = 2.0",
        ))
        .unwrap_err();
        assert_eq!(errors[0].path, "routes[0].prefix");
    }

    #[test]
    fn scrape_interval_bounds() {
        let text = format!("[server]\nscrape_interval_ms = 5\n{}", policy(""));
        let errors = parse_policy(&text).unwrap_err();
        assert_eq!(errors[0].path, "server.scrape_interval_ms");
        let text = format!("[server]\nscrape_interval_ms = 0\n{}", policy(""));
        assert_eq!(parse_policy(&text).unwrap().server.scrape_interval, None);
    }
}
