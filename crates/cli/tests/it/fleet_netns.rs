//! Several machines, for real: the database and two `factory worker`s on
//! three network-namespace hosts (each worker with its own host name, as on
//! separate machines), joined by veth links. One worker's link is cut while
//! it runs a block: its lease must run out, the other worker must take the
//! block over, the cut worker must stop its attempt rather than finish it,
//! and every block must end with exactly one successful attempt.
//!
//! It needs root (without it, it says so and passes: the machine cannot make
//! namespaces), `ip` (iproute2), `unshare` and `runuser` (util-linux) and
//! PostgreSQL's server binaries; as root it fails when they are missing.

use std::process::{Child, Command, Output, Stdio};

use super::*;

/// PostgreSQL's server binaries: the newest under /usr/lib/postgresql.
fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists() && bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop()
}

fn tool(name: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|dir| Path::new(dir).join(name).exists())
}

fn must(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn ip(args: &[&str]) {
    must(Command::new("ip").args(args));
}

/// Three hosts: `db` linked to `a` (10.213.1.0/24) and to `b`
/// (10.213.2.0/24). Dropping it kills whatever runs in them and deletes them.
struct Hosts {
    db: String,
    a: String,
    b: String,
}

impl Hosts {
    fn new() -> Hosts {
        let tag = std::process::id();
        let hosts = Hosts {
            db: format!("pf{tag}db"),
            a: format!("pf{tag}a"),
            b: format!("pf{tag}b"),
        };
        for ns in [&hosts.db, &hosts.a, &hosts.b] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        for (end, worker, subnet) in [("toa", &hosts.a, 1), ("tob", &hosts.b, 2)] {
            ip(&[
                "-n", &hosts.db, "link", "add", end, "type", "veth", "peer", "name", "eth0",
                "netns", worker,
            ]);
            let db_addr = format!("10.213.{subnet}.1/24");
            let worker_addr = format!("10.213.{subnet}.2/24");
            ip(&["-n", &hosts.db, "addr", "add", &db_addr, "dev", end]);
            ip(&["-n", worker, "addr", "add", &worker_addr, "dev", "eth0"]);
            ip(&["-n", &hosts.db, "link", "set", end, "up"]);
            ip(&["-n", worker, "link", "set", "eth0", "up"]);
        }
        hosts
    }

    /// Cuts (or mends) host `a`'s link at the database's end: its packets
    /// are dropped, as when a cable is pulled, with no error to either side.
    fn link_a(&self, up: bool) {
        ip(&[
            "-n",
            &self.db,
            "link",
            "set",
            "toa",
            if up { "up" } else { "down" },
        ]);
    }

    /// `program args…` run on host `ns` under the host name `name`.
    fn on(&self, ns: &str, name: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, "unshare", "--uts", "sh", "-c"]);
        command.arg(format!("hostname {name} && exec \"$0\" \"$@\""));
        command.arg(program);
        command
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b, &self.db] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kills processes in namespaces this test made.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A PostgreSQL server of its own on host `db`, reachable from both workers.
struct Database {
    _dir: tempfile::TempDir,
    server: Child,
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn start_database(hosts: &Hosts, bin: &Path) -> Database {
    let dir = tempfile::tempdir().unwrap();
    let uid_of = |flag: &str| -> u32 {
        let out = must(Command::new("id").args([flag, "postgres"]));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    std::os::unix::fs::chown(dir.path(), Some(uid_of("-u")), Some(uid_of("-g"))).unwrap();
    let data = dir.path().join("data");
    must(
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data),
    );
    let mut hba = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("pg_hba.conf"))
        .unwrap();
    std::io::Write::write_all(&mut hba, b"host all all 10.213.0.0/16 trust\n").unwrap();
    let server = Command::new("ip")
        .args([
            "netns", "exec", &hosts.db, "runuser", "-u", "postgres", "--",
        ])
        .arg(bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(dir.path())
        .args([
            "-c",
            "listen_addresses=10.213.1.1,10.213.2.1",
            "-c",
            "fsync=off",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Command::new("ip")
        .args(["netns", "exec", &hosts.a])
        .arg(bin.join("pg_isready"))
        .args(["-q", "-h", "10.213.1.1"])
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "PostgreSQL did not start on db");
        std::thread::sleep(Duration::from_millis(100));
    }
    Database { _dir: dir, server }
}

/// Two command blocks after a root; each writes "start|end <attempt>
/// <worker pid>" lines to `$MARK_DIR/<block>` around a `secs` sleep.
fn template(dir: &Path, secs: u32) -> PathBuf {
    let mut blocks = vec![serde_json::json!({
        "id": "root", "name": "Root", "layer": "L0", "type": "build", "runtime": "builtin",
        "inputs": {"config": {"builtin": "noop"}},
        "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}
    })];
    for id in ["left", "right"] {
        let script = format!(
            "m=$MARK_DIR/$FACTORY_BLOCK_ID; echo \"start $FACTORY_ATTEMPT $PPID\" >> $m; \
             sleep {secs}; echo \"end $FACTORY_ATTEMPT $PPID\" >> $m; echo ok > $FACTORY_OUTPUT_DIR/out.txt"
        );
        blocks.push(serde_json::json!({
            "id": id, "name": id, "layer": "L1", "type": "build", "runtime": "command",
            "inputs": {"depends": [{"block": "root", "key": "out"}],
                       "config": {"command": ["sh", "-c", script]}},
            "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]},
            "execution": {"max_retries": 0}
        }));
    }
    let path = dir.join("fleet.json");
    std::fs::write(
        &path,
        serde_json::json!({"id": "fleet", "name": "fleet", "version": "1", "blocks": blocks})
            .to_string(),
    )
    .unwrap();
    path
}

fn marks(dir: &Path, block: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(block))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_cut_worker_loses_its_block_to_another_host_and_stops_its_attempt() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let missing: Vec<&str> = ["ip", "unshare", "runuser"]
        .into_iter()
        .filter(|t| !tool(t))
        .collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?}: apt-get install iproute2 util-linux"
    );
    let bin = pg_bin().expect(
        "PostgreSQL's server binaries are not under /usr/lib/postgresql: apt-get install postgresql",
    );
    let hosts = Hosts::new();
    let _db = start_database(&hosts, &bin);
    let dir = tempfile::tempdir().unwrap();
    let mark_dir = dir.path().join("marks");
    std::fs::create_dir_all(&mark_dir).unwrap();
    let url = |subnet: u32| format!("postgres://postgres@10.213.{subnet}.1:5432/postgres");

    let start_worker =
        |ns: &str, name: &str, subnet: u32| -> (Child, std::thread::JoinHandle<Vec<String>>) {
            let mut child = hosts
                .on(ns, name, BIN)
                .args([
                    "worker",
                    "--slots",
                    "1",
                    "--max-concurrency",
                    "0",
                    "--lease-ms",
                    "3000",
                    "--grace-secs",
                    "5",
                ])
                .arg("--work-dir")
                .arg(dir.path().join(name))
                .env("FACTORY_DB", url(subnet))
                .env("MARK_DIR", &mark_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let (_, rest) = worker_banner(&mut child);
            (child, rest)
        };
    let (mut worker_a, log_a) = start_worker(&hosts.a, "host-a", 1);
    let (mut worker_b, log_b) = start_worker(&hosts.b, "host-b", 2);
    let pid_a = worker_a.id().to_string();
    let pid_b = worker_b.id().to_string();

    let on_b = |args: &[&str]| -> Output {
        must(
            hosts
                .on(&hosts.b, "host-b", BIN)
                .args(args)
                .env("FACTORY_DB", url(2))
                .env("FACTORY_ACTOR", "cli:tester"),
        )
    };
    let secs = 6;
    let template = template(dir.path(), secs);
    let run = String::from_utf8(on_b(&["run", template.to_str().unwrap(), "--no-run"]).stdout)
        .unwrap()
        .trim()
        .to_string();

    // Each worker (one slot each) starts one of the two blocks; cut host a.
    let deadline = Instant::now() + Duration::from_secs(30);
    let cut_block = loop {
        let started: Vec<(&str, Vec<String>)> = ["left", "right"]
            .into_iter()
            .map(|b| (b, marks(&mark_dir, b)))
            .filter(|(_, lines)| !lines.is_empty())
            .collect();
        if started.len() == 2 {
            let on_a = started
                .iter()
                .find(|(_, lines)| lines[0] == format!("start 1 {pid_a}"))
                .unwrap_or_else(|| panic!("host a runs no block: {started:?} (a is {pid_a})"));
            break on_a.0;
        }
        assert!(
            Instant::now() < deadline,
            "the workers did not start both blocks"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let other_block = if cut_block == "left" { "right" } else { "left" };
    hosts.link_a(false);
    let cut_at = Instant::now();

    // Host b finishes its block, then takes the cut one over once the lease
    // has run out, and finishes the run.
    let doc = wait_while_running(
        Duration::from_secs(60),
        "host b did not finish the run",
        || serde_json::from_slice(&on_b(&["status", &run, "--json"]).stdout).unwrap(),
    );
    assert_eq!(doc["status"], "done", "{doc}");
    // Past the time host a's attempt would have ended had it not been stopped.
    std::thread::sleep(
        (cut_at + Duration::from_secs(secs as u64 + 2)).saturating_duration_since(Instant::now()),
    );

    assert_eq!(
        marks(&mark_dir, cut_block),
        [
            format!("start 1 {pid_a}"),
            format!("start 2 {pid_b}"),
            format!("end 2 {pid_b}")
        ],
        "the cut block: attempt 1 on host a stopped, attempt 2 on host b"
    );
    assert_eq!(
        marks(&mark_dir, other_block),
        [format!("start 1 {pid_b}"), format!("end 1 {pid_b}")]
    );
    assert_eq!(doc["blocks"][cut_block]["attempts"], 2, "{doc}");
    assert_eq!(doc["blocks"][other_block]["attempts"], 1, "{doc}");

    // The log: exactly one successful attempt per block, and the cut one's
    // first attempt abandoned because its lease expired.
    let events = String::from_utf8(on_b(&["events", &run, "--json"]).stdout).unwrap();
    let events: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |kind: &str, block: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["type"] == kind && e["block"] == block)
            .collect()
    };
    for block in ["root", "left", "right"] {
        let succeeded: Vec<&Value> = of("attempt_finished", block)
            .into_iter()
            .filter(|e| e["outcome"] == "succeeded")
            .collect();
        assert_eq!(succeeded.len(), 1, "{block}: {events:?}");
        assert_eq!(of("block_done", block).len(), 1, "{block}: {events:?}");
    }
    let started = of("block_started", cut_block);
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(started[0]["owner"].as_str().unwrap().starts_with("host-a:"));
    assert!(started[1]["owner"].as_str().unwrap().starts_with("host-b:"));
    let abandoned = of("attempt_abandoned", cut_block);
    assert_eq!(abandoned.len(), 1, "{events:?}");
    assert_eq!(abandoned[0]["attempt"], 1);
    assert!(
        abandoned[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("expired")),
        "{abandoned:?}"
    );
    assert!(
        of("attempt_abandoned", other_block).is_empty(),
        "{events:?}"
    );

    // Mend the link: host a catches up and both workers stop cleanly.
    hosts.link_a(true);
    for worker in [&worker_a, &worker_b] {
        // SAFETY: signals children this test spawned and still owns.
        unsafe {
            libc::kill(worker.id() as i32, libc::SIGTERM);
        }
    }
    let status_a = worker_a.wait().unwrap();
    let status_b = worker_b.wait().unwrap();
    let log_a = log_a.join().unwrap();
    let log_b = log_b.join().unwrap();
    assert!(
        log_a.iter().any(|l| l.contains("lease lost")),
        "host a says it stopped its attempt: {log_a:?}"
    );
    assert!(status_a.success(), "host a: {status_a:?} {log_a:?}");
    assert!(status_b.success(), "host b: {status_b:?} {log_b:?}");
}
