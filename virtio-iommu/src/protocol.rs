//! Wire formats of virtio 1.3 section 5.13 (and Linux's
//! `include/uapi/linux/virtio_iommu.h`, which is what the Linux driver
//! sends): feature bits, the configuration layout, request heads and tails,
//! the four request bodies, PROBE properties and fault reports.
//!
//! Every structure is `#[repr(C)]` with explicit little-endian fields and a
//! compile-time size check. Decoding is total: request types, statuses and
//! fault reasons carry an `Unknown(raw)` variant.

use bitflags::bitflags;
use zerocopy::little_endian::{U16 as Le16, U32 as Le32, U64 as Le64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// virtio device ID of the IOMMU device (virtio 1.3 5.13.1).
pub const VIRTIO_ID_IOMMU: u32 = 23;

/// Index of the request queue (virtio 1.3 5.13.2).
pub const REQUEST_QUEUE: u16 = 0;
/// Index of the event queue (virtio 1.3 5.13.2).
pub const EVENT_QUEUE: u16 = 1;
/// Number of virtqueues.
pub const NUM_QUEUES: usize = 2;

bitflags! {
    /// Feature bits: the device-specific ones of virtio 1.3 5.13.3 and the
    /// transport bit the model requires (VIRTIO_F_VERSION_1, 6).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Features: u64 {
        /// `VIRTIO_IOMMU_F_INPUT_RANGE`: `input_range` is valid.
        const INPUT_RANGE = 1 << 0;
        /// `VIRTIO_IOMMU_F_DOMAIN_RANGE`: `domain_range` is valid.
        const DOMAIN_RANGE = 1 << 1;
        /// `VIRTIO_IOMMU_F_MAP_UNMAP`: MAP and UNMAP requests.
        const MAP_UNMAP = 1 << 2;
        /// `VIRTIO_IOMMU_F_BYPASS`: unattached endpoints bypass (legacy).
        const BYPASS = 1 << 3;
        /// `VIRTIO_IOMMU_F_PROBE`: PROBE requests, `probe_size` is valid.
        const PROBE = 1 << 4;
        /// `VIRTIO_IOMMU_F_MMIO`: `VIRTIO_IOMMU_MAP_F_MMIO`.
        const MMIO = 1 << 5;
        /// `VIRTIO_IOMMU_F_BYPASS_CONFIG`: config `bypass` field and
        /// `VIRTIO_IOMMU_ATTACH_F_BYPASS`.
        const BYPASS_CONFIG = 1 << 6;
        /// `VIRTIO_F_VERSION_1` (virtio 1.3 6): the modern interface.
        const VERSION_1 = 1 << 32;
    }
}

/// `struct virtio_iommu_range_64`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Range64 {
    /// First address.
    pub start: Le64,
    /// Last address (inclusive).
    pub end: Le64,
}

/// `struct virtio_iommu_range_32`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Range32 {
    /// First ID.
    pub start: Le32,
    /// Last ID (inclusive).
    pub end: Le32,
}

/// `struct virtio_iommu_config` (virtio 1.3 5.13.4).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ConfigSpace {
    /// Supported page sizes; the lowest set bit is the granule.
    pub page_size_mask: Le64,
    /// Virtual addresses the device translates.
    pub input_range: Range64,
    /// Domain IDs the device accepts.
    pub domain_range: Range32,
    /// Size of the PROBE properties buffer.
    pub probe_size: Le32,
    /// Bypass for unattached endpoints (0 or 1).
    pub bypass: u8,
    /// Reserved.
    pub reserved: [u8; 3],
}

/// Byte offset of `bypass` in the configuration space.
pub const CONFIG_BYPASS_OFFSET: u64 = 36;

/// `struct virtio_iommu_req_head`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ReqHead {
    /// Request type ([`RequestType`]).
    pub type_: u8,
    /// Reserved; the device ignores it (5.13.6 device requirements).
    pub reserved: [u8; 3],
}

/// `struct virtio_iommu_req_tail`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ReqTail {
    /// Status ([`Status`]).
    pub status: u8,
    /// Reserved; the device writes zero.
    pub reserved: [u8; 3],
}

/// Device-readable body of `struct virtio_iommu_req_attach` (after the head).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct AttachBody {
    /// Domain ID.
    pub domain: Le32,
    /// Endpoint ID.
    pub endpoint: Le32,
    /// [`AttachFlags`].
    pub flags: Le32,
    /// Must be zero (5.13.6.3.2).
    pub reserved: [u8; 4],
}

/// Device-readable body of `struct virtio_iommu_req_detach`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct DetachBody {
    /// Domain ID.
    pub domain: Le32,
    /// Endpoint ID.
    pub endpoint: Le32,
    /// Ignored by the device (5.13.6.4.2).
    pub reserved: [u8; 8],
}

/// Device-readable body of `struct virtio_iommu_req_map`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct MapBody {
    /// Domain ID.
    pub domain: Le32,
    /// First IOVA.
    pub virt_start: Le64,
    /// Last IOVA (inclusive).
    pub virt_end: Le64,
    /// First guest-physical address.
    pub phys_start: Le64,
    /// [`MapFlags`].
    pub flags: Le32,
}

/// Device-readable body of `struct virtio_iommu_req_unmap`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct UnmapBody {
    /// Domain ID.
    pub domain: Le32,
    /// First IOVA.
    pub virt_start: Le64,
    /// Last IOVA (inclusive).
    pub virt_end: Le64,
    /// Reserved; the device ignores it (5.13.6.6.2 allows either).
    pub reserved: [u8; 4],
}

/// Device-readable body of `struct virtio_iommu_req_probe`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ProbeBody {
    /// Endpoint ID.
    pub endpoint: Le32,
    /// Ignored by the device (5.13.6.7.2).
    pub reserved: [u8; 64],
}

impl Default for ProbeBody {
    fn default() -> Self {
        ProbeBody {
            endpoint: Le32::ZERO,
            reserved: [0; 64],
        }
    }
}

/// `struct virtio_iommu_probe_property` header.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ProbeProperty {
    /// Type in bits 0..12, reserved bits 12..16.
    pub type_: Le16,
    /// Length of the value after this header.
    pub length: Le16,
}

/// `struct virtio_iommu_probe_resv_mem` (5.13.6.8.1).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ProbeResvMem {
    /// Header: type RESV_MEM, length 20.
    pub head: ProbeProperty,
    /// [`RESV_MEM_T_RESERVED`] or [`RESV_MEM_T_MSI`].
    pub subtype: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// First address.
    pub start: Le64,
    /// Last address (inclusive).
    pub end: Le64,
}

/// `struct virtio_iommu_fault` (5.13.6.9).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct FaultRecord {
    /// [`FaultReason`].
    pub reason: u8,
    /// Zero (the Linux driver ignores records where it is not).
    pub reserved: [u8; 3],
    /// [`FaultFlags`].
    pub flags: Le32,
    /// The endpoint that faulted.
    pub endpoint: Le32,
    /// Zero.
    pub reserved1: [u8; 4],
    /// Faulting address, with [`FaultFlags::ADDRESS`].
    pub address: Le64,
}

// Layouts: zerocopy derives the byte conversions and proves there is no
// padding; the sizes are those of the C structures.
macro_rules! wire {
    ($($t:ty => $size:expr),* $(,)?) => {
        $(
            const _: () = assert!(std::mem::size_of::<$t>() == $size);
            impl $t {
                /// Size on the wire in bytes.
                pub const SIZE: usize = $size;
            }
        )*
    };
}

wire!(
    Range64 => 16,
    Range32 => 8,
    ConfigSpace => 40,
    ReqHead => 4,
    ReqTail => 4,
    AttachBody => 16,
    DetachBody => 16,
    MapBody => 32,
    UnmapBody => 24,
    ProbeBody => 68,
    ProbeProperty => 4,
    ProbeResvMem => 24,
    FaultRecord => 24,
);

/// `VIRTIO_IOMMU_PROBE_T_MASK`: the type bits of a property header.
pub const PROBE_T_MASK: u16 = 0xfff;
/// `VIRTIO_IOMMU_PROBE_T_NONE`: end of the property list.
pub const PROBE_T_NONE: u16 = 0;
/// `VIRTIO_IOMMU_PROBE_T_RESV_MEM`.
pub const PROBE_T_RESV_MEM: u16 = 1;
/// `VIRTIO_IOMMU_RESV_MEM_T_RESERVED`.
pub const RESV_MEM_T_RESERVED: u8 = 0;
/// `VIRTIO_IOMMU_RESV_MEM_T_MSI`.
pub const RESV_MEM_T_MSI: u8 = 1;

macro_rules! enum_with_unknown {
    ($(#[$doc:meta])* pub enum $name:ident { $($(#[$vdoc:meta])* $v:ident = $n:expr),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $v,)*
            /// A value this model does not know.
            Unknown(u8),
        }

        impl From<u8> for $name {
            fn from(raw: u8) -> Self {
                match raw {
                    $($n => $name::$v,)*
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for u8 {
            fn from(v: $name) -> u8 {
                match v {
                    $($name::$v => $n,)*
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

enum_with_unknown!(
    /// `VIRTIO_IOMMU_T_*` (5.13.6).
    pub enum RequestType {
        /// `VIRTIO_IOMMU_T_ATTACH`.
        Attach = 1,
        /// `VIRTIO_IOMMU_T_DETACH`.
        Detach = 2,
        /// `VIRTIO_IOMMU_T_MAP`.
        Map = 3,
        /// `VIRTIO_IOMMU_T_UNMAP`.
        Unmap = 4,
        /// `VIRTIO_IOMMU_T_PROBE`.
        Probe = 5,
    }
);

enum_with_unknown!(
    /// `VIRTIO_IOMMU_S_*` (5.13.6).
    pub enum Status {
        /// All good.
        Ok = 0,
        /// Virtio communication error.
        IoErr = 1,
        /// Unsupported request.
        Unsupp = 2,
        /// Internal device error.
        DevErr = 3,
        /// Invalid parameters.
        Inval = 4,
        /// Out-of-range parameters.
        Range = 5,
        /// Entry not found.
        NoEnt = 6,
        /// Bad address.
        Fault = 7,
        /// Insufficient resources.
        NoMem = 8,
    }
);

enum_with_unknown!(
    /// `VIRTIO_IOMMU_FAULT_R_*` (5.13.6.9).
    pub enum FaultReason {
        /// `VIRTIO_IOMMU_FAULT_R_UNKNOWN`: internal error, or none of the
        /// others.
        Unspecified = 0,
        /// The endpoint is not attached to a domain.
        Domain = 1,
        /// No mapping, or the mapping's flags forbid the access.
        Mapping = 2,
    }
);

bitflags! {
    /// `VIRTIO_IOMMU_ATTACH_F_*` (5.13.6.3).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct AttachFlags: u32 {
        /// Attach to a bypass domain.
        const BYPASS = 1 << 0;
    }
}

bitflags! {
    /// `VIRTIO_IOMMU_MAP_F_*` (5.13.6.5).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct MapFlags: u32 {
        /// Reads allowed.
        const READ = 1 << 0;
        /// Writes allowed.
        const WRITE = 1 << 1;
        /// Memory type MMIO (needs `VIRTIO_IOMMU_F_MMIO`).
        const MMIO = 1 << 2;
    }
}

bitflags! {
    /// `VIRTIO_IOMMU_FAULT_F_*` (5.13.6.9).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct FaultFlags: u32 {
        /// The access was a read.
        const READ = 1 << 0;
        /// The access was a write.
        const WRITE = 1 << 1;
        /// The access was an instruction fetch: Linux's
        /// include/uapi/linux/virtio_iommu.h defines
        /// VIRTIO_IOMMU_FAULT_F_EXEC (1 << 2) and its fault handler prints
        /// it, but virtio 1.3 5.13.6.9 defines only READ, WRITE and ADDRESS
        /// ("The device SHOULD set undefined flags to zero"; "The driver
        /// MUST ignore undefined flags"). The device follows the spec: it
        /// never sets EXEC and reports a fetch as READ (which is how it
        /// checks one, against MAP_F_READ). Kept to decode Linux's bit.
        const EXEC = 1 << 2;
        /// `address` is valid.
        const ADDRESS = 1 << 8;
    }
}
