//! A real PostgreSQL server for one test: `initdb` into a fresh directory, `postgres`
//! on an ephemeral loopback port with its unix socket in that directory, stopped by
//! its PID when dropped. Never a mock. As root (CI), `initdb` and `postgres` run as
//! the `postgres` system user through `setpriv` (initdb refuses root).

use std::fs;
use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{HOST, kill, peer_missing, signal, tail};

/// The binaries of the newest installed major version, if any.
fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, b)| b)
}

/// Whether PostgreSQL is installed; a missing one fails the test when `CI` is set.
pub fn postgres_available(suite: &str) -> bool {
    bin_dir().is_some()
        || peer_missing(
            "PostgreSQL (initdb) is not installed",
            " (apt-get install postgresql)",
            suite,
        )
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` from the PostgreSQL binaries, as the `postgres` user when we are root.
fn pg_command(bin: &Path, program: &str, root: bool) -> Command {
    if root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

/// A running server; stopped (SIGINT, fast shutdown) and removed when dropped.
pub struct Postgres {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    root: bool,
}

impl Postgres {
    /// Starts a fresh server in `/tmp/permit-pg-<pid>-<name>` (a directory every
    /// user can reach, short enough for the socket's path) and waits until it accepts
    /// connections. The superuser is `permit`, trusted on loopback.
    pub fn start(name: &str) -> Postgres {
        let dir = std::env::temp_dir().join(format!("permit-pg-{}-{name}", std::process::id()));
        let dir = dir.as_path();
        let bin = bin_dir().expect("PostgreSQL is installed (check postgres_available first)");
        let root = running_as_root();
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).unwrap();
        let data = dir.join("data");
        let log = dir.join("postgres.log");
        fs::File::create(&log).unwrap();
        if root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown the PostgreSQL directory");
        }
        let out = pg_command(&bin, "initdb", root)
            .args(["-D"])
            .arg(&data)
            .args(["-U", "permit", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = super::free_port();
        let child = Self::spawn(&bin, root, dir, port, &log);
        let mut pg = Postgres {
            child,
            port,
            dir: dir.to_path_buf(),
            log,
            bin,
            root,
        };
        pg.wait_ready();
        pg
    }

    fn spawn(bin: &Path, root: bool, dir: &Path, port: u16, log: &Path) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        pg_command(bin, "postgres", root)
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir)
            .args(["-c", &format!("listen_addresses={HOST}")])
            // A test server: no fsync (the tests kill proxies, not the database).
            .args(["-c", "fsync=off", "-c", "max_connections=60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn postgres")
    }

    /// Stops the server (fast shutdown: clients are disconnected), keeping its data.
    pub fn stop(&mut self) {
        signal(self.child.id(), "INT");
        super::wait_bounded(
            &mut self.child,
            Duration::from_secs(20),
            "postgres after SIGINT",
        );
    }

    /// Starts the stopped server again on the same data and port.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.bin, self.root, &self.dir, self.port, &self.log);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("postgres exited: {status}\n{}", tail(&self.log, 4000));
            }
            if postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections\n{}",
                tail(&self.log, 4000)
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://permit@{HOST}:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub fn create_db(&self, name: &str) -> String {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .expect("connect to the test server");
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create the database");
        self.url(name)
    }

    /// A connection to `db` for the test's own checks.
    pub fn client(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(db), postgres::NoTls).expect("connect")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Fast shutdown by PID; SIGKILL if it takes too long.
            signal(self.child.id(), "INT");
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                sleep(Duration::from_millis(50));
            }
            kill(&mut self.child);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
