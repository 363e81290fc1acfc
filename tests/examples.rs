//! Every policy shipped in routes/ validates: operators copy these.

#[test]
fn shipped_policies_validate() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/routes");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(errors) = switchyard::config::parse_policy(&text) {
                panic!("{} is invalid: {errors:#?}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "expected the demo and the examples, found {checked}"
    );
}
