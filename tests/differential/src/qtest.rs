//! A client of QEMU's qtest protocol (`-qtest stdio`): one command per
//! line on QEMU's standard input, one `OK ...` or `FAIL ...` line per
//! command on its standard output; `IRQ ...` lines are asynchronous
//! notices (only with `irq_intercept_*`, which the harness never asks
//! for) and are skipped.
//!
//! Commands used (QEMU's `system/qtest.c`): `readl`/`readq ADDR` answer
//! `OK 0xVALUE`; `writel`/`writew`/`writeq ADDR VALUE` answer `OK`;
//! `read ADDR SIZE` answers `OK 0xHEX` (the bytes in address order);
//! `write ADDR SIZE 0xHEX` and `memset ADDR SIZE BYTE` answer `OK`. All accesses are to QEMU's
//! system address space, as a CPU would make them.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use thiserror::Error;

/// How long one command may take. QEMU answers in microseconds; a
/// command unanswered this long means QEMU hung or died, and the harness
/// must not wait forever in CI.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// The most of QEMU's standard error kept for error messages.
const STDERR_KEPT: usize = 4096;

/// Errors talking to QEMU.
#[derive(Debug, Error)]
pub enum QtestError {
    /// QEMU could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU closed its output (it exited, or refused its command line).
    #[error("QEMU closed the qtest channel; its stderr: {stderr}")]
    Closed {
        /// What QEMU printed on standard error.
        stderr: String,
    },
    /// No answer in time.
    #[error("QEMU did not answer `{command}` within {secs} s")]
    Timeout {
        /// The command.
        command: String,
        /// The timeout.
        secs: u64,
    },
    /// QEMU answered, but not `OK`.
    #[error("QEMU answered `{answer}` to `{command}`")]
    Refused {
        /// The command.
        command: String,
        /// The answer.
        answer: String,
    },
    /// Writing the command failed.
    #[error("sending `{command}` to QEMU")]
    Send {
        /// The command.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running QEMU under qtest. Dropping it kills QEMU.
pub struct Qtest {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Qtest {
    /// Starts `program args...`, which must include `-qtest stdio`.
    pub fn spawn(program: &Path, args: &[String]) -> Result<Qtest, QtestError> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| QtestError::Spawn {
                program: program.display().to_string(),
                source,
            })?;
        let (stdin, stdout, stderr_pipe) =
            match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                (Some(i), Some(o), Some(e)) => (i, o, e),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(QtestError::Closed {
                        stderr: "no pipes to QEMU".to_string(),
                    });
                }
            };
        let (tx, lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let kept = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 1024];
            let mut pipe = stderr_pipe;
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = kept.lock()
                    && s.len() < STDERR_KEPT
                {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Ok(Qtest {
            child,
            stdin,
            lines,
            stderr,
        })
    }

    fn stderr_text(&self) -> String {
        // Give QEMU's last words a moment to arrive before quoting them.
        thread::sleep(Duration::from_millis(50));
        self.stderr
            .lock()
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// Sends one command; returns what follows `OK` in the answer.
    pub fn command(&mut self, command: &str) -> Result<String, QtestError> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .map_err(|source| QtestError::Send {
                command: command.to_string(),
                source,
            })?;
        loop {
            let line = match self.lines.recv_timeout(ANSWER_TIMEOUT) {
                Ok(l) => l,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(QtestError::Timeout {
                        command: command.to_string(),
                        secs: ANSWER_TIMEOUT.as_secs(),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(QtestError::Closed {
                        stderr: self.stderr_text(),
                    });
                }
            };
            if line.starts_with("IRQ") {
                continue;
            }
            return match line.strip_prefix("OK") {
                Some(rest) => Ok(rest.trim().to_string()),
                None => Err(QtestError::Refused {
                    command: command.to_string(),
                    answer: line,
                }),
            };
        }
    }

    fn value(&mut self, command: &str) -> Result<u64, QtestError> {
        let answer = self.command(command)?;
        parse_hex(&answer).ok_or_else(|| QtestError::Refused {
            command: command.to_string(),
            answer,
        })
    }

    /// A 32-bit load.
    pub fn readl(&mut self, addr: u64) -> Result<u32, QtestError> {
        let v = self.value(&format!("readl {addr:#x}"))?;
        Ok(u32::try_from(v).unwrap_or(u32::MAX))
    }

    /// A 64-bit load.
    pub fn readq(&mut self, addr: u64) -> Result<u64, QtestError> {
        self.value(&format!("readq {addr:#x}"))
    }

    /// A 16-bit store.
    pub fn writew(&mut self, addr: u64, v: u16) -> Result<(), QtestError> {
        self.command(&format!("writew {addr:#x} {v:#x}")).map(drop)
    }

    /// A 32-bit store.
    pub fn writel(&mut self, addr: u64, v: u32) -> Result<(), QtestError> {
        self.command(&format!("writel {addr:#x} {v:#x}")).map(drop)
    }

    /// A 64-bit store.
    pub fn writeq(&mut self, addr: u64, v: u64) -> Result<(), QtestError> {
        self.command(&format!("writeq {addr:#x} {v:#x}")).map(drop)
    }

    /// `len` bytes at `addr`.
    pub fn read(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, QtestError> {
        let command = format!("read {addr:#x} {len:#x}");
        let answer = self.command(&command)?;
        decode_hex(answer.trim_start_matches("0x"))
            .filter(|b| b.len() == len)
            .ok_or(QtestError::Refused { command, answer })
    }

    /// Fills `len` bytes at `addr` with `byte`.
    pub fn memset(&mut self, addr: u64, len: u64, byte: u8) -> Result<(), QtestError> {
        self.command(&format!("memset {addr:#x} {len:#x} {byte:#x}"))
            .map(drop)
    }

    /// Stores `bytes` at `addr`.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), QtestError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut hex = String::with_capacity(2 * bytes.len());
        for b in bytes {
            let _ = write!(hex, "{b:02x}");
        }
        self.command(&format!("write {addr:#x} {:#x} 0x{hex}", bytes.len()))
            .map(drop)
    }
}

impl Drop for Qtest {
    fn drop(&mut self) {
        // qtest keeps QEMU running after its channel closes: end it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `0x1234` (or `1234`) as a number.
pub fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// Hex digits, two per byte, as bytes.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_hex_with_and_without_prefix() {
        assert_eq!(parse_hex("0x000000000d44101b"), Some(0x0d44_101b));
        assert_eq!(parse_hex("ff"), Some(0xff));
        assert_eq!(parse_hex("0xzz"), None);
    }

    #[test]
    fn decode_hex_bytes_in_address_order() {
        assert_eq!(decode_hex("78563412"), Some(vec![0x78, 0x56, 0x34, 0x12]));
        assert_eq!(decode_hex("785"), None);
        assert_eq!(decode_hex("7g"), None);
    }
}
