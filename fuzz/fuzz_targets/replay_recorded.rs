//! The replay runner (`viommu replay`) over the traffic of real guests
//! (`tests/replay/recorded/`), mutated by the input the way a corrupted
//! or hostile script would be: lines dropped, duplicated, swapped, moved
//! or cut off, numbers changed (addresses, register offsets and values,
//! sizes, expected results), guest memory bytes changed. Running never
//! panics and stops in bounded time (libFuzzer's -timeout), the exit
//! status agrees with the outcome, and an unmutated script passes.
#![no_main]

#[path = "cursor.rs"]
mod cursor;

use cursor::Cursor;
use libfuzzer_sys::fuzz_target;

/// The recorded scripts, in the binary so a run reads no file.
const SCRIPTS: [&str; 9] = [
    include_str!("../../tests/replay/recorded/virtio-iommu.viommu"),
    include_str!("../../tests/replay/recorded/virtio-iommu-boot2.viommu"),
    include_str!("../../tests/replay/recorded/virtio-iommu-fault.viommu"),
    include_str!("../../tests/replay/recorded/vtd-legacy.viommu"),
    include_str!("../../tests/replay/recorded/vtd-legacy-boot2.viommu"),
    include_str!("../../tests/replay/recorded/vtd-scalable-fs.viommu"),
    include_str!("../../tests/replay/recorded/vtd-scalable-fs-boot2.viommu"),
    include_str!("../../tests/replay/recorded/vtd-scalable-ss.viommu"),
    include_str!("../../tests/replay/recorded/vtd-scalable-ss-boot2.viommu"),
];

/// Most mutations per input.
const MAX_MUTATIONS: usize = 32;

/// A new value for a number: anything, a neighbour, one bit flipped, or
/// an edge.
fn number(c: &mut Cursor<'_>, old: u64) -> Option<u64> {
    Some(match c.pick(6)? {
        0 => c.u64()?,
        1 => old.wrapping_add(1 + u64::from(c.u8()? % 16)),
        2 => old.wrapping_sub(1 + u64::from(c.u8()? % 16)),
        3 => old ^ (1 << (c.u8()? % 64)),
        4 => [0, 1, u64::MAX, u64::from(u32::MAX), 0x1000, 1 << 63][c.pick(6)?],
        _ => u64::from(c.u16()?),
    })
}

fn parse_number(tok: &str) -> Option<u64> {
    match tok.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16).ok(),
        None => tok.parse().ok(),
    }
}

/// Changes one token of `line`: a number, or a byte of a `write-bytes`
/// payload.
fn change_token(c: &mut Cursor<'_>, line: &str) -> Option<String> {
    let mut toks: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    if toks.is_empty() {
        return Some(line.to_owned());
    }
    let i = c.pick(toks.len())?;
    let payload = toks[0] == "write-bytes" && i == 2;
    let tok = &mut toks[i];
    if payload {
        if !tok.is_empty() {
            let at = c.pick(tok.len())?;
            let digit = char::from(b"0123456789abcdef"[c.pick(16)?]);
            tok.replace_range(at..at + 1, &digit.to_string());
        }
    } else if let Some(old) = parse_number(tok) {
        *tok = format!("{:#x}", number(c, old)?);
    } else if let Some((key, value)) = tok.split_once('=') {
        // A model option: key=NUMBER.
        let new = parse_number(value).map(|old| number(c, old));
        if let Some(new) = new {
            *tok = format!("{key}={:#x}", new?);
        }
    }
    Some(toks.join(" "))
}

/// One mutation; `None` (the input ran out) leaves `lines` as they were.
fn mutate(c: &mut Cursor<'_>, lines: &mut Vec<String>) -> Option<()> {
    if lines.is_empty() {
        return None;
    }
    let i = c.u16().map(|v| usize::from(v) % lines.len())?;
    match c.pick(8)? {
        0 => {
            lines.remove(i);
        }
        1 => {
            let copy = lines[i].clone();
            lines.insert(i, copy);
        }
        2..=4 => lines[i] = change_token(c, &lines[i])?,
        5 => {
            let j = c.u16().map(|v| usize::from(v) % lines.len())?;
            lines.swap(i, j);
        }
        6 => {
            let j = c.u16().map(|v| usize::from(v) % lines.len())?;
            let l = lines.remove(i);
            lines.insert(j, l);
        }
        _ => lines.truncate(i),
    }
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor(data);
    let Some(pick) = c.pick(SCRIPTS.len()) else { return };
    let mut lines: Vec<String> = SCRIPTS[pick].lines().map(str::to_owned).collect();
    let mut mutated = false;
    for _ in 0..MAX_MUTATIONS {
        if mutate(&mut c, &mut lines).is_none() {
            break;
        }
        mutated = true;
    }
    let text = lines.join("\n");
    let mut out = Vec::new();
    let r = viommu::replay::run_script(&text, &mut out);
    let code = viommu::replay::exit_code(&r);
    match &r {
        Ok(s) => assert_eq!(code, if s.failed == 0 { 0 } else { 1 }),
        Err(e) => {
            assert_eq!(code, 2);
            assert!(e.line >= 1 && e.line <= lines.len().max(1), "error line {}", e.line);
        }
    }
    assert!(
        mutated || code == 0,
        "recorded script {pick} fails unmutated: {r:?}\n{}",
        String::from_utf8_lossy(&out)
    );
});
