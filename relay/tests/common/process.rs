//! The real `sotto-relay` binary as a child process, for the tests that need signals, its
//! logs or its command line: `sotto-relay run --data DIR …` with no inherited
//! `SOTTO_RELAY_*` variables, its address read from the line it prints, its standard error
//! collected for the test to read.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

use sotto_protocol::RelayAddress;

/// A running `sotto-relay run`. Killed if dropped, so a failing test leaves none behind.
pub struct RelayProcess {
    child: Option<Child>,
    /// The address it printed.
    pub address: RelayAddress,
    /// Its data directory.
    pub data: PathBuf,
    _stdout: BufReader<ChildStdout>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `sotto-relay run --data DATA ARGS…` with standard input closed and the environment's
/// `SOTTO_RELAY_*` variables removed (tests set what they need with `env`).
pub fn relay_command(data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sotto-relay"));
    cmd.arg("run")
        .arg("--data")
        .arg(data)
        .args(args)
        .stdin(Stdio::null());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SOTTO_RELAY_")) {
        cmd.env_remove(k);
    }
    cmd
}

/// Starts `cmd` (from [`relay_command`] on `data`) and reads the address it prints;
/// `Err(standard error)` if it exits instead.
pub fn spawn(mut cmd: Command, data: &Path) -> Result<RelayProcess, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let _ = stdout.read_line(&mut line);
    let Ok(address) = line.trim().parse::<RelayAddress>() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(stderr.join().unwrap());
    };
    Ok(RelayProcess {
        child: Some(child),
        address,
        data: data.to_owned(),
        _stdout: stdout,
        stderr: Some(stderr),
    })
}

impl RelayProcess {
    /// SIGKILL (no chance to flush or close anything), then reap it.
    pub fn sigkill(mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM, then waits (bounded) for the exit; returns its status and all of stderr.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        // The workspace forbids `unsafe`, so no libc::kill: kill(1) does the same.
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        // Longer than the relay's own shutdown budget (27 s) and the unit's TimeoutStopSec.
        let status = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the relay did not stop within 60 s of SIGTERM")
            .unwrap();
        (status, self.stderr.take().unwrap().join().unwrap())
    }
}
