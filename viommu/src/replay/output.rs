//! The output and exit status of a replay over several scripts (REPLAY.md,
//! "Output and exit status"):
//!
//! ```text
//! FAIL 12: expected 0x1 (under mask 0xff), got 0x0   every failed check
//! ok 13                                              every passed check, with -v
//! decision 8 nested: ...                             as it happens
//! FAIL tests/replay/a.viommu (3 passed, 1 failed)    one line per script
//! PASS tests/replay/b.viommu (20 checks)
//! 23 passed, 1 failed                                last, always
//! ```
//!
//! Exit status: 0 when nothing failed, 1 when a check failed, 2 when a
//! script had an error (reported on the error stream with its line and
//! reason) or could not be read.

use std::io::Write;
use std::path::Path;

use super::{ScriptError, Summary, replay_script};

/// How much a replay prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Print every passed check too (`ok LINE`), as `viommu replay -v` does.
    pub verbose: bool,
}

/// One script's run: the checks made, up to its end or its script error.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScriptRun {
    /// Checks that held and failed before the run ended.
    pub summary: Summary,
    /// The script error that stopped the run, if any.
    pub error: Option<ScriptError>,
}

impl ScriptRun {
    /// 0 all checks held, 1 a check failed, 2 a script error.
    pub fn exit_code(&self) -> i32 {
        match (&self.error, self.summary.failed) {
            (Some(_), _) => 2,
            (None, 0) => 0,
            (None, _) => 1,
        }
    }

    /// The totals, or the script error that stopped the run.
    pub fn into_result(self) -> Result<Summary, ScriptError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.summary),
        }
    }
}

/// What a replay over several scripts came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Checks over all scripts.
    pub total: Summary,
    /// The exit status: the worst of the scripts' (2 over 1 over 0).
    pub exit_code: i32,
}

/// Replays scripts one after the other, printing each one's lines and its
/// `PASS`/`FAIL` line to `out` and script errors to `err`; [`Runner::finish`]
/// prints the closing totals.
pub struct Runner<'o> {
    options: Options,
    out: &'o mut dyn Write,
    err: &'o mut dyn Write,
    outcome: Outcome,
}

impl<'o> Runner<'o> {
    /// A runner writing the contract's lines to `out` and script errors to
    /// `err`.
    pub fn new(options: Options, out: &'o mut dyn Write, err: &'o mut dyn Write) -> Self {
        Runner {
            options,
            out,
            err,
            outcome: Outcome::default(),
        }
    }

    /// Replays the script at `path`; `None` when it cannot be read, which
    /// is reported on the error stream, prints a `FAIL` line with no checks
    /// and makes the exit status 2, as a script error does.
    pub fn file(&mut self, path: &Path) -> Option<ScriptRun> {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Some(self.script(&name, &text)),
            Err(e) => {
                let _ = self.out.flush();
                let _ = writeln!(self.err, "viommu replay: {name}: {e}");
                self.account(&name, Summary::default(), 2);
                None
            }
        }
    }

    /// Replays the script `text`, named `name` in its `PASS`/`FAIL` line
    /// and its error message.
    pub fn script(&mut self, name: &str, text: &str) -> ScriptRun {
        let run = replay_script(text, self.options, self.out);
        if let Some(e) = &run.error {
            let _ = self.out.flush();
            let _ = writeln!(self.err, "viommu replay: {name}: script error at {e}");
        }
        self.account(name, run.summary, run.exit_code());
        run
    }

    /// The script's own line, and its share of the totals.
    fn account(&mut self, name: &str, s: Summary, exit_code: i32) {
        let _ = match exit_code {
            0 => writeln!(self.out, "PASS {name} ({} checks)", s.passed),
            _ => writeln!(
                self.out,
                "FAIL {name} ({} passed, {} failed)",
                s.passed, s.failed
            ),
        };
        self.outcome.total.add(s);
        self.outcome.exit_code = self.outcome.exit_code.max(exit_code);
    }

    /// Prints the closing `N passed, N failed` line over every script and
    /// returns the totals and the exit status.
    pub fn finish(self) -> Outcome {
        let _ = writeln!(self.out, "{}", self.outcome.total);
        let _ = self.out.flush();
        self.outcome
    }
}
