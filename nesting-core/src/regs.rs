//! A model's register file as data: each register declared once (offset,
//! width, reset value, writable and write-1-to-clear masks, and whatever
//! else the model attaches to it), the values, and the one write rule they
//! all share. What an access of a given size at a given offset reaches is
//! each model's own rule (VT-d lets an 8-byte access span two 32-bit
//! registers; SMMUv3 makes other sizes RAZ/WI), built on
//! [`RegisterFile::locate`] and [`RegisterFile::apply`].

use std::collections::BTreeMap;

use crate::bits::Field;

/// Register access width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegWidth {
    /// 32 bits.
    W32,
    /// 64 bits.
    W64,
}

impl RegWidth {
    /// Width in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            RegWidth::W32 => 4,
            RegWidth::W64 => 8,
        }
    }
}

/// One register, as data. `A` is what the model attaches to it (SMMUv3:
/// when writes are ignored; nothing for VT-d).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegDesc<A = ()> {
    /// The spec's name.
    pub name: &'static str,
    /// Byte offset from the register base.
    pub offset: u64,
    /// Width.
    pub width: RegWidth,
    /// Value at reset.
    pub reset: u64,
    /// Bits software writes (RW).
    pub writable: u64,
    /// Bits software clears by writing 1 (RW1C).
    pub w1c: u64,
    /// The model's attribute.
    pub attr: A,
}

impl<A> RegDesc<A> {
    /// A read-only register.
    pub const fn ro(name: &'static str, offset: u64, width: RegWidth, reset: u64, attr: A) -> Self {
        RegDesc {
            name,
            offset,
            width,
            reset,
            writable: 0,
            w1c: 0,
            attr,
        }
    }

    /// The register with `writable` bits.
    #[must_use]
    pub const fn rw(mut self, writable: u64) -> Self {
        self.writable = writable;
        self
    }

    /// The register with `mask` bits cleared by writing 1.
    #[must_use]
    pub const fn w1c(mut self, mask: u64) -> Self {
        self.w1c = mask;
        self
    }
}

/// What one software write did to one register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteEffect {
    /// Offset of the register written.
    pub offset: u64,
    /// Value before.
    pub old: u64,
    /// Value after the masks were applied.
    pub new: u64,
    /// The value software wrote, in register position (for a 32-bit half
    /// of a 64-bit register, the half shifted into place; only the bits of
    /// that half are meaningful, see `covered`).
    pub written: u64,
    /// The register bits this access covered.
    pub covered: u64,
}

/// The registers of one device: their declarations and values.
#[derive(Clone, Debug)]
pub struct RegisterFile<A = ()> {
    descs: Vec<RegDesc<A>>,
    values: Vec<u64>,
    by_offset: BTreeMap<u64, usize>,
    /// Position of the register at each 4-byte slot of the first
    /// [`FAST_SLOTS`] slots of each 64 KiB page, when every register of the
    /// layout lies there (the fast path of [`RegisterFile::get`]).
    fast: Option<Vec<Option<u16>>>,
}

/// 4-byte slots per 64 KiB page the fast index covers (the first 1 KiB).
const FAST_SLOTS: u64 = 0x400 / 4;
/// Pages the fast index covers.
const FAST_PAGES: u64 = 2;
/// Bytes of one page.
const PAGE: u64 = 0x1_0000;

fn fast_slot(offset: u64) -> Option<usize> {
    let (page, within) = (offset / PAGE, offset % PAGE);
    let ok = page < FAST_PAGES && within % 4 == 0 && within / 4 < FAST_SLOTS;
    ok.then(|| usize::try_from(page * FAST_SLOTS + within / 4).ok())
        .flatten()
}

impl<A: Copy> RegisterFile<A> {
    /// A register file of `descs` at reset.
    pub fn new(descs: Vec<RegDesc<A>>) -> Self {
        let values = descs.iter().map(|d| d.reset).collect();
        let by_offset = descs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.offset, i))
            .collect();
        let mut fast = vec![None; usize::try_from(FAST_PAGES * FAST_SLOTS).unwrap_or(0)];
        let mut indexed = true;
        for (i, d) in descs.iter().enumerate() {
            match (fast_slot(d.offset), u16::try_from(i)) {
                (Some(s), Ok(i)) => fast[s] = Some(i),
                _ => indexed = false,
            }
        }
        RegisterFile {
            descs,
            values,
            by_offset,
            fast: indexed.then_some(fast),
        }
    }

    /// Every register to its reset value.
    pub fn reset(&mut self) {
        for (v, d) in self.values.iter_mut().zip(&self.descs) {
            *v = d.reset;
        }
    }

    /// The declarations, in layout order.
    pub fn descs(&self) -> &[RegDesc<A>] {
        &self.descs
    }

    /// The declaration of register `i` (in layout order).
    pub fn desc(&self, i: usize) -> Option<&RegDesc<A>> {
        self.descs.get(i)
    }

    /// The value of register `i` (in layout order).
    pub fn value(&self, i: usize) -> u64 {
        self.values.get(i).copied().unwrap_or(0)
    }

    fn position(&self, offset: u64) -> Option<usize> {
        match (&self.fast, fast_slot(offset)) {
            (Some(f), Some(s)) => f.get(s).copied().flatten().map(usize::from),
            _ => self.by_offset.get(&offset).copied(),
        }
    }

    /// Raw value of the register at `offset` (0 if there is none).
    pub fn get(&self, offset: u64) -> u64 {
        self.position(offset).map_or(0, |i| self.value(i))
    }

    /// Hardware update of the register at `offset` (ignored if none).
    pub fn set(&mut self, offset: u64, value: u64) {
        if let Some(v) = self.position(offset).and_then(|i| self.values.get_mut(i)) {
            *v = value;
        }
    }

    /// Hardware update of one field.
    pub fn set_field(&mut self, offset: u64, f: Field, value: u64) {
        let v = self.get(offset);
        self.set(offset, f.set(v, value));
    }

    /// The register containing byte `offset`, with the byte's position in
    /// it.
    pub fn locate(&self, offset: u64) -> Option<(usize, u64)> {
        let (base, i) = self.by_offset.range(..=offset).next_back()?;
        let d = self.descs.get(*i)?;
        (offset < base + d.width.bytes()).then_some((*i, offset - base))
    }

    /// A software write of `written` (in register position) to the `covered`
    /// bits of register `i`: the bits both writable and covered take the
    /// written value, unless `locked` (writes ignored); covered
    /// write-1-to-clear bits written as 1 clear. Returns the effect, also
    /// when nothing changed, so the model can act on what was written.
    pub fn apply(
        &mut self,
        i: usize,
        covered: u64,
        written: u64,
        locked: bool,
    ) -> Option<WriteEffect> {
        let d = *self.descs.get(i)?;
        let old = *self.values.get(i)?;
        let writable = if locked { 0 } else { d.writable & covered };
        let mut new = (old & !writable) | (written & writable);
        if !locked {
            new &= !(written & d.w1c & covered);
        }
        if let Some(v) = self.values.get_mut(i) {
            *v = new;
        }
        Some(WriteEffect {
            offset: d.offset,
            old,
            new,
            written,
            covered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegWidth::{W32, W64};

    fn file() -> RegisterFile {
        RegisterFile::new(vec![
            RegDesc::ro("A", 0x0, W32, 0x11, ()).rw(0xff00),
            RegDesc::ro("B", 0x8, W64, 0, ()).rw(u64::MAX).w1c(0x1),
            RegDesc::ro("FAR", 0x1_0100, W32, 7, ()),
        ])
    }

    #[test]
    fn apply_writable_and_w1c_masks() {
        let mut f = file();
        let e = f.apply(0, 0xffff_ffff, 0xabcd, false).unwrap();
        assert_eq!((e.old, e.new), (0x11, 0xab11));
        f.set(0x8, 0x3);
        let e = f.apply(1, u64::MAX, 0x1, false).unwrap();
        assert_eq!(e.new, 0x0, "written as one: cleared, not set");
        let e = f.apply(0, 0xffff_ffff, 0, true).unwrap();
        assert_eq!(e.new, e.old, "locked: ignored");
    }

    #[test]
    fn locate_finds_the_register_holding_a_byte() {
        let f = file();
        assert_eq!(f.locate(0xc), Some((1, 4)));
        assert_eq!(f.locate(0x4), None);
        assert_eq!(f.get(0x1_0100), 7, "page 1 through the fast index");
        assert_eq!(f.get(0x1_0104), 0);
    }

    #[test]
    fn far_register_disables_only_the_fast_index() {
        let f = RegisterFile::new(vec![RegDesc::ro("X", 0x5_0000, W32, 9, ())]);
        assert!(f.fast.is_none());
        assert_eq!(f.get(0x5_0000), 9);
    }
}
