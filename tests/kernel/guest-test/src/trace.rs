//! What a scenario observed: a list of steps (each call's result, with the
//! values that must not depend on the host's object numbering) and the
//! expectations checked on the kernel's run.

use std::fmt::{self, Debug};

use nesting_core::host::{Errno, HostError};

/// One observed result: a value shown as text, or an errno.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Success, with what the scenario chose to record of the value.
    Ok(String),
    /// Failure with this errno.
    Err(i32),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(v) => write!(f, "ok {v}"),
            Outcome::Err(e) => write!(f, "{}", errno_name(*e)),
        }
    }
}

/// `EINVAL`, `ENOENT`, ... for the errnos iommufd returns.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENOTTY => "ENOTTY",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESPIPE => "ESPIPE",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::E2BIG => "E2BIG",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

/// A step's errno.
pub trait AsErrno {
    /// The errno.
    fn errno(&self) -> i32;
}

impl AsErrno for HostError {
    fn errno(&self) -> i32 {
        self.errno.0
    }
}

impl AsErrno for Errno {
    fn errno(&self) -> i32 {
        self.0
    }
}

/// One expectation on the kernel's behaviour.
#[derive(Clone, Debug)]
pub struct Check {
    /// Name, unique within the scenario.
    pub name: String,
    /// Whether it held.
    pub pass: bool,
    /// What was seen.
    pub detail: String,
}

/// The record of one scenario run.
#[derive(Debug, Default)]
pub struct Trace {
    /// Every recorded step, in order.
    pub steps: Vec<(String, Outcome)>,
    /// Expectations.
    pub checks: Vec<Check>,
}

impl Trace {
    /// Records a result, showing its value with `show`; returns it.
    pub fn rec<T, E: AsErrno>(
        &mut self,
        label: &str,
        r: Result<T, E>,
        show: impl FnOnce(&T) -> String,
    ) -> Result<T, E> {
        let o = match &r {
            Ok(v) => Outcome::Ok(show(v)),
            Err(e) => Outcome::Err(e.errno()),
        };
        self.steps.push((label.to_string(), o));
        r
    }

    /// Records a result whose value is not compared (object IDs).
    pub fn id<T, E: AsErrno>(&mut self, label: &str, r: Result<T, E>) -> Result<T, E> {
        self.rec(label, r, |_| String::new())
    }

    /// Records a result with its `Debug` text.
    pub fn dbg<T: Debug, E: AsErrno>(&mut self, label: &str, r: Result<T, E>) {
        let _ = self.rec(label, r, |v| format!("{v:?}"));
    }

    /// Records a value that cannot fail.
    pub fn val<T: Debug>(&mut self, label: &str, v: T) -> T {
        self.steps
            .push((label.to_string(), Outcome::Ok(format!("{v:?}"))));
        v
    }

    /// Records a successful step shown as `text`.
    pub fn text(&mut self, label: &str, text: String) {
        self.steps.push((label.to_string(), Outcome::Ok(text)));
    }

    /// Records the outcome of step `label` as an expectation: it must be
    /// `want` (`Ok(text)` or an errno).
    pub fn expect(&mut self, name: &str, want: Result<&str, i32>) {
        let got = self
            .steps
            .iter()
            .rev()
            .find(|(l, _)| l == name)
            .map(|(_, o)| o.clone());
        let want = match want {
            Ok(v) => Outcome::Ok(v.to_string()),
            Err(e) => Outcome::Err(e),
        };
        let pass = got.as_ref() == Some(&want);
        let detail = match got {
            Some(g) if pass => format!("{g}"),
            Some(g) => format!("got {g}, want {want}"),
            None => format!("step never ran, want {want}"),
        };
        self.checks.push(Check {
            name: name.to_string(),
            pass,
            detail,
        });
    }

    /// Records a free-form expectation.
    pub fn check(&mut self, name: &str, pass: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.to_string(),
            pass,
            detail: detail.into(),
        });
    }

    /// The first step where `other` differs from this trace, if any.
    pub fn first_difference(&self, other: &Trace) -> Option<String> {
        let n = self.steps.len().max(other.steps.len());
        (0..n).find_map(|i| match (self.steps.get(i), other.steps.get(i)) {
            (Some(a), Some(b)) if a == b => None,
            (Some((la, oa)), Some((lb, ob))) if la == lb => {
                Some(format!("step {i} `{la}`: kernel {oa}, sim {ob}"))
            }
            (a, b) => Some(format!("step {i}: kernel {a:?}, sim {b:?}")),
        })
    }
}
