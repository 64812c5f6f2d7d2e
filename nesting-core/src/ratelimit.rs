//! Rate-limited logging of what a guest can trigger.
//!
//! A guest makes the VMM log: a malformed command, a table it cannot
//! read, an invalidation the host refused. Each such line goes through
//! [`guest_log!`](crate::guest_log), which lets every call site log at
//! most [`LOG_BURST`] lines per [`LOG_INTERVAL`] and says, in the next
//! line it lets through, how many it suppressed. A guest repeating one
//! action as fast as it can therefore costs the host's log at most
//! `LOG_BURST / LOG_INTERVAL` lines per second per call site, never a line
//! per action.
//!
//! The limit is per call site and per process (a `static` each call site
//! owns, as the kernel's `printk_ratelimited` keeps one state per call
//! site), so two guests flooding the same line share its budget: the log
//! stays bounded however many models a process runs.
//!
//! Lines only the VMM causes (adding a device, a snapshot) use `log`
//! directly.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[doc(hidden)]
pub use log as __log;

/// Lines one call site may log per [`LOG_INTERVAL`]: the kernel's
/// `DEFAULT_RATELIMIT_BURST` (include/linux/ratelimit_types.h), which
/// `printk_ratelimited` uses for the lines a user can trigger.
pub const LOG_BURST: u32 = 10;

/// The window [`LOG_BURST`] applies to: the kernel's
/// `DEFAULT_RATELIMIT_INTERVAL` (5 * HZ). With the burst, at most two
/// lines per second per call site on average.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// One call site's budget: a fixed window of [`LOG_INTERVAL`] in which
/// [`LOG_BURST`] lines pass.
#[derive(Debug)]
pub struct LogLimit {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// When the current window began (`None`: no line yet).
    start: Option<Instant>,
    /// Lines let through in it.
    lines: u32,
    /// Lines suppressed since the last one let through.
    suppressed: u64,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new()
    }
}

impl LogLimit {
    /// A call site that has logged nothing yet.
    pub const fn new() -> LogLimit {
        LogLimit {
            window: Mutex::new(Window {
                start: None,
                lines: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged now: `Some(n)` with the number of
    /// lines suppressed since the last one let through, `None` when the
    /// window's budget is spent (the line is counted as suppressed).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`LogLimit::admit`] at time `now` (tests give their own clock).
    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let expired = w
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= LOG_INTERVAL);
        if expired {
            w.start = Some(now);
            w.lines = 0;
        }
        if w.lines < LOG_BURST {
            w.lines += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed = w.suppressed.saturating_add(1);
            None
        }
    }
}

/// Logs a line a guest can trigger, rate-limited per call site (see the
/// [module documentation](crate::ratelimit)): `guest_log!(Warn, "...",
/// args)`, the level one of `log::Level`'s names. The line's target is
/// the calling module, as with `log::warn!`.
#[macro_export]
macro_rules! guest_log {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::LogLimit = $crate::ratelimit::LogLimit::new();
        let level = $crate::ratelimit::__log::Level::$level;
        if $crate::ratelimit::__log::log_enabled!(level)
            && let Some(suppressed) = LIMIT.admit()
        {
            if suppressed == 0 {
                $crate::ratelimit::__log::log!(level, $($arg)+);
            } else {
                $crate::ratelimit::__log::log!(
                    level,
                    "{} [{suppressed} similar lines suppressed]",
                    format_args!($($arg)+)
                );
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_burst_then_suppressed_until_the_window_ends() {
        let l = LogLimit::new();
        let t0 = Instant::now();
        for _ in 0..LOG_BURST {
            assert_eq!(l.admit_at(t0), Some(0));
        }
        for _ in 0..100 {
            assert_eq!(l.admit_at(t0 + Duration::from_secs(1)), None);
        }
        // The next window's first line says how many were dropped.
        assert_eq!(l.admit_at(t0 + LOG_INTERVAL), Some(100));
        assert_eq!(l.admit_at(t0 + LOG_INTERVAL), Some(0));
    }

    #[test]
    fn limit_flood_over_a_minute_logs_at_most_a_burst_per_window() {
        let l = LogLimit::new();
        let t0 = Instant::now();
        // A million lines over 60 s of simulated time.
        let admitted = (0..1_000_000u64)
            .filter(|i| l.admit_at(t0 + Duration::from_micros(i * 60)).is_some())
            .count();
        let windows = 60 / LOG_INTERVAL.as_secs() + 1;
        assert!(
            admitted as u64 <= u64::from(LOG_BURST) * windows,
            "{admitted}"
        );
        assert!(admitted as u64 >= u64::from(LOG_BURST) * (windows - 1));
    }

    #[test]
    fn guest_log_flood_is_bounded() {
        let counter = crate::testing::LogCounter::install();
        let before = counter.lines();
        let t0 = Instant::now();
        for i in 0..10_000 {
            crate::guest_log!(Warn, "flood line {i}");
        }
        let lines = counter.lines() - before;
        let windows = t0.elapsed().as_secs() / LOG_INTERVAL.as_secs() + 1;
        assert!(lines >= 1);
        assert!(lines <= u64::from(LOG_BURST) * windows, "{lines}");
    }
}
