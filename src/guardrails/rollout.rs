//! Progressive rollout: an arm ramped through weight steps while its guardrails hold.

use std::time::Duration;

/// One validated `[routes.rollout]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSpec {
    /// Index of the arm rolled out.
    pub arm: usize,
    /// Weights in basis points, strictly ascending, the last 10 000 (100 %).
    pub steps_bp: Vec<u32>,
    /// Time at one step before the next may be taken.
    pub bake: Duration,
    /// Indexes of the route's guardrails that must pass to advance.
    pub require: Vec<usize>,
}

/// Where a route's rollout stands. Kept by the evaluator (runtime state, not policy): the
/// step itself is the arm's weight in the running policy, so a restart resumes at that step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutPhase {
    /// Stepping up whenever the bake time has passed and the required guardrails pass.
    Running,
    /// Held at its step by an operator or a `pause` guardrail; `resume` continues.
    Paused,
    /// The arm reached 100 %.
    Completed,
    /// An operator aborted: the arm's weight went back to the champion.
    Aborted,
    /// A guardrail rolled the arm back.
    RolledBack,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Running => "running",
            RolloutPhase::Paused => "paused",
            RolloutPhase::Completed => "completed",
            RolloutPhase::Aborted => "aborted",
            RolloutPhase::RolledBack => "rolled_back",
        }
    }
}

/// A route's rollout at runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutState {
    pub phase: RolloutPhase,
    /// The arm's weight when last seen, in basis points.
    pub weight_bp: u32,
    /// When the arm reached that weight (evaluator clock, ms): the bake time counts from here.
    pub since_ms: u64,
    /// The spec this state belongs to: a changed `[routes.rollout]` starts afresh.
    pub spec: RolloutSpec,
    /// Why the rollout is waiting or stopped, for `/admin/guardrails`.
    pub note: String,
}

impl RolloutState {
    pub fn new(spec: &RolloutSpec, weight_bp: u32, now_ms: u64) -> RolloutState {
        RolloutState {
            phase: if weight_bp >= 10_000 {
                RolloutPhase::Completed
            } else {
                RolloutPhase::Running
            },
            weight_bp,
            since_ms: now_ms,
            spec: spec.clone(),
            note: String::new(),
        }
    }
}

/// The next step above `weight_bp`, if any.
pub fn next_step(spec: &RolloutSpec, weight_bp: u32) -> Option<u32> {
    spec.steps_bp.iter().copied().find(|s| *s > weight_bp)
}

/// What one evaluation decides for a running rollout: `Some(next weight)` when the arm is
/// below the first step (start at once: there is no traffic to judge yet), or when the bake
/// time at this step has passed and every required guardrail passed.
pub fn advance(
    spec: &RolloutSpec,
    state: &RolloutState,
    now_ms: u64,
    required_pass: bool,
) -> Option<u32> {
    if state.phase != RolloutPhase::Running {
        return None;
    }
    let first = *spec.steps_bp.first()?;
    if state.weight_bp < first {
        return Some(first);
    }
    let baked = now_ms.saturating_sub(state.since_ms) >= spec.bake.as_millis() as u64;
    if baked && required_pass {
        next_step(spec, state.weight_bp)
    } else {
        None
    }
}

/// `95`, `2.5`: a weight in basis points as the policy writes it.
pub fn fmt_weight(bp: u32) -> String {
    if bp.is_multiple_of(100) {
        format!("{}", bp / 100)
    } else {
        format!("{}", f64::from(bp) / 100.0)
    }
}

/// Why a policy edit could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("the policy text does not parse as TOML: {0}")]
    Toml(String),
    #[error("route `{0}` is not written as a [[routes]] table with [[routes.arms]] tables")]
    RouteNotFound(String),
    #[error("route `{route}` has no arm `{arm}` written as a [[routes.arms]] table")]
    ArmNotFound { route: String, arm: String },
    #[error("the other arms of route `{0}` leave the champion no room for this weight")]
    NoRoom(String),
}

/// Rewrites the weights (and, for blue-green, the active set) of one route in the policy's TOML
/// text, keeping everything else — comments, order, formatting — as the operator wrote it, so
/// the file stays readable and the history's diff shows only what changed.
pub fn edit_route(
    text: &str,
    route: &str,
    weights: &[(&str, u32)],
    active: Option<&str>,
) -> Result<String, EditError> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Toml(e.to_string()))?;
    let routes = doc
        .get_mut("routes")
        .and_then(|r| r.as_array_of_tables_mut())
        .ok_or_else(|| EditError::RouteNotFound(route.to_owned()))?;
    let table = routes
        .iter_mut()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(route))
        .ok_or_else(|| EditError::RouteNotFound(route.to_owned()))?;
    if let Some(set) = active {
        set_value(table, "active", toml_edit::Value::from(set));
    }
    let arms = table
        .get_mut("arms")
        .and_then(|a| a.as_array_of_tables_mut())
        .ok_or_else(|| EditError::RouteNotFound(route.to_owned()))?;
    for (arm, bp) in weights {
        let t = arms
            .iter_mut()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(arm))
            .ok_or_else(|| EditError::ArmNotFound {
                route: route.to_owned(),
                arm: (*arm).to_owned(),
            })?;
        let value = if bp % 100 == 0 {
            toml_edit::Value::from(i64::from(bp / 100))
        } else {
            toml_edit::Value::from(f64::from(*bp) / 100.0)
        };
        set_value(t, "weight", value);
    }
    Ok(doc.to_string())
}

/// Sets `key`, keeping the old value's surrounding whitespace and trailing comment.
fn set_value(table: &mut toml_edit::Table, key: &str, mut value: toml_edit::Value) {
    // Replaced in place, so the key keeps its indentation too.
    if let Some(old) = table.get_mut(key).and_then(|i| i.as_value_mut()) {
        *value.decor_mut() = old.decor().clone();
        *old = value;
        return;
    }
    table.insert(key, toml_edit::Item::Value(value));
}

/// The weights that give `arm` `target` basis points, the champion absorbing the difference and
/// every other arm keeping its own.
pub fn weights_for(
    arms: &[crate::routing::Arm],
    champion: usize,
    arm: usize,
    target: u32,
) -> Option<Vec<(usize, u32)>> {
    let others: u32 = arms
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != champion && *i != arm)
        .map(|(_, a)| a.weight_bp)
        .sum();
    let champion_bp = 10_000u32.checked_sub(others)?.checked_sub(target)?;
    Some(vec![(arm, target), (champion, champion_bp)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RolloutSpec {
        RolloutSpec {
            arm: 1,
            steps_bp: vec![100, 500, 2500, 10_000],
            bake: Duration::from_secs(60),
            require: vec![0],
        }
    }

    #[test]
    fn steps_start_at_once_then_wait_for_bake_and_guardrails() {
        let s = spec();
        let mut state = RolloutState::new(&s, 0, 0);
        assert_eq!(advance(&s, &state, 0, false), Some(100));
        state = RolloutState::new(&s, 100, 1_000);
        assert_eq!(advance(&s, &state, 30_000, true), None, "still baking");
        assert_eq!(
            advance(&s, &state, 61_000, false),
            None,
            "guardrails not passing"
        );
        assert_eq!(advance(&s, &state, 61_000, true), Some(500));
        state.weight_bp = 2500;
        assert_eq!(advance(&s, &state, 61_000, true), Some(10_000));
        state.phase = RolloutPhase::Paused;
        assert_eq!(advance(&s, &state, 61_000, true), None);
        assert_eq!(
            RolloutState::new(&s, 10_000, 0).phase,
            RolloutPhase::Completed
        );
    }

    const POLICY: &str = r#"# chat policy
[[routes]]
name = "chat"
models = ["m"]

  [[routes.arms]]
  name = "champion"   # the old model
  backends = ["a"]
  weight = 95

  [[routes.arms]]
  name = "canary"
  backends = ["b"]
  weight = 5
"#;

    #[test]
    fn edits_keep_the_operators_file() {
        let out = edit_route(
            POLICY,
            "chat",
            &[("canary", 2500), ("champion", 7500)],
            None,
        )
        .unwrap();
        assert_eq!(
            out,
            POLICY
                .replace("weight = 95", "weight = 75")
                .replace("weight = 5\n", "weight = 25\n")
        );
        let out = edit_route(POLICY, "chat", &[("canary", 250), ("champion", 9750)], None).unwrap();
        assert!(out.contains("weight = 2.5\n"), "{out}");
        assert!(out.contains("weight = 97.5\n"), "{out}");
        assert!(out.contains("name = \"champion\"   # the old model"));
        assert_eq!(
            edit_route(POLICY, "nope", &[], None),
            Err(EditError::RouteNotFound("nope".into()))
        );
        assert!(matches!(
            edit_route(POLICY, "chat", &[("x", 1)], None),
            Err(EditError::ArmNotFound { .. })
        ));
        let out = edit_route(POLICY, "chat", &[], Some("blue")).unwrap();
        assert!(out.contains("active = \"blue\""), "{out}");
    }
}
