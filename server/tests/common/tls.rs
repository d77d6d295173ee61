//! TLS for the Redis tests: a CA and a server certificate for 127.0.0.1 made with the `openssl`
//! command, and a `redis-server` that speaks TLS only, on loopback.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    WAIT,
    procs::{Proc, RedisServer, port_open, tool},
};

/// A CA and a server certificate it signed, in a directory of their own (removed on drop).
pub struct TlsFiles {
    pub dir: PathBuf,
    /// The CA's certificate (PEM): what a client trusts.
    pub ca: PathBuf,
    /// The server's certificate (for IP 127.0.0.1 and `localhost`) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}); install test dependencies with scripts/test.sh"));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TlsFiles {
    /// Generates a fresh CA (named `name`) and a server certificate signed by it.
    pub fn generate(name: &str) -> TlsFiles {
        let dir = std::env::temp_dir().join(format!(
            "datastream-tls-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let subject = format!("/CN=datastream test CA {name}");
        openssl(
            &dir,
            &[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", &subject]]
                .concat(),
        );
        openssl(
            &dir,
            &[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat(),
        );
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("san.ext");
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
        TlsFiles { ca: dir.join("ca.crt"), cert: dir.join("server.crt"), key: dir.join("server.key"), dir }
    }

    /// The CA certificate's path as a string (for flags).
    pub fn ca_path(&self) -> String {
        self.ca.display().to_string()
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `redis-server` speaking TLS only (no plain port) with `files`' certificate, on a free
/// loopback port.
pub fn start_tls_redis(files: &TlsFiles) -> RedisServer {
    for _ in 0..3 {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
        let child = Command::new(tool("redis-server"))
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(&files.cert)
            .arg("--tls-key-file")
            .arg(&files.key)
            .arg("--tls-ca-cert-file")
            .arg(&files.ca)
            .args(["--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install test dependencies with scripts/test.sh")
            });
        let mut proc = Proc { child, name: "redis-server (TLS)" };
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if port_open(port) {
                return RedisServer { proc, port };
            }
            if let Ok(Some(_)) = proc.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("redis-server with TLS did not start (is it built with TLS support?)");
}

/// The `rediss://` URL of a TLS Redis on `port`.
pub fn tls_url(port: u16) -> String {
    format!("rediss://127.0.0.1:{port}/")
}
