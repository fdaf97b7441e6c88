//! The proxy under test as a child process: started on loopback ports with
//! a data directory, ready once it answers an OPTIONS, stopped by a signal
//! or killed by its PID.

use std::fs;
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{
    DOMAIN, HOST, Transport, add_permit, add_user, free_port, kill, port_taken, proxy_cli,
    proxy_program, signal, tail, wait_bounded, wait_until, workdir,
};

/// The proxy's listeners on [`HOST`]: always UDP, TCP and TLS if asked for.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub udp: u16,
    pub tcp: Option<u16>,
    pub tls: Option<u16>,
}

impl Ports {
    pub fn port(self, transport: Transport) -> u16 {
        match transport {
            Transport::Udp => self.udp,
            Transport::Tcp => self.tcp.expect("the proxy was started without TCP"),
            Transport::Tls => self.tls.expect("the proxy was started without TLS"),
        }
    }
}

/// A running `permit-proxy`; killed by its PID when dropped.
pub struct Proxy {
    child: Child,
    pub ports: Ports,
    pub log: PathBuf,
}

impl Proxy {
    /// Starts the proxy on `ports` with `data` and the command-line `flags`,
    /// and waits until it serves. Its log is `<dir>/<name>.log`.
    pub fn start(dir: &Path, name: &str, data: &Path, ports: Ports, flags: &[&str]) -> Proxy {
        let mut proxy = Proxy::spawn(dir, name, data, ports, flags);
        if let Err(why) = proxy.wait_ready() {
            panic!("permit-proxy did not start\n{why}");
        }
        proxy
    }

    /// [`Proxy::start`] with every file the proxy writes limited to `kib` KiB
    /// (RLIMIT_FSIZE, with SIGXFSZ ignored so that a write past it fails with EFBIG as
    /// on a full disk) and its log at `info`.
    pub fn start_file_limited(
        dir: &Path,
        name: &str,
        data: &Path,
        ports: Ports,
        flags: &[&str],
        kib: u64,
    ) -> Proxy {
        let blocks = (kib * 2).to_string();
        let mut command = Command::new("sh");
        command
            .args([
                "-c",
                "ulimit -f \"$1\" && trap '' XFSZ && shift && exec \"$@\"",
            ])
            .args(["sh", &blocks])
            .arg(proxy_program())
            .env("PERMIT_LOG", "info");
        let mut proxy = Proxy::spawn_command(command, dir, name, data, ports, flags);
        if let Err(why) = proxy.wait_ready() {
            panic!("permit-proxy did not start\n{why}");
        }
        proxy
    }

    fn spawn(dir: &Path, name: &str, data: &Path, ports: Ports, flags: &[&str]) -> Proxy {
        let mut command = Command::new(proxy_program());
        command.env(
            "PERMIT_LOG",
            std::env::var("PERMIT_LOG").unwrap_or_else(|_| "debug".into()),
        );
        Proxy::spawn_command(command, dir, name, data, ports, flags)
    }

    fn spawn_command(
        mut command: Command,
        dir: &Path,
        name: &str,
        data: &Path,
        ports: Ports,
        flags: &[&str],
    ) -> Proxy {
        command
            .arg("run")
            .args(flags)
            .args(["--listen", &format!("udp:{HOST}:{}", ports.udp)]);
        for (scheme, port) in [("tcp", ports.tcp), ("tls", ports.tls)] {
            if let Some(port) = port {
                command.args(["--listen", &format!("{scheme}:{HOST}:{port}")]);
            }
        }
        let log = dir.join(format!("{name}.log"));
        let child = command
            .arg("--data")
            .arg(data)
            .args(["--domain", DOMAIN])
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join(format!("{name}.stdout"))).unwrap())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn permit-proxy");
        Proxy { child, ports, log }
    }

    /// Ready when the UDP socket is bound, the TCP (and TLS) listeners accept
    /// and the proxy answers an OPTIONS to its domain (RFC 3261 section 11,
    /// not challenged: it reaches no user) over UDP with any response; the
    /// exit status and the tail of its log if it exited first.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let probe = UdpSocket::bind((HOST, 0)).unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let me = probe.local_addr().unwrap().port();
        for seq in 1.. {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!(
                    "exited during start-up: {status}\n{}",
                    tail(&self.log, 4000)
                ));
            }
            assert!(
                Instant::now() < deadline,
                "permit-proxy did not answer OPTIONS\n{}",
                tail(&self.log, 4000)
            );
            let listening = port_taken(HOST, Transport::Udp, self.ports.udp)
                && [self.ports.tcp, self.ports.tls]
                    .into_iter()
                    .flatten()
                    .all(|port| TcpStream::connect((HOST, port)).is_ok());
            if !listening {
                sleep(Duration::from_millis(100));
                continue;
            }
            let options = format!(
                "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{me};branch=z9hG4bK-ready-{seq}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:probe@{DOMAIN}>;tag=ready\r\nTo: <sip:{DOMAIN}>\r\n\
                 Call-ID: ready-{me}@{HOST}\r\nCSeq: {seq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
            );
            probe
                .send_to(options.as_bytes(), (HOST, self.ports.udp))
                .unwrap();
            let mut buf = [0u8; 4096];
            if let Ok(n) = probe.recv(&mut buf)
                && buf[..n].starts_with(b"SIP/2.0 ")
            {
                return Ok(());
            }
        }
        unreachable!("the probe loop only ends by returning")
    }

    pub fn port(&self, transport: Transport) -> u16 {
        self.ports.port(transport)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asserts the proxy is still running (it did not crash).
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("permit-proxy died: {status}\n{}", tail(&self.log, 4000));
        }
    }

    /// SIGTERM or SIGINT: the proxy must exit cleanly (status 0) within 10 s.
    pub fn stop_gracefully(mut self, sig: &str) {
        self.assert_alive();
        signal(self.pid(), sig);
        let status = wait_bounded(
            &mut self.child,
            Duration::from_secs(10),
            "permit-proxy after SIG{sig}",
        );
        assert!(
            status.success(),
            "permit-proxy exit after SIG{sig}: {status}\n{}",
            tail(&self.log, 4000)
        );
        self.wait_released();
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill_hard(mut self) {
        self.assert_alive();
        self.child.kill().expect("SIGKILL permit-proxy");
        self.child.wait().unwrap();
        self.wait_released();
    }

    /// After a stop, waits until nothing holds the ports any more, so that a
    /// restarted proxy is the one that answers.
    fn wait_released(&self) {
        let Ports { udp, tcp, tls } = self.ports;
        wait_until(
            Duration::from_secs(10),
            &format!(
                "the ports {:?} are released after the proxy stopped",
                self.ports
            ),
            || {
                !port_taken(HOST, Transport::Udp, udp)
                    && [tcp, tls]
                        .into_iter()
                        .flatten()
                        .all(|port| !port_taken(HOST, Transport::Tcp, port))
            },
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

// ---------------------------------------------------------------- test bed

/// What a test asks of the proxy beyond UDP and TCP listeners.
#[derive(Default)]
pub struct ProxyOptions {
    /// `(user, password)` pairs added with `user add` before the start; with
    /// none the proxy runs open (`--no-auth`).
    pub users: Vec<(&'static str, &'static str)>,
    /// `--digest-algorithms` value, if any.
    pub digest_algorithms: Option<&'static str>,
    /// A TLS listener with a self-signed certificate.
    pub tls: bool,
    /// `(callee, caller)` user pairs: the caller is put on the callee's
    /// permitted-terminal list (`permit add`), which the gate checks for
    /// every authenticated call.
    pub permits: Vec<(&'static str, &'static str)>,
}

/// One test's directory and a proxy started on fresh ports with
/// [`ProxyOptions`] (its log is `proxy.log` there).
pub struct Bed {
    pub dir: PathBuf,
    pub proxy: Proxy,
}

impl Bed {
    /// Adds the users and permits, then starts the proxy on fresh ports. A
    /// start-up that lost a port to another process on the machine (bind:
    /// address in use) is retried on other ports, twice at most.
    pub fn new(test: &str, options: &ProxyOptions) -> Bed {
        Bed::configured(test, options, None)
    }

    /// [`Bed::new`] with a configuration file (`--config`) whose text is
    /// `toml`, e.g. `[registrar]\nmin_expires = 5\n` for a test of
    /// registration refreshes.
    pub fn configured(test: &str, options: &ProxyOptions, toml: Option<&str>) -> Bed {
        let dir = workdir(test);
        let data = dir.join("data");
        for (user, password) in &options.users {
            add_user(&data, user, password);
        }
        for (callee, caller) in &options.permits {
            add_permit(&data, callee, caller);
        }
        let tls_files = options.tls.then(|| self_signed(&dir, &data));
        let mut flags: Vec<String> = Vec::new();
        if let Some(toml) = toml {
            let file = dir.join("proxy.toml");
            fs::write(&file, toml).expect("write the proxy's configuration file");
            flags.extend(["--config".into(), file.display().to_string()]);
        }
        if options.users.is_empty() {
            flags.push("--no-auth".into());
        }
        if let Some(algorithms) = options.digest_algorithms {
            flags.extend(["--digest-algorithms".into(), algorithms.into()]);
        }
        if let Some((cert, key)) = &tls_files {
            let (cert, key) = (cert.display(), key.display());
            flags.extend(["--tls-cert".into(), cert.to_string()]);
            flags.extend(["--tls-key".into(), key.to_string()]);
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut attempt = 1;
        loop {
            let ports = Ports {
                udp: free_port(),
                tcp: Some(free_port()),
                tls: options.tls.then(free_port),
            };
            let mut proxy = Proxy::spawn(&dir, "proxy", &data, ports, &flags);
            match proxy.wait_ready() {
                Ok(()) => return Bed { dir, proxy },
                Err(log) if attempt < 3 && log.contains("in use") => attempt += 1,
                Err(log) => panic!("permit-proxy did not start\n{log}"),
            }
        }
    }
}

/// A self-signed certificate and its key for the proxy's TLS listener, made
/// by `permit-proxy cert self-signed --out DIR`: the PEM file with "key" in
/// its name is the key, the other one the certificate.
fn self_signed(dir: &Path, data: &Path) -> (PathBuf, PathBuf) {
    let certs = dir.join("certs");
    proxy_cli(
        data,
        &["cert", "self-signed", "--out", &certs.display().to_string()],
    );
    let files: Vec<PathBuf> = fs::read_dir(&certs)
        .expect("read the certificate directory")
        .map(|e| e.unwrap().path())
        .collect();
    let pick = |key: bool| {
        files
            .iter()
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy().to_lowercase();
                name.contains("key") == key
                    && [".pem", ".crt", ".key"].iter().any(|x| name.ends_with(x))
            })
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "cert self-signed wrote no {} file: {files:?}",
                    if key { "key" } else { "certificate" }
                )
            })
    };
    (pick(false), pick(true))
}
