//! SIPp as a child process: one invocation per scenario run, bounded by
//! `-m`, `-timeout` and `-timeout_error` and by a kill if it still
//! overstays; its statistics (`-trace_stat` CSV) and message trace
//! (`-trace_msg` log) read back from its files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{DOMAIN, HOST, Transport, free_port, kill, port_taken, tail, wait_bounded};

/// The scenario files (see the README there).
pub const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testbeds/sipp");

/// `true` if SIPp can run; `false` (after a note) if it is missing and `CI`
/// is unset; panics if it is missing and `CI` is set.
pub fn sipp_available() -> bool {
    super::program_available("sipp", "-v", "", "SIPp")
}

/// Final statistics of one SIPp run, from its `-trace_stat` CSV.
#[derive(Debug, Default)]
pub struct Stats {
    pub successful: u64,
    pub failed: u64,
}

/// One SIPp invocation; its files are `<dir>/<name>.*`.
#[derive(Clone)]
pub struct Sipp {
    pub dir: PathBuf,
    pub name: String,
    /// The address SIPp binds, [`HOST`] unless [`Sipp::bind`] says otherwise.
    pub host: &'static str,
    pub port: u16,
    pub transport: Transport,
    args: Vec<String>,
    timeout_secs: u64,
}

impl Sipp {
    /// `scenario` is a file in `testbeds/sipp/` (`*.xml`) or a SIPp built-in
    /// (`uac`, `uas`); `remote` is the proxy port, `None` for a UAS.
    pub fn new(
        dir: &Path,
        name: &str,
        scenario: &str,
        transport: Transport,
        remote: Option<u16>,
    ) -> Sipp {
        let mut args = Vec::new();
        if let Some(remote) = remote {
            args.push(format!("{HOST}:{remote}"));
        }
        if Path::new(scenario).extension().is_some_and(|e| e == "xml") {
            args.extend(["-sf".into(), format!("{SCENARIOS}/{scenario}")]);
        } else {
            args.extend(["-sn".into(), scenario.into()]);
        }
        Sipp {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            host: HOST,
            port: free_port(),
            transport,
            args,
            timeout_secs: 30,
        }
    }

    /// SIPp binds `host` instead of [`HOST`].
    pub fn bind(mut self, host: &'static str) -> Sipp {
        self.host = host;
        self
    }

    /// Runs the scenario file at `path` (one a test wrote, say) instead of the
    /// one named in [`Sipp::new`].
    pub fn scenario_at(mut self, path: &Path) -> Sipp {
        let at = self.args.iter().position(|a| a == "-sf");
        let at = at.expect("Sipp::new was given a scenario file") + 1;
        self.args[at] = path.display().to_string();
        self
    }

    pub fn arg(mut self, args: &[&str]) -> Sipp {
        self.args.extend(args.iter().map(|a| (*a).to_string()));
        self
    }

    /// `-key NAME VALUE` for the scenario's `[NAME]` keywords.
    pub fn key(self, name: &str, value: &str) -> Sipp {
        self.arg(&["-key", name, value])
    }

    /// SIPp's global timeout, reached = failure; the harness kills SIPp 15 s
    /// later if it is still running.
    pub fn timeout(mut self, secs: u64) -> Sipp {
        self.timeout_secs = secs;
        self
    }

    pub fn file(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}{suffix}", self.name))
    }

    pub fn spawn(self) -> RunningSipp {
        let file = |suffix: &str| self.file(suffix).display().to_string();
        let flag = match self.transport {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
            Transport::Tls => panic!("SIPp runs here without TLS"),
        };
        let (port, mp, cp) = (
            self.port.to_string(),
            free_port().to_string(),
            free_port().to_string(),
        );
        let mut args = self.args.clone();
        #[rustfmt::skip]
        args.extend([
            "-t", flag, "-i", self.host, "-p", &port, "-mp", &mp, "-cp", &cp,
            "-key", "domain", DOMAIN, "-nostdin",
            "-timeout", &format!("{}s", self.timeout_secs), "-timeout_error",
            "-trace_stat", "-stf", &file(".csv"), "-fd", "1",
            "-trace_msg", "-message_file", &file("_messages.log"),
            "-trace_err", "-error_file", &file("_errors.log"),
            "-trace_logs", "-log_file", &file("_logs.log"),
            "-trace_screen", "-screen_file", &file("_screen.log"),
        ].map(String::from));
        fs::write(file(".cmd"), format!("sipp {}\n", args.join(" "))).unwrap();
        let out = fs::File::create(file(".out")).unwrap();
        let child = Command::new("sipp")
            .args(&args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn sipp");
        RunningSipp { child, sipp: self }
    }

    /// Runs to the end; asserts exit 0 with `calls` successful and 0 failed.
    /// Returns the invocation, whose files now hold the whole run.
    pub fn run_ok(self, calls: u64) -> Sipp {
        self.spawn().finish_ok(calls)
    }

    /// The last row of the `-trace_stat` CSV; `(C)` columns are cumulative.
    pub fn stats(&self) -> Stats {
        let csv = fs::read_to_string(self.file(".csv")).unwrap_or_default();
        let mut rows = csv.lines().filter(|l| !l.trim().is_empty());
        let (Some(header), Some(last)) = (rows.next(), rows.next_back()) else {
            return Stats::default();
        };
        let header: Vec<&str> = header.split(';').collect();
        let row: Vec<&str> = last.split(';').collect();
        let get = |column: &str| {
            let at = header.iter().position(|h| *h == column);
            at.and_then(|i| row.get(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Stats {
            successful: get("SuccessfulCall(C)"),
            failed: get("FailedCall(C)"),
        }
    }

    /// The messages SIPp sent and received so far (SIPp flushes the trace per message).
    pub fn trace(&self) -> Vec<Traced> {
        read_trace(&self.file("_messages.log"))
    }
}

/// A SIPp process; killed by its PID when dropped.
pub struct RunningSipp {
    child: Child,
    pub sipp: Sipp,
}

impl RunningSipp {
    /// Waits until SIPp holds its SIP port, so a UAS is listening.
    pub fn wait_listening(mut self) -> RunningSipp {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !port_taken(self.sipp.host, self.sipp.transport, self.sipp.port) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "sipp {} exited early: {status}\n{}",
                    self.sipp.name,
                    self.report()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sipp {} does not listen on {}",
                self.sipp.name,
                self.sipp.port
            );
            sleep(Duration::from_millis(50));
        }
        self
    }

    /// Waits for the end and returns the statistics, whatever they are.
    pub fn finish(mut self) -> Stats {
        let limit = Duration::from_secs(self.sipp.timeout_secs + 15);
        wait_bounded(&mut self.child, limit, &format!("sipp {}", self.sipp.name));
        self.sipp.stats()
    }

    /// Waits for the end; asserts exit 0 with `calls` successful and 0 failed.
    pub fn finish_ok(mut self, calls: u64) -> Sipp {
        let limit = Duration::from_secs(self.sipp.timeout_secs + 15);
        let exit = wait_bounded(&mut self.child, limit, &format!("sipp {}", self.sipp.name));
        let stats = self.sipp.stats();
        assert!(
            exit.success() && stats.successful == calls && stats.failed == 0,
            "sipp {}: {exit}, {stats:?}; expected {calls} successful, 0 failed\n{}",
            self.sipp.name,
            self.report()
        );
        self.sipp.clone()
    }

    /// The messages SIPp sent and received so far.
    pub fn trace(&self) -> Vec<Traced> {
        self.sipp.trace()
    }

    fn report(&self) -> String {
        let file = |suffix: &str| self.sipp.file(suffix);
        format!(
            "{}\n{}\n{}\nmessage trace: {}",
            tail(&file("_errors.log"), 3000),
            tail(&file("_logs.log"), 1000),
            tail(&file(".out"), 1500),
            file("_messages.log").display()
        )
    }
}

impl Drop for RunningSipp {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

// ---------------------------------------------------------------- message traces

/// One message of a SIPp `-trace_msg` log, byte for byte as sent or received.
#[derive(Debug, Clone)]
pub struct Traced {
    pub received: bool,
    pub bytes: Vec<u8>,
}

impl Traced {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The response code, `None` for a request.
    pub fn status(&self) -> Option<u16> {
        let rest = self.bytes.strip_prefix(b"SIP/2.0 ")?;
        std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()
    }

    pub fn is_request(&self, method: &str) -> bool {
        self.bytes.starts_with(format!("{method} ").as_bytes())
    }

    /// The first value of header `name` (full name, case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.text()
            .split("\r\n")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
    }
}

/// Reads a SIPp message log: each entry is a dashed date line, then
/// `UDP message received [N] bytes :` or `UDP message sent (N bytes):`, a blank line
/// and exactly N bytes of message.
fn read_trace(path: &Path) -> Vec<Traced> {
    const RECEIVED: &[u8] = b"UDP message received [";
    const SENT: &[u8] = b"UDP message sent (";
    let log = fs::read(path).unwrap_or_default();
    let find = |from: usize, what: &[u8]| {
        log[from..]
            .windows(what.len())
            .position(|w| w == what)
            .map(|i| from + i)
    };
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let next = [(find(at, RECEIVED), true), (find(at, SENT), false)]
            .into_iter()
            .filter_map(|(i, received)| Some((i?, received)))
            .min();
        let Some((start, received)) = next else {
            return out;
        };
        let digits = start + if received { RECEIVED.len() } else { SENT.len() };
        let len_end = digits
            + log[digits..]
                .iter()
                .position(|b| !b.is_ascii_digit())
                .expect("message length in the trace");
        let len: usize = std::str::from_utf8(&log[digits..len_end])
            .unwrap()
            .parse()
            .unwrap();
        let body = find(len_end, b"\n\n").expect("blank line after the trace header") + 2;
        let end = (body + len).min(log.len());
        out.push(Traced {
            received,
            bytes: log[body..end].to_vec(),
        });
        at = end;
    }
}
