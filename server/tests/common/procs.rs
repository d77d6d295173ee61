//! Real child processes for the tests: the relay binary, `moto_server` (SQS), and the Python
//! publisher. Each is killed by PID when its handle drops, so a failing test leaves nothing behind.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::WAIT;

/// A child process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `kB` field of `/proc/<pid>/status` in KiB: `VmRSS` (resident now), `VmHWM` (resident at
/// most, since start). `None` once the process is gone.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Resets `pid`'s peak resident memory (`VmHWM`) to its current size (Linux: `clear_refs` 5), so
/// a later `VmHWM` is the peak since now. False where that is not allowed.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// How many file descriptors `pid` has open (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(Iterator::count)
}

/// Where the test tools live: `$DATASTREAM_TEST_VENV/bin` if set (the test script sets it),
/// else the `PATH`.
pub fn tool(name: &str) -> PathBuf {
    if let Some(venv) = std::env::var_os("DATASTREAM_TEST_VENV") {
        let p = PathBuf::from(venv).join("bin").join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Whether something accepts connections on loopback `port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
}

/// A running `moto_server`: a real SQS-protocol server, in memory, on loopback.
pub struct Moto {
    pub proc: Proc,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Moto {
        // A port picked free can be taken before moto binds it; try a few.
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(tool("moto_server"))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start moto_server ({e}); install test dependencies with scripts/test.sh")
                });
            let mut proc = Proc { child, name: "moto_server" };
            let start = Instant::now();
            while start.elapsed() < WAIT {
                if port_open(port) {
                    return Moto { proc, endpoint: format!("http://127.0.0.1:{port}") };
                }
                if let Ok(Some(_)) = proc.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = proc.child.kill();
        }
        panic!("moto_server did not start");
    }
}

/// Runs `tests/sqs_publish.py` (boto3, exactly as the original README publishes) with `args`.
pub fn boto3_publish(endpoint: &str, queue: &str, args: &[&str]) {
    let script = super::repo_root().join("tests/sqs_publish.py");
    let out = Command::new(tool("python3"))
        .arg(script)
        .args(["--queue", queue])
        .args(args)
        .env("AWS_ENDPOINT_URL_SQS", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("run python3 tests/sqs_publish.py");
    assert!(out.status.success(), "sqs_publish.py failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The relay binary running as a child process, with its JSON log lines collected.
pub struct Relay {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Relay {
    /// Starts `datastream` with `env` (plus a loopback port 0 and JSON logs) and waits until it
    /// logs its address.
    pub fn start(env: &[(&str, &str)]) -> Relay {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_datastream"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATASTREAM_LISTEN", "127.0.0.1:0")
            .env("DATASTREAM_LOG_FORMAT", "json")
            .env("DATASTREAM_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn datastream");
        let stdout = child.stdout.take().expect("stdout");
        let proc = Proc { child, name: "datastream" };
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    eprintln!("relay: {line}");
                    continue;
                };
                if v["message"] == "listening" {
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                }
                sink.lock().expect("logs").push(v);
            }
        });
        let addr = rx.recv_timeout(WAIT).expect("relay did not log its address");
        Relay { proc, addr: addr.parse().expect("address"), logs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr)
    }

    /// Whether a log line with this message (and, if given, field value) was written.
    pub fn logged(&self, message: &str, field: Option<(&str, &str)>) -> bool {
        self.logs
            .lock()
            .expect("logs")
            .iter()
            .any(|v| v["message"] == message && field.is_none_or(|(k, val)| v[k].as_str() == Some(val)))
    }
}

/// A running `redis-server` on loopback, without persistence.
pub struct RedisServer {
    pub proc: Proc,
    pub port: u16,
}

impl RedisServer {
    /// Starts on a free port.
    pub fn start() -> RedisServer {
        for _ in 0..3 {
            if let Some(server) = Self::start_on(free_port()) {
                return server;
            }
        }
        panic!("redis-server did not start; install test dependencies with scripts/test.sh");
    }

    /// Starts on `port` (e.g. again after a restart); `None` if it did not come up.
    pub fn start_on(port: u16) -> Option<RedisServer> {
        let child = Command::new(tool("redis-server"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install test dependencies with scripts/test.sh")
            });
        let mut proc = Proc { child, name: "redis-server" };
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if port_open(port) {
                return Some(RedisServer { proc, port });
            }
            if let Ok(Some(_)) = proc.child.try_wait() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(mut self) -> u16 {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        self.port
    }
}

/// Starts `datastream tail ARGS`; returns the process and its stdout lines as they come.
pub fn spawn_tail(args: &[&str]) -> (Proc, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_datastream"))
        .arg("tail")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn datastream tail");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Proc { child, name: "datastream tail" }, lines)
}

/// The AWS settings that point a process at `moto_server`.
pub fn moto_env(endpoint: &str) -> [(&'static str, String); 4] {
    [
        ("AWS_ENDPOINT_URL_SQS", endpoint.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
    ]
}

/// Creates an SQS queue on `moto_server` with boto3.
pub fn create_queue(endpoint: &str, name: &str) {
    let script = format!("import boto3; boto3.client('sqs', region_name='us-east-1').create_queue(QueueName='{name}')");
    let status =
        Command::new(tool("python3")).args(["-c", &script]).envs(moto_env(endpoint)).status().expect("run python3");
    assert!(status.success(), "create queue {name}");
}
