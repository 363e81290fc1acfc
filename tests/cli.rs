//! The command line: `check`, and the admin client verbs against a running gateway.

mod common;

use std::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

#[test]
fn check_prints_every_error_or_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let good = concat!(env!("CARGO_MANIFEST_DIR"), "/routes/demo.toml");
    let out = Command::new(BIN).args(["check", good]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ok — 3 backend(s), 2 route(s)"), "{stdout}");
    assert!(stdout.contains("arm canary"), "{stdout}");

    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(good)
        .unwrap()
        .replace("weight = 5\n", "weight = 7\n")
        .replace("backends = [\"sim-8b\"]", "backends = [\"sim-9b\"]");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("routes[0].arms: weights sum to 102, they must sum to 100"),
        "{stdout}"
    );
    assert!(
        stdout.contains("routes[1].arms[0].backends[0]: unknown backend `sim-9b`"),
        "{stdout}"
    );
    assert!(stdout.contains("2 error(s)"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_verbs_push_rollback_history_status() {
    let a = sim("a", &["m"], |_| {}).await;
    let server = server_section("");
    let v1 = server.clone()
        + &backend("a", &a.url(), "")
        + &route("r", &["m"], "none", &[("blue", &["a"], 100.0)]);
    let v2 = v1.replace("\"blue\"", "\"green\"");
    let gw = start_gateway(&v1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v2.toml");
    std::fs::write(&file, &v2).unwrap();
    let admin = gw.admin_url();
    let run = move |args: Vec<String>, token: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .env("SWITCHYARD_ADMIN", &admin)
            .env_remove("SWITCHYARD_ADMIN_TOKEN");
        if let Some(t) = token {
            cmd.env("SWITCHYARD_ADMIN_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let file = file.to_str().unwrap().to_owned();
    tokio::task::spawn_blocking(move || {
        let (code, _, err) = run(vec!["push".into(), file.clone()], None);
        assert_eq!(code, Some(1));
        assert!(err.contains("set SWITCHYARD_ADMIN_TOKEN"), "{err}");
        let (code, out, _) = run(
            vec![
                "push".into(),
                file.clone(),
                "--reason".into(),
                "to green".into(),
            ],
            Some(TOKEN),
        );
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("\"version\": 2"), "{out}");
        let (code, out, _) = run(vec!["status".into()], None);
        assert_eq!(code, Some(0));
        assert!(
            out.contains("\"reason\": \"to green\"") && out.contains("\"version\": 2"),
            "{out}"
        );
        let (code, out, _) = run(vec!["rollback".into()], Some(TOKEN));
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("\"version\": 3"), "{out}");
        let (code, out, _) = run(vec!["rollback".into(), "42".into()], Some(TOKEN));
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("unknown_version"), "{out}");
        let (code, out, _) = run(vec!["history".into()], None);
        assert_eq!(code, Some(0));
        assert!(
            out.find("\"version\": 3").unwrap() < out.find("\"version\": 1").unwrap(),
            "newest first: {out}"
        );
    })
    .await
    .unwrap();
    let c = client();
    let r = post_json(
        &c,
        &format!("{}/v1/chat/completions", gw.url()),
        &chat("m", "x"),
    )
    .await;
    assert_eq!(
        r.header("x-switchyard-arm"),
        "blue",
        "rolled back to v1's content"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_verbs_show_and_clear() {
    let a = sim("a", &["m"], |_| {}).await;
    let policy = server_section("")
        + &backend("a", &a.url(), "")
        + &route("r", &["m"], "none", &[("main", &["a"], 100.0)])
        + "  [routes.cache]\n";
    let gw = start_gateway(&policy);
    let c = client();
    let body = serde_json::json!({"model": "m", "temperature": 0, "max_tokens": 4,
                                  "messages": [{"role": "user", "content": "cli"}]});
    let _ = post_json(&c, &format!("{}/v1/chat/completions", gw.url()), &body).await;
    let admin = gw.admin_url();
    tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            let out = Command::new(BIN)
                .args(args)
                .env("SWITCHYARD_ADMIN", &admin)
                .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        let (code, out) = run(&["cache", "show"]);
        assert_eq!(code, Some(0), "{out}");
        let shown: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(shown["entries"], 1, "{out}");
        assert_eq!(shown["routes"][0]["route"], "r", "{out}");
        let (code, out) = run(&["cache", "clear", "--route", "r"]);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("\"removed\": 1"), "{out}");
        let (_, out) = run(&["cache", "show"]);
        assert!(out.contains("\"entries\": 0"), "{out}");
    })
    .await
    .unwrap();
}
