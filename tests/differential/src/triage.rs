//! Known departures: disagreements already judged against IHI 0070 in
//! `docs/smmuv3-differential.md`, each recognised by a predicate over
//! the disagreement and the configuration structures of its stream (as
//! our side's memory holds them). A disagreement no departure explains
//! is unexpected and fails the run.

use nesting_core::types::Access;
use smmuv3::Smmuv3Config;
use smmuv3::caps::Caps;
use smmuv3::cd::Cd;
use smmuv3::regs::off;
use smmuv3::strtab::{BadSte, L1Std, Ste, SteConfig, SteLookup, SteMode, StreamTable};
use smmuv3::walk::{Direct, Walk, WalkReq, walk};
use smmuv3::wire::read_qwords;

use crate::model::ModelSide;
use crate::run::Disagreement;

/// A departure: a stable key, the row of the triage document, and how
/// to recognise it.
pub struct Departure {
    /// Stable description (the allow-list key).
    pub key: &'static str,
    /// Anchor in `docs/smmuv3-differential.md`.
    pub doc: &'static str,
    /// Whether `d` is this departure.
    pub matches: fn(&Disagreement, &Evidence) -> bool,
}

impl std::fmt::Debug for Departure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Departure")
            .field("key", &self.key)
            .field("doc", &self.doc)
            .finish()
    }
}

/// The stream's configuration as our side's memory holds it.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    /// The level-1 descriptor of a two-level stream table.
    pub l1: Option<L1Std>,
    /// The STE, if it could be located.
    pub ste: Option<Ste>,
    /// Our model's verdict on it.
    pub verdict: Option<Result<SteConfig, BadSte>>,
    /// The CD (SubstreamID 0), if the STE has stage 1 and it is in RAM.
    pub cd: Option<Cd>,
}

impl Evidence {
    /// No stream involved.
    pub fn none() -> Evidence {
        Evidence::default()
    }

    /// Reads StreamID `sid`'s structures from our side (without
    /// changing anything: the harness runs without HTTU).
    pub fn gather(ours: &ModelSide, cfg: &Smmuv3Config, sid: u32) -> Evidence {
        let caps = Caps::new(cfg);
        let st = StreamTable::from_regs(
            ours.smmu.mmio_read(off::STRTAB_BASE, 8),
            ours.smmu.mmio_read(off::STRTAB_BASE_CFG, 4),
            &caps,
        );
        let mut ev = Evidence::default();
        if let Some(split) = st.split {
            let at = st.base + 8 * u64::from(sid >> split);
            ev.l1 = read_qwords::<_, 1>(&ours.mem, at).ok().map(|[w]| L1Std(w));
        }
        let SteLookup::At(at) = st.locate(&ours.mem, sid) else {
            return ev;
        };
        let Ok(words) = read_qwords::<_, 8>(&ours.mem, at) else {
            return ev;
        };
        let ste = Ste(words);
        ev.ste = Some(ste);
        let verdict = ste.decode(&caps);
        ev.cd = cd_of(ours, &ste, &verdict);
        ev.verdict = Some(verdict);
        ev
    }
}

fn cd_of(ours: &ModelSide, ste: &Ste, verdict: &Result<SteConfig, BadSte>) -> Option<Cd> {
    if !matches!(ste.config(), SteMode::S1 | SteMode::Nested) {
        return None;
    }
    let ptr = ste.s1_context_ptr();
    let pa = match verdict.as_ref().ok().and_then(|c| c.s2) {
        Some(s2) if ste.config() == SteMode::Nested => {
            let req = WalkReq {
                addr: ptr,
                access: Access::READ,
                table_walk: true,
            };
            match walk(&ours.mem, &s2.table, &mut Direct, &req) {
                Walk::Mapped(leaf) => leaf.output(ptr),
                Walk::Fault(_) => return None,
            }
        }
        _ => ptr,
    };
    read_qwords::<_, 8>(&ours.mem, pa).ok().map(Cd)
}

/// The departures, in the order they are tried.
pub static DEPARTURES: &[Departure] = &[];

/// The departure that explains `d`, if any.
pub fn classify(d: &Disagreement, ev: &Evidence) -> Option<&'static Departure> {
    DEPARTURES.iter().find(|dep| (dep.matches)(d, ev))
}
