//! Lexing and parsing of `.viommu` scenario scripts (`REPLAY.md`).
//!
//! Parsing is total over the syntax: every line becomes a [`Directive`] or a
//! [`ScriptError`] naming the line and the reason. Whether a directive is
//! allowed at that point (after `model`, after `ram`) is the runner's
//! business.

use nesting_core::types::{Access, parse_u64};
use thiserror::Error;

/// A script error: the script, not the model, is wrong. Exit status 2.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct ScriptError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl ScriptError {
    /// An error at `line`.
    pub fn new(line: usize, reason: impl Into<String>) -> Self {
        ScriptError {
            line,
            reason: reason.into(),
        }
    }
}

/// Access width of a memory, register or config access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// 1 byte.
    W8,
    /// 2 bytes.
    W16,
    /// 4 bytes.
    W32,
    /// 8 bytes.
    W64,
}

impl Width {
    /// Size in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Width::W8 => 1,
            Width::W16 => 2,
            Width::W32 => 4,
            Width::W64 => 8,
        }
    }

    /// Largest value of this width.
    pub fn max(self) -> u64 {
        u64::MAX >> (64 - 8 * self.bytes() as u32)
    }

    fn from_suffix(s: &str) -> Option<Width> {
        match s {
            "8" => Some(Width::W8),
            "16" => Some(Width::W16),
            "32" => Some(Width::W32),
            "64" => Some(Width::W64),
            _ => None,
        }
    }
}

/// Comparison of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

/// `[& MASK] ==|!= VALUE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    /// Mask applied to the actual value before comparing.
    pub mask: Option<u64>,
    /// Comparison.
    pub op: CmpOp,
    /// Expected value.
    pub value: u64,
}

impl Expect {
    /// The part of `actual` the check compares: the value under the
    /// mask, or all of it.
    pub fn compared(&self, actual: u64) -> u64 {
        actual & self.mask.unwrap_or(u64::MAX)
    }

    /// Whether `actual` satisfies the check.
    pub fn holds(&self, actual: u64) -> bool {
        let v = self.compared(actual);
        match self.op {
            CmpOp::Eq => v == self.value,
            CmpOp::Ne => v != self.value,
        }
    }

    /// The expectation as text, for `FAIL` lines.
    pub fn describe(&self) -> String {
        let op = match self.op {
            CmpOp::Eq => "",
            CmpOp::Ne => "not ",
        };
        match self.mask {
            Some(m) => format!("{op}{:#x} (under mask {m:#x})", self.value),
            None => format!("{op}{:#x}", self.value),
        }
    }
}

/// The expected result of a `translate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslateExpect {
    /// Translated to this GPA.
    Gpa(u64),
    /// Refused.
    Fault,
}

/// One scatter-gather element of `submit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// Guest address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u32,
}

/// One parsed directive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Directive {
    /// `model NAME [key=value ...]`
    Model {
        /// `vtd`, `smmuv3` or `virtio-iommu`.
        name: String,
        /// `key=value` tokens.
        opts: Vec<String>,
    },
    /// `ram GPA SIZE`
    Ram {
        /// Base address.
        gpa: u64,
        /// Size in bytes.
        size: u64,
    },
    /// `host PROFILE [key=value ...]`
    Host {
        /// Profile and overrides, joined by commas.
        spec: String,
    },
    /// `passthrough SID [=> KIND]`
    Passthrough {
        /// Requester.
        sid: u32,
        /// Expected decision kind.
        expect: Option<String>,
    },
    /// `writeN GPA VALUE`
    Write {
        /// Width.
        width: Width,
        /// Address.
        gpa: u64,
        /// Value.
        value: u64,
    },
    /// `write-bytes GPA HEX`
    WriteBytes {
        /// Address.
        gpa: u64,
        /// Bytes.
        bytes: Vec<u8>,
    },
    /// `readN GPA [& MASK] == VALUE`
    Read {
        /// Width.
        width: Width,
        /// Address.
        gpa: u64,
        /// Check.
        expect: Expect,
    },
    /// `mmio-writeN OFFSET VALUE`
    MmioWrite {
        /// Width (32 or 64).
        width: Width,
        /// Register offset.
        offset: u64,
        /// Value.
        value: u64,
    },
    /// `mmio-readN OFFSET [& MASK] == VALUE`
    MmioRead {
        /// Width (32 or 64).
        width: Width,
        /// Register offset.
        offset: u64,
        /// Check.
        expect: Expect,
    },
    /// `features [& MASK] == VALUE`
    Features {
        /// Check.
        expect: Expect,
    },
    /// `ack-features VALUE`
    AckFeatures {
        /// Features acknowledged.
        value: u64,
    },
    /// `config-readN OFFSET [& MASK] == VALUE`
    ConfigRead {
        /// Width.
        width: Width,
        /// Offset in device config space.
        offset: u64,
        /// Check.
        expect: Expect,
    },
    /// `config-writeN OFFSET VALUE`
    ConfigWrite {
        /// Width.
        width: Width,
        /// Offset.
        offset: u64,
        /// Value.
        value: u64,
    },
    /// `queue Q size=N desc=GPA avail=GPA used=GPA`
    Queue {
        /// Queue index.
        q: u16,
        /// Ring size.
        size: u16,
        /// Descriptor table.
        desc: u64,
        /// Available ring.
        avail: u64,
        /// Used ring.
        used: u64,
    },
    /// `submit Q [out=...] [in=...]`
    Submit {
        /// Queue index.
        q: u16,
        /// Device-readable buffers.
        out: Vec<Buf>,
        /// Device-writable buffers.
        inp: Vec<Buf>,
    },
    /// `used Q == COUNT`
    Used {
        /// Queue index.
        q: u16,
        /// Check.
        expect: Expect,
    },
    /// `translate SID [pasid=N] IOVA r|w|rw => GPA|fault`
    Translate {
        /// Requester.
        sid: u32,
        /// PASID / SubstreamID.
        pasid: Option<u32>,
        /// Address.
        iova: u64,
        /// Access.
        access: Access,
        /// Expected result.
        expect: TranslateExpect,
    },
    /// `host-mapped IOVA LEN => GPA`
    HostMapped {
        /// IOVA.
        iova: u64,
        /// Length.
        len: u64,
        /// GPA whose host memory must back it.
        gpa: u64,
    },
    /// `host-unmapped IOVA LEN`
    HostUnmapped {
        /// IOVA.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// `host-nested SID [pasid=N] vtd-s1 pgtbl=GPA aw=N`
    HostNestedVtd {
        /// Requester.
        sid: u32,
        /// PASID.
        pasid: Option<u32>,
        /// First-stage table pointer.
        pgtbl: u64,
        /// Address width.
        aw: u32,
    },
    /// `host-nested SID smmuv3 ste0=VALUE ste1=VALUE`
    HostNestedSmmuv3 {
        /// StreamID.
        sid: u32,
        /// STE word 0.
        ste0: u64,
        /// STE word 1.
        ste1: u64,
    },
    /// `host-invalidations == N`
    HostInvalidations {
        /// Check.
        expect: Expect,
    },
    /// `host-calls OP == N`
    HostCalls {
        /// Op name.
        op: String,
        /// Check.
        expect: Expect,
    },
    /// `host-reset-counters`
    HostResetCounters,
}

impl Directive {
    /// Whether the directive is a check (prints `ok` or `FAIL`).
    pub fn is_check(&self) -> bool {
        matches!(
            self,
            Directive::Read { .. }
                | Directive::MmioRead { .. }
                | Directive::Features { .. }
                | Directive::ConfigRead { .. }
                | Directive::Used { .. }
                | Directive::Translate { .. }
                | Directive::HostMapped { .. }
                | Directive::HostUnmapped { .. }
                | Directive::HostNestedVtd { .. }
                | Directive::HostNestedSmmuv3 { .. }
                | Directive::HostInvalidations { .. }
                | Directive::HostCalls { .. }
                | Directive::Passthrough {
                    expect: Some(_),
                    ..
                }
        )
    }
}

/// A line with its number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number.
    pub number: usize,
    /// The directive.
    pub directive: Directive,
}

/// Parses a whole script. Blank and comment-only lines are skipped.
pub fn parse_script(text: &str) -> Result<Vec<Line>, ScriptError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let code = raw.split('#').next().unwrap_or("");
        let toks: Vec<&str> = code.split_whitespace().collect();
        if toks.is_empty() {
            continue;
        }
        let directive = parse_line(&toks).map_err(|reason| ScriptError::new(number, reason))?;
        out.push(Line { number, directive });
    }
    Ok(out)
}

type PResult<T> = Result<T, String>;

fn num(tok: &str) -> PResult<u64> {
    parse_u64(tok).ok_or_else(|| format!("bad number {tok:?}"))
}

fn num32(tok: &str) -> PResult<u32> {
    u32::try_from(num(tok)?).map_err(|_| format!("{tok} does not fit in 32 bits"))
}

fn num16(tok: &str) -> PResult<u16> {
    u16::try_from(num(tok)?).map_err(|_| format!("{tok} does not fit in 16 bits"))
}

fn arity(toks: &[&str], n: usize, usage: &str) -> PResult<()> {
    if toks.len() == n {
        Ok(())
    } else {
        Err(format!("usage: {usage}"))
    }
}

/// Parses `[& MASK] ==|!= VALUE`.
fn expect(toks: &[&str], usage: &str) -> PResult<Expect> {
    let (mask, rest) = match toks {
        ["&", m, rest @ ..] => (Some(num(m)?), rest),
        _ => (None, toks),
    };
    let (op, value) = match rest {
        ["==", v] => (CmpOp::Eq, num(v)?),
        ["!=", v] => (CmpOp::Ne, num(v)?),
        _ => return Err(format!("usage: {usage}")),
    };
    Ok(Expect { mask, op, value })
}

fn width_of(name: &str, prefix: &str) -> Option<Width> {
    name.strip_prefix(prefix).and_then(Width::from_suffix)
}

fn key_value<'a>(tok: &'a str, key: &str) -> Option<&'a str> {
    tok.strip_prefix(key)?.strip_prefix('=')
}

fn bufs(list: &str) -> PResult<Vec<Buf>> {
    list.split(',')
        .map(|b| {
            let (g, l) = b
                .split_once(':')
                .ok_or_else(|| format!("bad buffer {b:?}: expected GPA:LEN"))?;
            Ok(Buf {
                gpa: num(g)?,
                len: num32(l)?,
            })
        })
        .collect()
}

fn hex_bytes(s: &str) -> PResult<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits in {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad hex byte in {s:?}"))
        })
        .collect()
}

fn access(tok: &str) -> PResult<Access> {
    match tok {
        "r" => Ok(Access::READ),
        "w" => Ok(Access::WRITE),
        "rw" => Ok(Access::RW),
        _ => Err(format!("bad access {tok:?}: expected r, w or rw")),
    }
}

/// `[pasid=N]` at the front of `toks`.
fn opt_pasid<'a>(toks: &'a [&'a str]) -> PResult<(Option<u32>, &'a [&'a str])> {
    match toks.first().and_then(|t| key_value(t, "pasid")) {
        Some(v) => Ok((Some(num32(v)?), &toks[1..])),
        None => Ok((None, toks)),
    }
}

fn parse_line(toks: &[&str]) -> PResult<Directive> {
    let name = toks[0];
    let args = &toks[1..];
    if let Some(width) = width_of(name, "write") {
        arity(toks, 3, "writeN GPA VALUE")?;
        let value = num(args[1])?;
        if value > width.max() {
            return Err(format!("{value:#x} does not fit in {name}"));
        }
        return Ok(Directive::Write {
            width,
            gpa: num(args[0])?,
            value,
        });
    }
    if let Some(width) = width_of(name, "read") {
        let gpa = num(args.first().ok_or("usage: readN GPA [& MASK] == VALUE")?)?;
        return Ok(Directive::Read {
            width,
            gpa,
            expect: expect(&args[1..], "readN GPA [& MASK] == VALUE")?,
        });
    }
    if let Some(width) =
        width_of(name, "mmio-write").filter(|w| matches!(w, Width::W32 | Width::W64))
    {
        arity(toks, 3, "mmio-write32|64 OFFSET VALUE")?;
        let value = num(args[1])?;
        if value > width.max() {
            return Err(format!("{value:#x} does not fit in {name}"));
        }
        return Ok(Directive::MmioWrite {
            width,
            offset: num(args[0])?,
            value,
        });
    }
    if let Some(width) =
        width_of(name, "mmio-read").filter(|w| matches!(w, Width::W32 | Width::W64))
    {
        let usage = "mmio-read32|64 OFFSET [& MASK] == VALUE";
        let offset = num(args.first().ok_or(format!("usage: {usage}"))?)?;
        return Ok(Directive::MmioRead {
            width,
            offset,
            expect: expect(&args[1..], usage)?,
        });
    }
    if let Some(width) = width_of(name, "config-read") {
        let usage = "config-readN OFFSET [& MASK] == VALUE";
        let offset = num(args.first().ok_or(format!("usage: {usage}"))?)?;
        return Ok(Directive::ConfigRead {
            width,
            offset,
            expect: expect(&args[1..], usage)?,
        });
    }
    if let Some(width) = width_of(name, "config-write") {
        arity(toks, 3, "config-writeN OFFSET VALUE")?;
        let value = num(args[1])?;
        if value > width.max() {
            return Err(format!("{value:#x} does not fit in {name}"));
        }
        return Ok(Directive::ConfigWrite {
            width,
            offset: num(args[0])?,
            value,
        });
    }
    match name {
        "model" => {
            let model = args
                .first()
                .ok_or("usage: model vtd|smmuv3|virtio-iommu [key=value ...]")?;
            Ok(Directive::Model {
                name: model.to_string(),
                opts: args[1..].iter().map(|s| s.to_string()).collect(),
            })
        }
        "ram" => {
            arity(toks, 3, "ram GPA SIZE")?;
            Ok(Directive::Ram {
                gpa: num(args[0])?,
                size: num(args[1])?,
            })
        }
        "host" => {
            if args.is_empty() {
                return Err("usage: host PROFILE [key=value ...]".into());
            }
            Ok(Directive::Host {
                spec: args.join(","),
            })
        }
        "passthrough" => match args {
            [sid] => Ok(Directive::Passthrough {
                sid: num32(sid)?,
                expect: None,
            }),
            [sid, "=>", kind @ ("nested" | "shadow" | "refuse")] => Ok(Directive::Passthrough {
                sid: num32(sid)?,
                expect: Some(kind.to_string()),
            }),
            _ => Err("usage: passthrough SID [=> nested|shadow|refuse]".into()),
        },
        "write-bytes" => {
            arity(toks, 3, "write-bytes GPA HEX")?;
            Ok(Directive::WriteBytes {
                gpa: num(args[0])?,
                bytes: hex_bytes(args[1])?,
            })
        }
        "features" => Ok(Directive::Features {
            expect: expect(args, "features [& MASK] == VALUE")?,
        }),
        "ack-features" => {
            arity(toks, 2, "ack-features VALUE")?;
            Ok(Directive::AckFeatures {
                value: num(args[0])?,
            })
        }
        "queue" => parse_queue(args),
        "submit" => parse_submit(args),
        "used" => {
            let q = num16(args.first().ok_or("usage: used Q == COUNT")?)?;
            Ok(Directive::Used {
                q,
                expect: expect(&args[1..], "used Q == COUNT")?,
            })
        }
        "translate" => parse_translate(args),
        "host-mapped" => match args {
            [iova, len, "=>", gpa] => Ok(Directive::HostMapped {
                iova: num(iova)?,
                len: num(len)?,
                gpa: num(gpa)?,
            }),
            _ => Err("usage: host-mapped IOVA LEN => GPA".into()),
        },
        "host-unmapped" => {
            arity(toks, 3, "host-unmapped IOVA LEN")?;
            Ok(Directive::HostUnmapped {
                iova: num(args[0])?,
                len: num(args[1])?,
            })
        }
        "host-nested" => parse_host_nested(args),
        "host-invalidations" => Ok(Directive::HostInvalidations {
            expect: expect(args, "host-invalidations == N")?,
        }),
        "host-calls" => {
            let op = args.first().ok_or("usage: host-calls OP == N")?;
            Ok(Directive::HostCalls {
                op: op.to_string(),
                expect: expect(&args[1..], "host-calls OP == N")?,
            })
        }
        "host-reset-counters" => {
            arity(toks, 1, "host-reset-counters")?;
            Ok(Directive::HostResetCounters)
        }
        _ => Err(format!("unknown directive {name:?}")),
    }
}

fn parse_queue(args: &[&str]) -> PResult<Directive> {
    let usage = "usage: queue Q size=N desc=GPA avail=GPA used=GPA";
    let [q, rest @ ..] = args else {
        return Err(usage.into());
    };
    let (mut size, mut desc, mut avail, mut used) = (None, None, None, None);
    for t in rest {
        let (k, v) = t.split_once('=').ok_or(usage)?;
        let slot = match k {
            "size" => &mut size,
            "desc" => &mut desc,
            "avail" => &mut avail,
            "used" => &mut used,
            _ => return Err(format!("unknown queue key {k:?}")),
        };
        if slot.replace(num(v)?).is_some() {
            return Err(format!("queue key {k:?} given twice"));
        }
    }
    match (size, desc, avail, used) {
        (Some(size), Some(desc), Some(avail), Some(used)) => Ok(Directive::Queue {
            q: num16(q)?,
            size: u16::try_from(size).map_err(|_| format!("queue size {size} too large"))?,
            desc,
            avail,
            used,
        }),
        _ => Err(usage.into()),
    }
}

fn parse_submit(args: &[&str]) -> PResult<Directive> {
    let [q, rest @ ..] = args else {
        return Err("usage: submit Q [out=GPA:LEN[,...]] [in=GPA:LEN[,...]]".into());
    };
    let (mut out, mut inp) = (None, None);
    for t in rest {
        if let Some(v) = key_value(t, "out") {
            if out.replace(bufs(v)?).is_some() {
                return Err("out= given twice".into());
            }
        } else if let Some(v) = key_value(t, "in") {
            if inp.replace(bufs(v)?).is_some() {
                return Err("in= given twice".into());
            }
        } else {
            return Err(format!("unexpected {t:?} in submit"));
        }
    }
    Ok(Directive::Submit {
        q: num16(q)?,
        out: out.unwrap_or_default(),
        inp: inp.unwrap_or_default(),
    })
}

fn parse_translate(args: &[&str]) -> PResult<Directive> {
    let usage = "usage: translate SID [pasid=N] IOVA r|w|rw => GPA|fault";
    let [sid, rest @ ..] = args else {
        return Err(usage.into());
    };
    let (pasid, rest) = opt_pasid(rest)?;
    let [iova, acc, "=>", result] = rest else {
        return Err(usage.into());
    };
    let expect = match *result {
        "fault" => TranslateExpect::Fault,
        g => TranslateExpect::Gpa(num(g)?),
    };
    Ok(Directive::Translate {
        sid: num32(sid)?,
        pasid,
        iova: num(iova)?,
        access: access(acc)?,
        expect,
    })
}

fn parse_host_nested(args: &[&str]) -> PResult<Directive> {
    let usage = "usage: host-nested SID [pasid=N] vtd-s1 pgtbl=GPA aw=N | host-nested SID smmuv3 ste0=V ste1=V";
    let [sid, rest @ ..] = args else {
        return Err(usage.into());
    };
    let sid = num32(sid)?;
    let (pasid, rest) = opt_pasid(rest)?;
    match rest {
        ["vtd-s1", a, b] => {
            let pgtbl = key_value(a, "pgtbl").ok_or(usage)?;
            let aw = key_value(b, "aw").ok_or(usage)?;
            Ok(Directive::HostNestedVtd {
                sid,
                pasid,
                pgtbl: num(pgtbl)?,
                aw: num32(aw)?,
            })
        }
        ["smmuv3", a, b] if pasid.is_none() => {
            let s0 = key_value(a, "ste0").ok_or(usage)?;
            let s1 = key_value(b, "ste1").ok_or(usage)?;
            Ok(Directive::HostNestedSmmuv3 {
                sid,
                ste0: num(s0)?,
                ste1: num(s1)?,
            })
        }
        _ => Err(usage.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Directive {
        parse_script(line).unwrap().remove(0).directive
    }

    fn err(line: &str) -> String {
        parse_script(line).unwrap_err().reason
    }

    #[test]
    fn comments_blanks_and_line_numbers() {
        let s = parse_script("# c\n\n  ram 0 0x1000  # trailing\nhost none").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].number, 3);
        assert_eq!(s[1].number, 4);
        assert_eq!(parse_script("ram 0 1\nbogus\n").unwrap_err().line, 2);
    }

    #[test]
    fn numbers_hex_decimal_underscore() {
        assert_eq!(
            one("ram 0x1_0000 4096"),
            Directive::Ram {
                gpa: 0x10000,
                size: 4096
            }
        );
        assert!(err("ram 0x 1").contains("bad number"));
        assert!(err("ram 12g 1").contains("bad number"));
    }

    #[test]
    fn read_with_mask_and_ne() {
        assert_eq!(
            one("read32 0x1000 & 0xff != 3"),
            Directive::Read {
                width: Width::W32,
                gpa: 0x1000,
                expect: Expect {
                    mask: Some(0xff),
                    op: CmpOp::Ne,
                    value: 3
                }
            }
        );
        assert!(err("read32 0x1000 = 3").starts_with("usage"));
        assert!(err("read12 0 == 0").contains("unknown directive"));
    }

    #[test]
    fn write_value_wider_than_width_is_error() {
        assert!(err("write8 0 0x100").contains("does not fit"));
        assert!(matches!(
            one("write64 0 0xffffffffffffffff"),
            Directive::Write { .. }
        ));
    }

    #[test]
    fn mmio_only_32_and_64() {
        assert!(matches!(
            one("mmio-write32 0x18 1"),
            Directive::MmioWrite { .. }
        ));
        assert!(err("mmio-write16 0x18 1").contains("unknown directive"));
        assert!(matches!(
            one("mmio-read64 0x8 & 1 == 1"),
            Directive::MmioRead { .. }
        ));
    }

    #[test]
    fn translate_forms() {
        assert_eq!(
            one("translate 0x10 pasid=5 0x2000 rw => 0x9000"),
            Directive::Translate {
                sid: 0x10,
                pasid: Some(5),
                iova: 0x2000,
                access: Access::RW,
                expect: TranslateExpect::Gpa(0x9000)
            }
        );
        assert!(matches!(
            one("translate 1 0x0 w => fault"),
            Directive::Translate {
                expect: TranslateExpect::Fault,
                pasid: None,
                ..
            }
        ));
        assert!(err("translate 1 0 x => fault").contains("bad access"));
    }

    #[test]
    fn queue_and_submit() {
        assert_eq!(
            one("queue 0 size=8 desc=0x1000 avail=0x2000 used=0x3000"),
            Directive::Queue {
                q: 0,
                size: 8,
                desc: 0x1000,
                avail: 0x2000,
                used: 0x3000
            }
        );
        assert!(err("queue 0 size=8 desc=1 avail=2").starts_with("usage"));
        assert!(err("queue 0 size=8 size=8 desc=1 avail=2 used=3").contains("twice"));
        assert_eq!(
            one("submit 0 out=0x100:16,0x200:8 in=0x300:4"),
            Directive::Submit {
                q: 0,
                out: vec![
                    Buf {
                        gpa: 0x100,
                        len: 16
                    },
                    Buf { gpa: 0x200, len: 8 }
                ],
                inp: vec![Buf { gpa: 0x300, len: 4 }]
            }
        );
        assert!(err("submit 0 out=0x100").contains("GPA:LEN"));
    }

    #[test]
    fn host_checks() {
        assert_eq!(
            one("host-mapped 0x1000 0x2000 => 0x5000"),
            Directive::HostMapped {
                iova: 0x1000,
                len: 0x2000,
                gpa: 0x5000
            }
        );
        assert_eq!(
            one("host-nested 8 pasid=3 vtd-s1 pgtbl=0x7000 aw=48"),
            Directive::HostNestedVtd {
                sid: 8,
                pasid: Some(3),
                pgtbl: 0x7000,
                aw: 48
            }
        );
        assert_eq!(
            one("host-nested 8 smmuv3 ste0=0x1 ste1=0x2"),
            Directive::HostNestedSmmuv3 {
                sid: 8,
                ste0: 1,
                ste1: 2
            }
        );
        assert!(matches!(
            one("host-calls ioas_map == 1"),
            Directive::HostCalls { .. }
        ));
        assert_eq!(one("host-reset-counters"), Directive::HostResetCounters);
        assert!(err("host-reset-counters now").starts_with("usage"));
    }

    #[test]
    fn passthrough_forms() {
        assert_eq!(
            one("passthrough 8"),
            Directive::Passthrough {
                sid: 8,
                expect: None
            }
        );
        assert!(one("passthrough 8 => shadow").is_check());
        assert!(err("passthrough 8 => maybe").starts_with("usage"));
    }

    #[test]
    fn write_bytes_hex() {
        assert_eq!(
            one("write-bytes 0x10 00ff10"),
            Directive::WriteBytes {
                gpa: 0x10,
                bytes: vec![0, 0xff, 0x10]
            }
        );
        assert!(err("write-bytes 0 0f0").contains("odd"));
        assert!(err("write-bytes 0 zz").contains("bad hex"));
    }

    #[test]
    fn arbitrary_text_never_panics() {
        for s in [
            "=>",
            "& & ==",
            "translate",
            "host-nested 1 pasid=",
            "submit",
            "used 0 ==",
            "queue",
            "write-bytes 0 é",
        ] {
            let _ = parse_script(s);
        }
    }
}
