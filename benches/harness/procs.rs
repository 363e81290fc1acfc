//! Child processes the suite starts (sims, nginx, switchyard): started in their
//! own process group, killed with it on drop — also when the harness panics —
//! and measured through `/proc`.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;

/// A free port on 127.0.0.1, found by binding port 0. Another process could
/// take it before we use it; on this single-user bench machine it does not.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("can bind an ephemeral port on 127.0.0.1")
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Which CPUs processes are pinned to: the proxy under test gets one core to
/// itself, the load generator and the sims share the other, so nginx and
/// switchyard run under identical conditions.
#[derive(Debug, Clone, Copy)]
pub struct Pinning {
    pub proxy_cpu: Option<usize>,
    pub rest_cpu: Option<usize>,
}

impl Pinning {
    pub fn none() -> Self {
        Self {
            proxy_cpu: None,
            rest_cpu: None,
        }
    }

    fn cpus() -> Option<usize> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cpus >= 2 && Path::new("/usr/bin/taskset").exists()).then_some(cpus)
    }

    /// Proxy on the last CPU, everything else on CPU 0, when there are ≥ 2
    /// and `taskset` exists: for load, where the proxy needs a core.
    pub fn split() -> Self {
        match Self::cpus() {
            Some(cpus) => Self {
                proxy_cpu: Some(cpus - 1),
                rest_cpu: Some(0),
            },
            None => Self::none(),
        }
    }

    /// Everything on the last CPU: for concurrency 1, where a request is
    /// strictly sequential anyway. Each hop between CPUs costs a cross-CPU
    /// wake-up (tens of µs on a VM), which would drown the proxy's own cost.
    pub fn one_cpu() -> Self {
        match Self::cpus() {
            Some(cpus) => Self {
                proxy_cpu: Some(cpus - 1),
                rest_cpu: Some(cpus - 1),
            },
            None => Self::none(),
        }
    }

    /// Pins this process (all its threads, and those it starts later) to the
    /// load generator's CPU, or frees it to all CPUs.
    pub fn pin_self(&self) {
        let cpus = match (self.rest_cpu, Self::cpus()) {
            (Some(cpu), _) => cpu.to_string(),
            (None, Some(n)) => format!("0-{}", n - 1),
            (None, None) => return,
        };
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", &cpus, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
    }

    pub fn describe(&self) -> String {
        match (self.proxy_cpu, self.rest_cpu) {
            (Some(p), Some(r)) if p == r => format!("all on CPU {p}"),
            (Some(p), Some(r)) => {
                format!("proxy under test on CPU {p}; load generator and sims on CPU {r}")
            }
            _ => "none".to_owned(),
        }
    }
}

/// A started child. Dropping it kills its whole process group (nginx's
/// workers, any helper the child forked) and reaps it.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// Starts `program args…` in a new process group, optionally pinned to
    /// `cpu`, with stdout/stderr appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        cpu: Option<usize>,
        log: &Path,
    ) -> Result<Self> {
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        };
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {name} ({}): {e}", program.display()))?;
        LIVE_GROUPS.lock().insert(child.id());
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status text)` once the child has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Waits until `addr` accepts TCP connections, failing early if the
    /// child dies; `log` is quoted in the error.
    pub fn wait_listening(&mut self, addr: SocketAddr, limit: Duration, log: &Path) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited ({status}) before listening on {addr}: {}",
                    self.name,
                    tail(log)
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not listening on {addr} after {limit:?}: {}",
                    self.name,
                    tail(log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        LIVE_GROUPS.lock().remove(&self.child.id());
    }
}

/// Process groups started and not yet dropped, for the signal handler: an
/// interrupted harness must not leave sims and proxies behind.
static LIVE_GROUPS: parking_lot::Mutex<BTreeSet<u32>> = parking_lot::Mutex::new(BTreeSet::new());

/// The live scratch directory, for the signal handler.
static SCRATCH: parking_lot::Mutex<Option<PathBuf>> = parking_lot::Mutex::new(None);

/// The group id is the child's pid (`process_group(0)`).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// On SIGINT or SIGTERM, kills every live child group, removes the scratch
/// directory and exits: drops do not run when a signal ends the process.
pub fn kill_children_on_signal() {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime starts");
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        for pgid in std::mem::take(&mut *LIVE_GROUPS.lock()) {
            kill_group(pgid);
        }
        if let Some(dir) = SCRATCH.lock().take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::process::exit(130);
    });
}

/// The last non-empty lines of a log file, for error messages.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Kernel clock ticks per second (`USER_HZ`), the unit of `/proc/PID/stat` times.
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// (ppid, utime+stime+cutime+cstime) from one `/proc/PID/stat` line.
fn parse_stat(line: &str) -> Option<(u32, u64)> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    let ppid = u32::try_from(num(1)?).ok()?;
    Some((ppid, num(11)? + num(12)? + num(13)? + num(14)?))
}

/// CPU time, in clock ticks, used so far by `root` and every live descendant
/// (nginx's master and workers), including children they have reaped.
pub fn tree_cpu_ticks(root: u32) -> u64 {
    let mut procs: HashMap<u32, (u32, u64)> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|l| parse_stat(&l))
            {
                procs.insert(pid, stat);
            }
        }
    }
    let mut total = 0;
    let mut frontier = vec![root];
    while let Some(pid) = frontier.pop() {
        if let Some((_, ticks)) = procs.get(&pid) {
            total += ticks;
        }
        frontier.extend(
            procs
                .iter()
                .filter(|(_, (ppid, _))| *ppid == pid)
                .map(|(child, _)| *child),
        );
    }
    total
}

/// A scratch directory for configs and logs, removed (with everything in it)
/// on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "switchyard-bench-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        *SCRATCH.lock() = Some(path.clone());
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        SCRATCH.lock().take();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let line = "4242 (nginx: worker (x) ) S 4200 4200 4200 0 -1 4194624 10 0 0 0 7 3 2 1 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(line), Some((4200, 7 + 3 + 2 + 1)));
    }

    #[test]
    fn measures_own_cpu() {
        let before = tree_cpu_ticks(std::process::id());
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(120) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(
            tree_cpu_ticks(std::process::id()) > before,
            "a 120 ms spin shows in /proc"
        );
    }
}
