//! Core value types shared by every model: addresses, permissions, page
//! sizes and requester identities, and the number syntax of options and
//! scripts ([`parse_u64`]).
//!
//! Addresses are newtypes so that an IOVA can never be passed where a guest
//! physical address is expected (the mistake every shadowing engine makes
//! once). Arithmetic on them is checked: a guest can place a mapping at the
//! top of the address space, and overflow must become an architected error,
//! not a wrapped address.

use std::fmt;

use bitflags::bitflags;

use crate::bits::FieldValue;

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw 64-bit value.
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// `self + off`, or `None` on overflow past `u64::MAX`.
            pub const fn checked_add(self, off: u64) -> Option<Self> {
                match self.0.checked_add(off) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self - off`, or `None` on underflow.
            pub const fn checked_sub(self, off: u64) -> Option<Self> {
                match self.0.checked_sub(off) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Whether the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                align != 0 && self.0 & (align - 1) == 0
            }

            /// The address rounded down to `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align.wrapping_sub(1)))
            }

            /// Offset of the address within an `align`-sized block.
            pub const fn offset_in(self, align: u64) -> u64 {
                self.0 & align.wrapping_sub(1)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

address_type!(
    /// An I/O virtual address: what a device puts on the bus.
    Iova
);
address_type!(
    /// A guest physical address.
    Gpa
);

/// An inclusive address range `[first, last]`. Inclusive so that a range
/// ending at `u64::MAX` (as iommufd's "unmap everything" does) is expressible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IovaRange {
    /// First address of the range.
    pub first: Iova,
    /// Last address of the range (inclusive).
    pub last: Iova,
}

impl IovaRange {
    /// The range `[start, start + len - 1]`; `None` when `len` is zero or the
    /// range would wrap.
    pub fn from_len(start: Iova, len: u64) -> Option<Self> {
        let last = start.0.checked_add(len.checked_sub(1)?)?;
        Some(Self {
            first: start,
            last: Iova(last),
        })
    }

    /// The range `[first, last]`; `None` when `last < first`.
    pub fn new(first: Iova, last: Iova) -> Option<Self> {
        (first <= last).then_some(Self { first, last })
    }

    /// Number of bytes, saturating at `u64::MAX` for the full 64-bit range.
    pub fn len(&self) -> u64 {
        (self.last.0 - self.first.0).saturating_add(1)
    }

    /// Never true: a range holds at least one byte. Present for clippy's
    /// `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `iova` lies inside the range.
    pub fn contains(&self, iova: Iova) -> bool {
        self.first <= iova && iova <= self.last
    }

    /// Whether `other` lies wholly inside this range.
    pub fn covers(&self, other: &IovaRange) -> bool {
        self.first <= other.first && other.last <= self.last
    }

    /// Whether the two ranges share at least one address.
    pub fn overlaps(&self, other: &IovaRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for IovaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.first.0, self.last.0)
    }
}

bitflags! {
    /// Access permissions of a DMA request or granted by a mapping.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Access: u8 {
        /// Device reads memory.
        const READ = 1 << 0;
        /// Device writes memory.
        const WRITE = 1 << 1;
        /// Instruction fetch (PCIe PASID execute-requested).
        const EXEC = 1 << 2;
        /// Privileged (supervisor) request.
        const PRIV = 1 << 3;
    }
}

impl Access {
    /// Read and write.
    pub const RW: Access = Access::READ.union(Access::WRITE);

    /// Whether every permission `needed` asks for is granted by `self`
    /// (READ/WRITE/EXEC only; PRIV describes the requester, not the page).
    pub fn permits(self, needed: Access) -> bool {
        let rwx = Access::READ | Access::WRITE | Access::EXEC;
        self.intersection(rwx).contains(needed.intersection(rwx))
    }
}

/// A page size: a power of two from 4 KiB up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageSize(u64);

impl PageSize {
    /// 4 KiB.
    pub const SIZE_4K: PageSize = PageSize(1 << 12);
    /// 16 KiB (Arm granule).
    pub const SIZE_16K: PageSize = PageSize(1 << 14);
    /// 64 KiB (Arm granule).
    pub const SIZE_64K: PageSize = PageSize(1 << 16);
    /// 2 MiB.
    pub const SIZE_2M: PageSize = PageSize(1 << 21);
    /// 1 GiB.
    pub const SIZE_1G: PageSize = PageSize(1 << 30);

    /// A page size of `bytes`; `None` unless a power of two of at least 4 KiB.
    pub const fn new(bytes: u64) -> Option<Self> {
        if bytes.is_power_of_two() && bytes >= 4096 {
            Some(PageSize(bytes))
        } else {
            None
        }
    }

    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// log2 of the size.
    pub const fn shift(self) -> u32 {
        self.0.trailing_zeros()
    }

    /// Mask of the offset bits within a page.
    pub const fn mask(self) -> u64 {
        self.0 - 1
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b if b >= 1 << 30 => write!(f, "{}G", b >> 30),
            b if b >= 1 << 20 => write!(f, "{}M", b >> 20),
            b => write!(f, "{}K", b >> 10),
        }
    }
}

/// A set of page sizes as a bitmask (bit n set = 2^n bytes supported), the
/// encoding of virtio-iommu's `page_size_mask` and of iommufd's pgsize
/// bitmaps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PageSizes(pub u64);

impl PageSizes {
    /// The smallest size in the set.
    pub fn smallest(self) -> Option<PageSize> {
        (self.0 != 0).then(|| PageSize(1u64 << self.0.trailing_zeros()))
    }

    /// Whether `size` is in the set.
    pub fn contains(self, size: PageSize) -> bool {
        self.0 & size.0 != 0
    }

    /// The sizes present in both sets.
    pub fn intersect(self, other: PageSizes) -> PageSizes {
        PageSizes(self.0 & other.0)
    }
}

/// A PCI requester ID: bus, device, function packed as `bus << 8 | dev << 3 | fn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf(pub u16);

impl Bdf {
    /// Builds a BDF; `dev` and `func` are truncated to 5 and 3 bits.
    pub const fn new(bus: u8, dev: u8, func: u8) -> Self {
        Bdf(((bus as u16) << 8) | (((dev & 0x1f) as u16) << 3) | (func & 0x7) as u16)
    }
    /// Bus number.
    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Device and function as the 8-bit devfn.
    pub const fn devfn(self) -> u8 {
        self.0 as u8
    }
    /// Device number.
    pub const fn dev(self) -> u8 {
        (self.0 >> 3) as u8 & 0x1f
    }
    /// Function number.
    pub const fn func(self) -> u8 {
        self.0 as u8 & 0x7
    }
}

/// A requester-id field (a VT-d source-id) reads as a [`Bdf`].
impl FieldValue for Bdf {
    const BITS: u32 = u16::BITS;
    fn from_raw(raw: u64) -> Self {
        Bdf(u16::from_raw(raw))
    }
    fn into_raw(self) -> u64 {
        u64::from(self.0)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus(), self.dev(), self.func())
    }
}

/// An Arm SMMU StreamID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u32);

/// A virtio-iommu endpoint ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId(pub u32);

/// Who issued a DMA request, in the vocabulary of each model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequesterId {
    /// VT-d source-id.
    Pci(Bdf),
    /// SMMUv3 StreamID.
    Stream(StreamId),
    /// virtio-iommu endpoint.
    Endpoint(EndpointId),
}

impl RequesterId {
    /// The raw number (BDF, StreamID or endpoint ID).
    pub fn raw(self) -> u32 {
        match self {
            RequesterId::Pci(b) => u32::from(b.0),
            RequesterId::Stream(s) => s.0,
            RequesterId::Endpoint(e) => e.0,
        }
    }
}

impl fmt::Display for RequesterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequesterId::Pci(b) => write!(f, "bdf {b}"),
            RequesterId::Stream(s) => write!(f, "sid {:#x}", s.0),
            RequesterId::Endpoint(e) => write!(f, "endpoint {:#x}", e.0),
        }
    }
}

/// A PCIe PASID (VT-d) or SMMUv3 SubstreamID: at most 20 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pasid(u32);

/// SMMUv3 calls the PASID a SubstreamID.
pub type SubstreamId = Pasid;

impl Pasid {
    /// Widest PASID the PCIe specification defines, in bits.
    pub const MAX_BITS: u32 = 20;

    /// A PASID; `None` if it does not fit in 20 bits.
    pub const fn new(v: u32) -> Option<Self> {
        if v < (1 << Self::MAX_BITS) {
            Some(Pasid(v))
        } else {
            None
        }
    }

    /// The raw value.
    pub const fn raw(self) -> u32 {
        self.0
    }
}

/// A PASID (or SubstreamID) field reads as a [`Pasid`]; bits above
/// [`Pasid::MAX_BITS`] cannot occur, since a wider field does not compile.
impl FieldValue for Pasid {
    const BITS: u32 = Pasid::MAX_BITS;
    fn from_raw(raw: u64) -> Self {
        Pasid(u32::from_raw(raw) & ((1 << Pasid::MAX_BITS) - 1))
    }
    fn into_raw(self) -> u64 {
        u64::from(self.0)
    }
}

impl fmt::Display for Pasid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Parses a number as model options, host profiles and replay scripts
/// write it: decimal or `0x` hex, `_` allowed.
pub fn parse_u64(s: &str) -> Option<u64> {
    let s: String = s.chars().filter(|c| *c != '_').collect();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) if !h.is_empty() => u64::from_str_radix(h, 16).ok(),
        Some(_) => None,
        None if !s.is_empty() => s.parse().ok(),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iova_range_from_len_top_of_space_is_inclusive() {
        let r = IovaRange::from_len(Iova(u64::MAX - 0xfff), 0x1000).unwrap();
        assert_eq!(r.last, Iova(u64::MAX));
        assert_eq!(r.len(), 0x1000);
    }

    #[test]
    fn iova_range_from_len_zero_or_wrapping_is_none() {
        assert!(IovaRange::from_len(Iova(0), 0).is_none());
        assert!(IovaRange::from_len(Iova(u64::MAX), 2).is_none());
    }

    #[test]
    fn iova_range_full_space_len_saturates() {
        let r = IovaRange::new(Iova(0), Iova(u64::MAX)).unwrap();
        assert_eq!(r.len(), u64::MAX);
    }

    #[test]
    fn iova_range_overlap_and_cover() {
        let a = IovaRange::from_len(Iova(0x1000), 0x2000).unwrap();
        let b = IovaRange::from_len(Iova(0x2000), 0x1000).unwrap();
        let c = IovaRange::from_len(Iova(0x3000), 0x1000).unwrap();
        assert!(a.overlaps(&b) && a.covers(&b));
        assert!(!a.overlaps(&c) && !a.covers(&c));
    }

    #[test]
    fn bdf_pack_unpack_roundtrip() {
        let b = Bdf::new(0x3a, 0x1f, 7);
        assert_eq!((b.bus(), b.dev(), b.func()), (0x3a, 0x1f, 7));
        assert_eq!(b.to_string(), "3a:1f.7");
        assert_eq!(b.0, 0x3aff);
    }

    #[test]
    fn bdf_and_pasid_field_values_roundtrip() {
        assert_eq!(Bdf::from_raw(0x3aff), Bdf::new(0x3a, 0x1f, 7));
        assert_eq!(Bdf(0x0102).into_raw(), 0x0102);
        assert_eq!(Pasid::from_raw(0xf_ffff), Pasid::new(0xf_ffff).unwrap());
        assert_eq!(Pasid::new(0x1234).unwrap().into_raw(), 0x1234);
    }

    #[test]
    fn pasid_over_20_bits_is_rejected() {
        assert!(Pasid::new((1 << 20) - 1).is_some());
        assert!(Pasid::new(1 << 20).is_none());
    }

    #[test]
    fn page_size_rejects_non_powers_and_small() {
        assert!(PageSize::new(4096).is_some());
        assert!(PageSize::new(2048).is_none());
        assert!(PageSize::new(12288).is_none());
        assert_eq!(PageSize::SIZE_2M.shift(), 21);
        assert_eq!(PageSize::SIZE_2M.to_string(), "2M");
    }

    #[test]
    fn page_sizes_smallest_and_intersection() {
        let s = PageSizes(0x4020_1000);
        assert_eq!(s.smallest(), Some(PageSize::SIZE_4K));
        assert_eq!(
            s.intersect(PageSizes(0x20_0000)).smallest(),
            Some(PageSize::SIZE_2M)
        );
        assert_eq!(PageSizes(0).smallest(), None);
    }

    #[test]
    fn access_permits_ignores_priv() {
        assert!(Access::RW.permits(Access::READ | Access::PRIV));
        assert!(!Access::READ.permits(Access::WRITE));
        assert!(Access::READ.permits(Access::empty()));
    }

    #[test]
    fn parse_u64_forms() {
        assert_eq!(parse_u64("0x1_0000"), Some(0x10000));
        assert_eq!(parse_u64("42"), Some(42));
        assert_eq!(parse_u64("0x"), None);
        assert_eq!(parse_u64(""), None);
        assert_eq!(parse_u64("-1"), None);
    }
}
