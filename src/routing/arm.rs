//! Arm choice: which arm of a route serves a request.
//!
//! Each route splits 10 000 buckets among its arms as contiguous ranges, in the order the arms
//! are declared: with `champion = 95`, `canary = 5` the champion owns buckets `0..9500` and the
//! canary `9500..10000`. A sticky key is hashed with the route's salt into one bucket, so a key
//! always lands in the same arm for a given policy, and raising the canary to 10 % moves exactly
//! the keys of buckets `9000..9500` — nobody else. Without a key the caller draws the bucket at
//! random. Everything here is pure: no clocks, no randomness of its own, no I/O.

use std::fmt;
use std::ops::Range;

use xxhash_rust::xxh3::xxh3_64;

use super::RequestFacts;

/// Buckets per route; weights are percentages with two decimals, so one bucket is 0.01 %.
pub const BUCKETS: u32 = 10_000;

/// Which part of a request keeps a client in the same arm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    /// No stickiness: every request draws its bucket at random.
    None,
    /// The value of a request header (name stored lower-case).
    Header(String),
    /// The `user` field of the OpenAI request body.
    BodyUser,
    /// The client's credential (`Authorization` header, else `x-api-key`).
    ApiKey,
}

impl StickyKey {
    /// Parses the policy's `sticky` value: `none`, `header:NAME`, `body:user`, `api-key`.
    pub fn parse(text: &str) -> Result<StickyKey, String> {
        match text {
            "none" => Ok(StickyKey::None),
            "body:user" => Ok(StickyKey::BodyUser),
            "api-key" => Ok(StickyKey::ApiKey),
            _ => match text.strip_prefix("header:") {
                Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                    Ok(StickyKey::Header(name.to_ascii_lowercase()))
                }
                Some(_) => Err(format!("`{text}` does not name a valid header")),
                None => Err(format!(
                    "`{text}` is not one of \"none\", \"header:NAME\", \"body:user\", \"api-key\""
                )),
            },
        }
    }
}

impl StickyKey {
    /// The key's value in this request, if the request carries one. A sticky route whose
    /// request lacks the key falls back to a random draw (and says so in no error: the request
    /// is still served).
    pub fn value<'a>(
        &self,
        headers: &'a http::HeaderMap,
        facts: &'a RequestFacts,
    ) -> Option<&'a [u8]> {
        match self {
            StickyKey::None => None,
            StickyKey::Header(name) => headers.get(name.as_str()).map(|v| v.as_bytes()),
            StickyKey::BodyUser => facts.user.as_deref().map(str::as_bytes),
            StickyKey::ApiKey => headers
                .get(http::header::AUTHORIZATION)
                .or_else(|| headers.get(super::api_key::API_KEY_HEADER))
                .map(|v| v.as_bytes()),
        }
        .filter(|v| !v.is_empty())
    }
}

impl fmt::Display for StickyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StickyKey::None => f.write_str("none"),
            StickyKey::Header(name) => write!(f, "header:{name}"),
            StickyKey::BodyUser => f.write_str("body:user"),
            StickyKey::ApiKey => f.write_str("api-key"),
        }
    }
}

/// One arm of a route: its backends (indexes into the policy's backends) and its buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arm {
    pub name: String,
    pub backends: Vec<usize>,
    /// Weight in basis points (hundredths of a percent) within its set.
    pub weight_bp: u32,
    /// The blue-green set the arm belongs to, if the route uses sets.
    pub set: Option<String>,
    /// Whether the arm takes traffic: it belongs to the route's active set (or the route has
    /// no sets). Standby arms own no buckets; only the QA override reaches them.
    pub active: bool,
    /// Empty for standby arms.
    pub buckets: Range<u32>,
}

/// What [`ArmTable::new`] lays out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArm {
    pub name: String,
    pub backends: Vec<usize>,
    pub weight_bp: u32,
    pub set: Option<String>,
    pub active: bool,
}

/// A route's arms with their bucket ranges laid out in declared order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmTable {
    arms: Vec<Arm>,
}

impl ArmTable {
    /// Lays the active arms out contiguously in the given order; standby arms get no buckets.
    /// The active weights must sum to [`BUCKETS`] (validation guarantees it).
    pub fn new(arms: Vec<NewArm>) -> ArmTable {
        let mut start = 0;
        let arms = arms
            .into_iter()
            .map(|a| {
                let end = if a.active {
                    (start + a.weight_bp).min(BUCKETS)
                } else {
                    start
                };
                let arm = Arm {
                    name: a.name,
                    backends: a.backends,
                    weight_bp: a.weight_bp,
                    set: a.set,
                    active: a.active,
                    buckets: start..end,
                };
                start = end;
                arm
            })
            .collect();
        ArmTable { arms }
    }

    pub fn arms(&self) -> &[Arm] {
        &self.arms
    }

    /// The index of the arm named `name`, active or standby.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.arms.iter().position(|a| a.name == name)
    }

    /// The index of the arm owning `bucket` (`bucket < BUCKETS`).
    pub fn arm_for_bucket(&self, bucket: u32) -> usize {
        self.arms
            .iter()
            .position(|arm| arm.buckets.contains(&bucket))
            // Weights summing to 100 leave no gap, so this fallback only matters for a table
            // built outside validation: the last active arm takes the rest.
            .or_else(|| self.arms.iter().rposition(|a| a.active))
            .unwrap_or(0)
    }
}

/// The bucket of a sticky key under a route's salt. Stable across processes, versions and
/// platforms (xxh3), so replicas and restarts agree.
pub fn sticky_bucket(salt: &str, key: &[u8]) -> u32 {
    let mut input = Vec::with_capacity(salt.len() + 1 + key.len());
    input.extend_from_slice(salt.as_bytes());
    // The separator keeps ("ab", "c") and ("a", "bc") apart.
    input.push(0xff);
    input.extend_from_slice(key);
    (xxh3_64(&input) % u64::from(BUCKETS)) as u32
}

/// Chooses the arm: the sticky key's bucket when there is a key, else `random_bucket`
/// (which the caller draws uniformly from `0..BUCKETS`).
pub fn choose_arm(table: &ArmTable, salt: &str, key: Option<&[u8]>, random_bucket: u32) -> usize {
    let bucket = match key {
        Some(key) => sticky_bucket(salt, key),
        None => random_bucket % BUCKETS,
    };
    table.arm_for_bucket(bucket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn table(weights: &[u32]) -> ArmTable {
        ArmTable::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| NewArm {
                    name: format!("arm{i}"),
                    backends: vec![i],
                    weight_bp: *w,
                    set: None,
                    active: true,
                })
                .collect(),
        )
    }

    #[test]
    fn standby_arms_own_no_buckets() {
        let arm = |name: &str, set: &str, w: u32, active: bool| NewArm {
            name: name.into(),
            backends: vec![0],
            weight_bp: w,
            set: Some(set.into()),
            active,
        };
        let t = ArmTable::new(vec![
            arm("blue", "blue", 10_000, false),
            arm("green", "green", 9_000, true),
            arm("green-canary", "green", 1_000, true),
        ]);
        assert!(t.arms()[0].buckets.is_empty());
        assert_eq!(t.arms()[1].buckets, 0..9000);
        assert_eq!(t.arms()[2].buckets, 9000..10000);
        assert_eq!(t.position("blue"), Some(0));
        for b in [0, 5000, 9999] {
            assert_ne!(t.arm_for_bucket(b), 0);
        }
    }

    #[test]
    fn buckets_are_contiguous_in_declared_order() {
        let t = table(&[9500, 500]);
        assert_eq!(t.arms()[0].buckets, 0..9500);
        assert_eq!(t.arms()[1].buckets, 9500..10000);
        assert_eq!(t.arm_for_bucket(9499), 0);
        assert_eq!(t.arm_for_bucket(9500), 1);
    }

    #[test]
    fn zero_weight_arm_gets_nothing() {
        let t = table(&[0, 10000]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            assert_eq!(choose_arm(&t, "s", None, rng.random_range(0..BUCKETS)), 1);
        }
    }

    /// 20 000 random draws against 95/5 and 50/30/20 land within 3 sigma of the weights.
    #[test]
    fn weighted_draw_is_within_three_sigma() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for weights in [
            vec![9500, 500],
            vec![5000, 3000, 2000],
            vec![3333, 3333, 3334],
        ] {
            let t = table(&weights);
            let n = 20_000;
            let mut counts = vec![0u32; weights.len()];
            for _ in 0..n {
                counts[choose_arm(&t, "salt", None, rng.random_range(0..BUCKETS))] += 1;
            }
            for (w, c) in weights.iter().zip(&counts) {
                let p = f64::from(*w) / f64::from(BUCKETS);
                let sigma = (f64::from(n) * p * (1.0 - p)).sqrt();
                let expected = f64::from(n) * p;
                assert!(
                    (f64::from(*c) - expected).abs() <= 3.0 * sigma,
                    "weights {weights:?}: arm with {w} bp got {c}, expected {expected:.0} ± {:.0}",
                    3.0 * sigma
                );
            }
        }
    }

    /// Sticky keys spread like random draws (the hash is uniform) and each key is stable.
    #[test]
    fn sticky_keys_spread_within_three_sigma_and_stay_put() {
        let t = table(&[9000, 1000]);
        let n = 20_000;
        let mut canary = 0;
        for i in 0..n {
            let key = format!("user-{i}");
            let arm = choose_arm(&t, "route-a", Some(key.as_bytes()), 0);
            for random in [1, 5000, 9999] {
                assert_eq!(
                    choose_arm(&t, "route-a", Some(key.as_bytes()), random),
                    arm,
                    "a sticky key must ignore the random draw"
                );
            }
            canary += usize::from(arm == 1);
        }
        let sigma = (f64::from(n) * 0.1 * 0.9).sqrt();
        assert!(
            (canary as f64 - 2000.0).abs() <= 3.0 * sigma,
            "canary got {canary} of {n}"
        );
    }

    #[test]
    fn salt_reshuffles_buckets() {
        let moved = (0..1000)
            .filter(|i| {
                let key = format!("k{i}");
                sticky_bucket("a", key.as_bytes()) != sticky_bucket("b", key.as_bytes())
            })
            .count();
        assert!(
            moved > 990,
            "a new salt should move nearly every key, moved {moved}"
        );
    }

    /// Raising the canary moves exactly the keys of the added buckets, and only one way.
    #[test]
    fn ramp_moves_only_added_buckets() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        let arms_at = |canary_bp: u32| -> Vec<usize> {
            let t = table(&[BUCKETS - canary_bp, canary_bp]);
            keys.iter()
                .map(|k| choose_arm(&t, "r", Some(k.as_bytes()), 0))
                .collect()
        };
        let steps = [500, 1000, 2500, 1000, 0, 10_000];
        let mut before = arms_at(steps[0]);
        for pair in steps.windows(2) {
            let after = arms_at(pair[1]);
            for (i, k) in keys.iter().enumerate() {
                let bucket = sticky_bucket("r", k.as_bytes());
                let champion_below = BUCKETS - pair[1].max(pair[0]);
                let champion_above = BUCKETS - pair[1].min(pair[0]);
                let in_changed = (champion_below..champion_above).contains(&bucket);
                assert_eq!(
                    before[i] != after[i],
                    in_changed,
                    "{k} (bucket {bucket}) moving from {} to {} bp",
                    pair[0],
                    pair[1]
                );
            }
            before = after;
        }
    }

    #[test]
    fn sticky_key_parses() {
        assert_eq!(
            StickyKey::parse("header:X-User-Id"),
            Ok(StickyKey::Header("x-user-id".into()))
        );
        assert_eq!(StickyKey::parse("body:user"), Ok(StickyKey::BodyUser));
        assert!(StickyKey::parse("cookie:x").is_err());
        assert!(StickyKey::parse("header:bad header").is_err());
    }
}
