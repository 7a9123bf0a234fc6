//! Running QEMU as a child process: to its end or to a deadline, with its
//! console collected line by line (and echoed, if asked) and its standard
//! error kept for the report.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a run printed and how it ended.
pub struct Run {
    /// Console lines, without line terminators.
    pub lines: Vec<String>,
    /// QEMU's standard error.
    pub stderr: String,
    /// QEMU's exit code (`None`: killed by a signal or at the deadline).
    pub code: Option<i32>,
    /// Whether the deadline passed and QEMU was killed.
    pub timed_out: bool,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Run {
    /// The captured log, for error messages.
    pub fn log(&self) -> String {
        let mut s = String::from("---- console ----\n");
        for l in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        if !self.stderr.trim().is_empty() {
            s.push_str("---- qemu stderr ----\n");
            s.push_str(&self.stderr);
        }
        s.push_str(&format!(
            "---- qemu exit code {:?}{}, {:.1} s ----",
            self.code,
            if self.timed_out {
                " (killed at the deadline)"
            } else {
                ""
            },
            self.elapsed.as_secs_f64()
        ));
        s
    }
}

/// Runs a QEMU command line (any image: isola's, or Linux on bare QEMU) to
/// its end or to `deadline`, collecting the console and QEMU's stderr; with
/// `echo`, each console line is also printed as it arrives.
pub fn watch(mut cmd: Command, deadline: Duration, echo: bool) -> Result<Run, String> {
    let started = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child: Child = cmd
        .spawn()
        .map_err(|e| format!("could not start qemu-system-aarch64: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut stderr_pipe = child.stderr.take().ok_or("no stderr pipe")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(bytes) = line else { break };
            let text = String::from_utf8_lossy(&bytes)
                .trim_end_matches('\r')
                .to_string();
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if echo {
                    println!("{line}");
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                // Our own child, by its handle.
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for qemu: {e}"))?;
    let _ = reader.join();
    // Lines that arrived between the deadline and the kill.
    lines.extend(rx.try_iter());
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Run {
        lines,
        stderr,
        code: status.code(),
        timed_out,
        elapsed: started.elapsed(),
    })
}
