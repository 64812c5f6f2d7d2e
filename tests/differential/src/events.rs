//! Event records (IHI 0070 "Event records"), decoded with the model's
//! own [`EventRecord`] accessors, and compared field by field.

use nesting_core::bits::FieldValue;
use smmuv3::event::{EventId, EventRecord};

/// The name of an event type.
pub fn type_name(id: EventId) -> String {
    match id {
        EventId::Uut => "F_UUT".into(),
        EventId::BadStreamId => "C_BAD_STREAMID".into(),
        EventId::SteFetch => "F_STE_FETCH".into(),
        EventId::BadSte => "C_BAD_STE".into(),
        EventId::BadAtsTreq => "F_BAD_ATS_TREQ".into(),
        EventId::StreamDisabled => "F_STREAM_DISABLED".into(),
        EventId::TranslForbidden => "F_TRANSL_FORBIDDEN".into(),
        EventId::BadSubstreamId => "C_BAD_SUBSTREAMID".into(),
        EventId::CdFetch => "F_CD_FETCH".into(),
        EventId::BadCd => "C_BAD_CD".into(),
        EventId::WalkEabt => "F_WALK_EABT".into(),
        EventId::Translation => "F_TRANSLATION".into(),
        EventId::AddrSize => "F_ADDR_SIZE".into(),
        EventId::Access => "F_ACCESS".into(),
        EventId::Permission => "F_PERMISSION".into(),
        EventId::Unknown(c) => format!("type {c:#x}"),
    }
}

/// A record's words as an [`EventRecord`].
pub fn record(words: [u64; 4]) -> EventRecord {
    EventRecord(words)
}

/// Whether the record's type carries a fetch address (bits 243:195)
/// rather than an IPA (bits 243:204) in its last words.
fn has_fetch_addr(id: EventId) -> bool {
    matches!(id, EventId::SteFetch | EventId::CdFetch | EventId::WalkEabt)
}

/// The named fields of a record as `(name, value)`, in record order.
pub fn fields(r: &EventRecord) -> Vec<(&'static str, u64)> {
    let id = r.id();
    let mut f = vec![
        ("TYPE", id.into_raw()),
        ("SSV", u64::from(r.ssv())),
        ("SSID", u64::from(r.ssid())),
        ("SID", u64::from(r.sid())),
        ("STAG", u64::from(r.stag())),
        ("Stall", u64::from(r.stall())),
        ("PnU", u64::from(r.pnu())),
        ("InD", u64::from(r.ind())),
        ("RnW", u64::from(r.rnw())),
        ("S2", u64::from(r.s2())),
        ("CLASS", u64::from(r.class())),
        ("InputAddr", r.input_addr()),
    ];
    if has_fetch_addr(id) {
        f.push(("FetchAddr", r.fetch_addr()));
    } else {
        f.push(("IPA", r.ipa()));
    }
    f
}

/// Bits of the record no field of its type names.
fn unnamed_bits(r: &EventRecord) -> [u64; 4] {
    let id = r.id();
    let mut named = EventRecord::default()
        .with_id(EventId::Unknown(0xff))
        .with_ssv(true)
        .with_ssid(u32::MAX)
        .with_sid(u32::MAX)
        .with_stag(u16::MAX)
        .with_stall(true)
        .with_pnu(true)
        .with_ind(true)
        .with_rnw(true)
        .with_s2(true)
        .with_class(3)
        .with_input_addr(u64::MAX);
    named = if has_fetch_addr(id) {
        named.with_fetch_addr(u64::MAX)
    } else {
        named.with_ipa(u64::MAX)
    };
    let mut out = r.0;
    for (w, m) in out.iter_mut().zip(named.0) {
        *w &= !m;
    }
    out
}

/// One line per field where two records of the same event differ (just
/// the type when the types differ: the other fields then mean different
/// things).
pub fn diff(ours: &EventRecord, qemu: &EventRecord) -> Vec<(String, u64, u64)> {
    if ours.id() != qemu.id() {
        return vec![(
            "TYPE".to_string(),
            ours.id().into_raw(),
            qemu.id().into_raw(),
        )];
    }
    let mut out: Vec<(String, u64, u64)> = fields(ours)
        .into_iter()
        .zip(fields(qemu))
        .filter(|((_, a), (_, b))| a != b)
        .map(|((n, a), (m, b))| {
            let name = if n == m {
                n.to_string()
            } else {
                format!("{n}/{m}")
            };
            (name, a, b)
        })
        .collect();
    let (ua, ub) = (unnamed_bits(ours), unnamed_bits(qemu));
    for (i, (a, b)) in ua.iter().zip(ub).enumerate() {
        if *a != b {
            out.push((format!("word {i} unnamed bits"), *a, b));
        }
    }
    out
}

/// A one-line summary: type, SID and the fields that matter for it.
pub fn summary(r: &EventRecord) -> String {
    let mut s = format!("{} sid {:#x}", type_name(r.id()), r.sid());
    if r.ssv() {
        s += &format!(" ssid {:#x}", r.ssid());
    }
    if r.id().is_translation_related() || r.id() == EventId::WalkEabt {
        s += &format!(
            " addr {:#x} RnW {} S2 {} CLASS {}",
            r.input_addr(),
            u8::from(r.rnw()),
            u8::from(r.s2()),
            r.class()
        );
        if r.s2() {
            s += &format!(" IPA {:#x}", r.ipa());
        }
    }
    if has_fetch_addr(r.id()) {
        s += &format!(" fetch {:#x}", r.fetch_addr());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_records_have_no_diff() {
        let r = record([0x10_0000_0010, 0x8_0000_0000, 0x5000, 0]);
        assert!(diff(&r, &r).is_empty());
    }

    #[test]
    fn type_difference_is_one_line() {
        let ours = record([0x10_0000_0010, 0x0, 0x5000, 0]);
        let qemu = record([0x10_0000_0013, 0x8_0000_0000, 0x5000, 0]);
        assert_eq!(diff(&ours, &qemu), vec![("TYPE".to_string(), 0x10, 0x13)]);
    }

    #[test]
    fn rnw_difference_is_named() {
        let ours = record([0x10_0000_0010, 0x0, 0x5000, 0]);
        let qemu = record([0x10_0000_0010, 0x8_0000_0000, 0x5000, 0]);
        let d = diff(&ours, &qemu);
        let names: Vec<&str> = d.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["RnW"]);
    }

    #[test]
    fn ipa_low_bits_are_unnamed() {
        // An IPA with bits 11:3 set lands in bits the record leaves RES0.
        let ours = record([0x10_0000_0010, 0x8000_0000_0000, 0x1000, 0x8000_0000]);
        let qemu = record([0x10_0000_0010, 0x8000_0000_0000, 0x1000, 0x8000_0230]);
        let d = diff(&ours, &qemu);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].0.contains("unnamed"));
    }

    #[test]
    fn summary_names_type_and_addresses() {
        let r = record([0x10_0000_0010, 0x8_0000_0000, 0x5000, 0]);
        assert_eq!(
            summary(&r),
            "F_TRANSLATION sid 0x10 addr 0x5000 RnW 1 S2 0 CLASS 0"
        );
    }
}
