//! The optional JSONL file of sampled primary/shadow pairs, for offline review of what the
//! shadow model actually said. Bounded on disk: when the file would pass `sample_max_bytes` it
//! is renamed to `<file>.1` (replacing the previous one) and a new file begins, so the pair log
//! never takes more than twice the limit.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde_json::json;

use super::compare::{compare, ExchangeRecord};
pub use crate::config::policy::SampleSpec;

struct OpenFile {
    path: PathBuf,
    file: File,
    size: u64,
}

/// A route's pair log; opened on first use, reopened when the policy names another file.
#[derive(Default)]
pub struct SampleLog {
    open: Mutex<Option<OpenFile>>,
}

impl std::fmt::Debug for SampleLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SampleLog")
    }
}

/// One JSON line describing a pair.
pub fn pair_line(route: &str, primary: &ExchangeRecord, shadow: &ExchangeRecord) -> String {
    let side = |r: &ExchangeRecord| {
        json!({
            "backend": r.backend, "status": r.status, "ok": r.ok,
            "latency_ms": r.latency.as_secs_f64() * 1e3,
            "ttft_ms": r.ttft.map(|t| t.as_secs_f64() * 1e3),
            "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens,
            "cost_usd": r.cost_usd, "text": r.text,
        })
    };
    let c = compare(primary, shadow);
    let mut line = json!({
        "id": format!("{:016x}", rand::random::<u64>()),
        "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "route": route,
        "primary": side(primary),
        "shadow": side(shadow),
        "same_status": c.same_status,
        "exact_match": c.exact_match,
        "similarity": c.similarity,
        "length_delta": c.length_delta,
    })
    .to_string();
    line.push('\n');
    line
}

impl SampleLog {
    /// Appends `line`, rotating first when it would push the file past the limit. Blocking
    /// file I/O: call it off the async workers.
    pub fn append(&self, spec: &SampleSpec, line: &str) -> std::io::Result<()> {
        let mut open = self.open.lock();
        if open.as_ref().is_none_or(|o| o.path != spec.path) {
            *open = Some(open_append(&spec.path)?);
        }
        let current = open.as_mut().expect("opened above");
        if current.size > 0 && current.size + line.len() as u64 > spec.max_bytes {
            let mut rotated = spec.path.clone().into_os_string();
            rotated.push(".1");
            std::fs::rename(&spec.path, &rotated)?;
            *current = open_append(&spec.path)?;
        }
        current.file.write_all(line.as_bytes())?;
        current.size += line.len() as u64;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<OpenFile> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok(OpenFile {
        path: path.to_owned(),
        file,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_limit_and_keeps_one_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SampleSpec {
            path: dir.path().join("pairs.jsonl"),
            percent_bp: 10_000,
            max_bytes: 1000,
        };
        let log = SampleLog::default();
        let rec = ExchangeRecord {
            status: 200,
            ok: true,
            text: Some("x".repeat(200)),
            ..ExchangeRecord::default()
        };
        let line = pair_line("r", &rec, &rec);
        assert!(line.len() > 400 && line.len() < 1000, "{}", line.len());
        for _ in 0..7 {
            log.append(&spec, &line).unwrap();
        }
        let current = std::fs::metadata(&spec.path).unwrap().len();
        let old = std::fs::metadata(dir.path().join("pairs.jsonl.1"))
            .unwrap()
            .len();
        assert!(current <= 1000 && old <= 1000, "{current} {old}");
        assert_eq!((current + old) as usize % line.len(), 0);
        let first: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(&spec.path)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(first["exact_match"], true);
        assert_eq!(first["primary"]["text"].as_str().unwrap().len(), 200);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "only the file and one rotation"
        );
    }
}
