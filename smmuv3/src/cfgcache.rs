//! The configuration cache: decoded STEs and CDs (IHI 0070
//! "Configuration structure invalidation": an SMMU may cache valid STEs
//! and CDs, and software invalidates them with CMD_CFGI_* after changing
//! them).
//!
//! Only valid, checked structures are cached (a fault is never cached, so
//! a guest that fixes a broken entry is seen at the next transaction).
//! Both tables are small and direct-mapped: a guest cannot make them
//! grow. Every CFGI command removes at least what it names; a change of
//! the stream table registers or of SMMUEN, and every stage-2 TLB
//! invalidation (CDs of nested streams are fetched through stage 2),
//! empties it.

use crate::cd::CdConfig;
use crate::strtab::SteConfig;

/// Entries per table: a power of two.
const ENTRIES: usize = 256;

#[derive(Clone, Copy, Debug)]
struct SteSlot {
    sid: u32,
    ste: SteConfig,
}

#[derive(Clone, Copy, Debug)]
struct CdSlot {
    sid: u32,
    index: u32,
    cd: CdConfig,
}

/// Decoded STEs by StreamID and CDs by (StreamID, CD index).
#[derive(Clone, Debug)]
pub struct ConfigCache {
    stes: Vec<Option<SteSlot>>,
    cds: Vec<Option<CdSlot>>,
}

impl Default for ConfigCache {
    fn default() -> Self {
        ConfigCache {
            stes: vec![None; ENTRIES],
            cds: vec![None; ENTRIES],
        }
    }
}

fn ste_slot(sid: u32) -> usize {
    (sid.wrapping_mul(0x9e37_79b9) >> 24) as usize % ENTRIES
}

fn cd_slot(sid: u32, index: u32) -> usize {
    ((sid ^ index.rotate_left(13)).wrapping_mul(0x9e37_79b9) >> 24) as usize % ENTRIES
}

impl ConfigCache {
    /// A cache that holds nothing (for resolving without side effects).
    pub fn disabled() -> ConfigCache {
        ConfigCache {
            stes: Vec::new(),
            cds: Vec::new(),
        }
    }

    /// The cached STE of `sid`.
    pub fn ste(&self, sid: u32) -> Option<SteConfig> {
        match self.stes.get(ste_slot(sid)) {
            Some(Some(s)) if s.sid == sid => Some(s.ste),
            _ => None,
        }
    }

    /// Caches `sid`'s STE.
    pub fn put_ste(&mut self, sid: u32, ste: SteConfig) {
        if let Some(s) = self.stes.get_mut(ste_slot(sid)) {
            *s = Some(SteSlot { sid, ste });
        }
    }

    /// The cached CD `index` of `sid`.
    pub fn cd(&self, sid: u32, index: u32) -> Option<CdConfig> {
        match self.cds.get(cd_slot(sid, index)) {
            Some(Some(c)) if c.sid == sid && c.index == index => Some(c.cd),
            _ => None,
        }
    }

    /// Caches CD `index` of `sid`.
    pub fn put_cd(&mut self, sid: u32, index: u32, cd: CdConfig) {
        if let Some(c) = self.cds.get_mut(cd_slot(sid, index)) {
            *c = Some(CdSlot { sid, index, cd });
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.stes.iter_mut().for_each(|s| *s = None);
        self.clear_cds();
    }

    /// Forgets every CD.
    pub fn clear_cds(&mut self) {
        self.cds.iter_mut().for_each(|c| *c = None);
    }

    /// CMD_CFGI_STE / CMD_CFGI_STE_RANGE: the STEs of `first..first +
    /// count` and every CD of those streams (their CD table may be
    /// elsewhere now).
    pub fn drop_streams(&mut self, first: u32, count: u64) {
        let hit = |sid: u32| u64::from(sid.wrapping_sub(first)) < count;
        for s in &mut self.stes {
            if s.is_some_and(|s| hit(s.sid)) {
                *s = None;
            }
        }
        for c in &mut self.cds {
            if c.is_some_and(|c| hit(c.sid)) {
                *c = None;
            }
        }
    }

    /// CMD_CFGI_CD: CD `index` of `sid` (`leaf` false: its level-1
    /// descriptor too, so every CD of the stream).
    pub fn drop_cd(&mut self, sid: u32, index: u32, leaf: bool) {
        if !leaf {
            return self.drop_cds_of(sid);
        }
        if let Some(c) = self.cds.get_mut(cd_slot(sid, index))
            && c.is_some_and(|c| c.sid == sid && c.index == index)
        {
            *c = None;
        }
    }

    /// CMD_CFGI_CD_ALL: every CD of `sid`.
    pub fn drop_cds_of(&mut self, sid: u32) {
        for c in &mut self.cds {
            if c.is_some_and(|c| c.sid == sid) {
                *c = None;
            }
        }
    }
}
