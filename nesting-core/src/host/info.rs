//! The host description: what `IOMMU_GET_HW_INFO` tells about the physical
//! IOMMU behind a device, decoded into our own types.
//!
//! Field positions are those of the Intel VT-d specification (rev 4.1,
//! sections 11.4.2 "Capability Register" and 11.4.3 "Extended Capability
//! Register") and of Arm IHI 0070 (section 6.3.1 "SMMU_IDR0" onwards); the
//! kernel forwards those registers unchanged (`include/uapi/linux/iommufd.h`,
//! `struct iommu_hw_info_vtd` and `struct iommu_hw_info_arm_smmuv3`).

use bitflags::bitflags;

use crate::bits::Field;
use crate::field_register;

field_register! {
    /// VT-d Capability Register (CAP_REG, spec 11.4.2).
    pub struct VtdCap;
}

field_register! {
    /// VT-d Extended Capability Register (ECAP_REG, spec 11.4.3).
    pub struct VtdEcap;
}

/// CAP_REG fields (VT-d 11.4.2).
pub mod cap {
    use super::Field;
    /// Number of domains supported: 2^(4 + 2*ND).
    pub const ND: Field = Field::bits(2, 0);
    /// Advanced fault logging.
    pub const AFL: Field = Field::bit(3);
    /// Required write-buffer flushing.
    pub const RWBF: Field = Field::bit(4);
    /// Protected low-memory region.
    pub const PLMR: Field = Field::bit(5);
    /// Protected high-memory region.
    pub const PHMR: Field = Field::bit(6);
    /// Caching mode: not-present and erroneous entries may be cached, so
    /// software invalidates on every change, maps included.
    pub const CM: Field = Field::bit(7);
    /// Supported adjusted guest address widths: bit 1 = 39-bit (3-level),
    /// bit 2 = 48-bit (4-level), bit 3 = 57-bit (5-level).
    pub const SAGAW: Field = Field::bits(12, 8);
    /// Maximum guest address width, minus one.
    pub const MGAW: Field = Field::bits(21, 16);
    /// Zero-length read.
    pub const ZLR: Field = Field::bit(22);
    /// Fault-recording register offset, in 16-byte units.
    pub const FRO: Field = Field::bits(33, 24);
    /// Second-stage large page support: bit 0 = 2 MiB, bit 1 = 1 GiB.
    pub const SLLPS: Field = Field::bits(37, 34);
    /// Page-selective invalidation.
    pub const PSI: Field = Field::bit(39);
    /// Number of fault-recording registers, minus one.
    pub const NFR: Field = Field::bits(47, 40);
    /// Maximum address mask value for page-selective invalidation.
    pub const MAMV: Field = Field::bits(53, 48);
    /// Write draining.
    pub const DWD: Field = Field::bit(54);
    /// Read draining.
    pub const DRD: Field = Field::bit(55);
    /// First-stage 1 GiB page support.
    pub const FS1GP: Field = Field::bit(56);
    /// Posted interrupts.
    pub const PI: Field = Field::bit(59);
    /// First-stage 5-level paging support.
    pub const FS5LP: Field = Field::bit(60);
    /// Enhanced command support.
    pub const ECMDS: Field = Field::bit(61);
    /// Enhanced set interrupt remap table pointer.
    pub const ESIRTPS: Field = Field::bit(62);
    /// Enhanced set root table pointer.
    pub const ESRTPS: Field = Field::bit(63);
}

/// ECAP_REG fields (VT-d 11.4.3).
pub mod ecap {
    use super::Field;
    /// Page-walk coherency.
    pub const C: Field = Field::bit(0);
    /// Queued invalidation.
    pub const QI: Field = Field::bit(1);
    /// Device-TLB (ATS).
    pub const DT: Field = Field::bit(2);
    /// Interrupt remapping.
    pub const IR: Field = Field::bit(3);
    /// Extended interrupt mode.
    pub const EIM: Field = Field::bit(4);
    /// Pass-through translation type.
    pub const PT: Field = Field::bit(6);
    /// Snoop control.
    pub const SC: Field = Field::bit(7);
    /// IOTLB register offset, in 16-byte units.
    pub const IRO: Field = Field::bits(17, 8);
    /// Maximum handle mask value.
    pub const MHMV: Field = Field::bits(23, 20);
    /// Memory type support.
    pub const MTS: Field = Field::bit(25);
    /// Nested translation.
    pub const NEST: Field = Field::bit(26);
    /// Page request support.
    pub const PRS: Field = Field::bit(29);
    /// Execute request support.
    pub const ERS: Field = Field::bit(30);
    /// Supervisor request support.
    pub const SRS: Field = Field::bit(31);
    /// No write flag support.
    pub const NWFS: Field = Field::bit(33);
    /// Extended accessed flag support.
    pub const EAFS: Field = Field::bit(34);
    /// PASID size supported, minus one (PASID width = PSS + 1 bits).
    pub const PSS: Field = Field::bits(39, 35);
    /// PASID support.
    pub const PASID: Field = Field::bit(40);
    /// Device-TLB invalidation throttle.
    pub const DIT: Field = Field::bit(41);
    /// Page-request drain support.
    pub const PDS: Field = Field::bit(42);
    /// Scalable mode translation support.
    pub const SMTS: Field = Field::bit(43);
    /// Second-stage accessed/dirty support.
    pub const SSADS: Field = Field::bit(45);
    /// Second-stage translation support.
    pub const SSTS: Field = Field::bit(46);
    /// First-stage translation support.
    pub const FSTS: Field = Field::bit(47);
    /// Scalable-mode page-walk coherency.
    pub const SMPWCS: Field = Field::bit(48);
    /// RID_PASID support.
    pub const RPS: Field = Field::bit(49);
}

/// SMMUv3 ID register fields (IHI 0070, section 6.3).
pub mod idr {
    use super::Field;
    /// IDR0.S2P: stage 2 translation supported.
    pub const IDR0_S2P: Field = Field::bit(0);
    /// IDR0.S1P: stage 1 translation supported.
    pub const IDR0_S1P: Field = Field::bit(1);
    /// IDR0.TTF: translation table formats (2 = AArch64, 3 = both).
    pub const IDR0_TTF: Field = Field::bits(3, 2);
    /// IDR0.COHACC: coherent access.
    pub const IDR0_COHACC: Field = Field::bit(4);
    /// IDR0.HTTU: hardware translation table update.
    pub const IDR0_HTTU: Field = Field::bits(7, 6);
    /// IDR0.ATS.
    pub const IDR0_ATS: Field = Field::bit(10);
    /// IDR0.ASID16.
    pub const IDR0_ASID16: Field = Field::bit(12);
    /// IDR0.PRI.
    pub const IDR0_PRI: Field = Field::bit(16);
    /// IDR0.VMID16.
    pub const IDR0_VMID16: Field = Field::bit(18);
    /// IDR0.CD2L: two-level CD tables.
    pub const IDR0_CD2L: Field = Field::bit(19);
    /// IDR0.TTENDIAN.
    pub const IDR0_TTENDIAN: Field = Field::bits(22, 21);
    /// IDR0.STALL_MODEL.
    pub const IDR0_STALL_MODEL: Field = Field::bits(25, 24);
    /// IDR0.ST_LEVEL: 0 linear, 1 two-level stream table.
    pub const IDR0_ST_LEVEL: Field = Field::bits(28, 27);
    /// IDR1.SIDSIZE: StreamID width in bits.
    pub const IDR1_SIDSIZE: Field = Field::bits(5, 0);
    /// IDR1.SSIDSIZE: SubstreamID width in bits.
    pub const IDR1_SSIDSIZE: Field = Field::bits(10, 6);
    /// IDR3.FWB: stage-2 forced write-back.
    pub const IDR3_FWB: Field = Field::bit(8);
    /// IDR3.RIL: range invalidation.
    pub const IDR3_RIL: Field = Field::bit(10);
    /// IDR5.OAS: output address size (0 = 32 bits .. 6 = 52 bits).
    pub const IDR5_OAS: Field = Field::bits(2, 0);
    /// IDR5.GRAN4K.
    pub const IDR5_GRAN4K: Field = Field::bit(4);
    /// IDR5.GRAN16K.
    pub const IDR5_GRAN16K: Field = Field::bit(5);
    /// IDR5.GRAN64K.
    pub const IDR5_GRAN64K: Field = Field::bit(6);
    /// IDR5.VAX: 52-bit virtual addresses.
    pub const IDR5_VAX: Field = Field::bits(11, 10);
    /// IDR0.BTM: broadcast TLB maintenance.
    pub const IDR0_BTM: Field = Field::bit(5);
    /// IDR0.DORMHINT: dormant hint.
    pub const IDR0_DORMHINT: Field = Field::bit(8);
    /// IDR0.HYP: hypervisor stage-1 contexts (EL2 StreamWorld).
    pub const IDR0_HYP: Field = Field::bit(9);
    /// IDR0.NS1ATS: no stage-1-only ATS.
    pub const IDR0_NS1ATS: Field = Field::bit(11);
    /// IDR0.MSI: message-signalled interrupts.
    pub const IDR0_MSI: Field = Field::bit(13);
    /// IDR0.SEV: the SMMU sends WFE wake-up events.
    pub const IDR0_SEV: Field = Field::bit(14);
    /// IDR0.ATOS: address translation operations.
    pub const IDR0_ATOS: Field = Field::bit(15);
    /// IDR0.VMW: VMID wildcards.
    pub const IDR0_VMW: Field = Field::bit(17);
    /// IDR0.TERM_MODEL: 1 = terminated transactions always abort.
    pub const IDR0_TERM_MODEL: Field = Field::bit(26);
    /// IDR1.PRIQS: log2 of the largest PRI queue.
    pub const IDR1_PRIQS: Field = Field::bits(15, 11);
    /// IDR1.EVENTQS: log2 of the largest event queue.
    pub const IDR1_EVENTQS: Field = Field::bits(20, 16);
    /// IDR1.CMDQS: log2 of the largest command queue.
    pub const IDR1_CMDQS: Field = Field::bits(25, 21);
    /// IDR1.ATTR_PERMS_OVR.
    pub const IDR1_ATTR_PERMS_OVR: Field = Field::bit(26);
    /// IDR1.ATTR_TYPES_OVR.
    pub const IDR1_ATTR_TYPES_OVR: Field = Field::bit(27);
    /// IDR1.REL: base addresses are relative (embedded implementations).
    pub const IDR1_REL: Field = Field::bit(28);
    /// IDR1.QUEUES_PRESET: queue bases are fixed.
    pub const IDR1_QUEUES_PRESET: Field = Field::bit(29);
    /// IDR1.TABLES_PRESET: table bases are fixed.
    pub const IDR1_TABLES_PRESET: Field = Field::bit(30);
    /// IDR3.HAD: hierarchical attribute disable (CD.HAD0/HAD1).
    pub const IDR3_HAD: Field = Field::bit(2);
    /// IDR3.XNX: EL0/EL1 execute-never distinction at stage 2.
    pub const IDR3_XNX: Field = Field::bit(4);
    /// IDR3.STT: small translation tables (TxSZ above 39).
    pub const IDR3_STT: Field = Field::bit(9);
    /// IDR3.BBML: break-before-make level.
    pub const IDR3_BBML: Field = Field::bits(12, 11);
    /// IDR5.STALL_MAX: most outstanding stalled transactions.
    pub const IDR5_STALL_MAX: Field = Field::bits(31, 16);

    /// Output address sizes in bits, indexed by IDR5.OAS.
    pub const OAS_BITS: [u32; 7] = [32, 36, 40, 42, 44, 48, 52];
}

bitflags! {
    /// Host-independent capabilities reported by `IOMMU_GET_HW_INFO`
    /// (`enum iommufd_hw_capabilities`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct HostCaps: u64 {
        /// The IOMMU can track dirty pages (HWPT_ALLOC_DIRTY_TRACKING).
        const DIRTY_TRACKING = 1 << 0;
        /// The device's PCI PASID capability has Execute Permission.
        const PCI_PASID_EXEC = 1 << 1;
        /// The device's PCI PASID capability has Privileged Mode.
        const PCI_PASID_PRIV = 1 << 2;
        /// ATS is not supported or cannot be used for this device.
        const PCI_ATS_NOT_SUPPORTED = 1 << 3;
    }
}

bitflags! {
    /// VT-d errata flags (`enum iommu_hw_info_vtd_flags`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct VtdErrata: u32 {
        /// Erratum 772415 (SPR17): read-only second-stage mappings must not
        /// be used as a nesting parent.
        const ERRATA_772415_SPR17 = 1 << 0;
    }
}

/// The vendor part of the host description.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HwInfo {
    /// No hardware information (`IOMMU_HW_INFO_TYPE_NONE`): mapping through
    /// an IOAS still works, nesting does not.
    #[default]
    None,
    /// Intel VT-d (`struct iommu_hw_info_vtd`).
    IntelVtd {
        /// Capability register.
        cap: VtdCap,
        /// Extended capability register.
        ecap: VtdEcap,
        /// Errata flags.
        errata: VtdErrata,
    },
    /// Arm SMMUv3 (`struct iommu_hw_info_arm_smmuv3`).
    ArmSmmuv3 {
        /// SMMU_IDR0..SMMU_IDR5.
        idr: [u32; 6],
        /// SMMU_IIDR.
        iidr: u32,
        /// SMMU_AIDR.
        aidr: u32,
        /// Flags (none are defined yet).
        flags: u32,
    },
    /// Another IOMMU type: its number and raw data.
    Other {
        /// `enum iommu_hw_info_type` value.
        kind: u32,
        /// Raw bytes of the type-specific structure.
        data: Vec<u8>,
    },
}

impl HwInfo {
    /// A short name for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            HwInfo::None => "none",
            HwInfo::IntelVtd { .. } => "intel-vtd",
            HwInfo::ArmSmmuv3 { .. } => "arm-smmuv3",
            HwInfo::Other { .. } => "other",
        }
    }
}

/// Everything the host tells about the IOMMU behind one device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// Vendor registers.
    pub hw: HwInfo,
    /// Generic capabilities.
    pub caps: HostCaps,
    /// log2 of the number of PASIDs the device and IOMMU support (0: none).
    pub max_pasid_log2: u8,
}

impl HostInfo {
    /// VT-d registers, if this is a VT-d host.
    pub fn vtd(&self) -> Option<(VtdCap, VtdEcap)> {
        match self.hw {
            HwInfo::IntelVtd { cap, ecap, .. } => Some((cap, ecap)),
            _ => None,
        }
    }

    /// SMMUv3 ID registers, if this is an SMMUv3 host.
    pub fn smmuv3_idr(&self) -> Option<[u32; 6]> {
        match self.hw {
            HwInfo::ArmSmmuv3 { idr, .. } => Some(idr),
            _ => None,
        }
    }
}

impl std::fmt::Display for HostInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.hw {
            HwInfo::None => write!(f, "host iommu: none (no hardware information)")?,
            HwInfo::IntelVtd { cap, ecap, errata } => write!(
                f,
                "host iommu: intel-vtd cap={:#018x} ecap={:#018x} errata={:#x}",
                cap.0,
                ecap.0,
                errata.bits()
            )?,
            HwInfo::ArmSmmuv3 {
                idr,
                iidr,
                aidr,
                flags,
            } => {
                write!(f, "host iommu: arm-smmuv3")?;
                for (i, v) in idr.iter().enumerate() {
                    write!(f, " idr{i}={v:#010x}")?;
                }
                write!(f, " iidr={iidr:#010x} aidr={aidr:#x} flags={flags:#x}")?;
            }
            HwInfo::Other { kind, data } => {
                write!(f, "host iommu: type {kind} ({} bytes)", data.len())?
            }
        }
        write!(
            f,
            "\nhost caps: {:?}\nmax_pasid_log2: {}",
            self.caps, self.max_pasid_log2
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // CAP_REG built bit by bit from VT-d 11.4.2: SAGAW=0b00100 (bit 10,
    // 4-level), MGAW=47 (bits 21:16), CM (bit 7), FRO=0x22 (bits 33:24),
    // SLLPS=0b11 (bits 35:34), PSI (bit 39).
    #[test]
    fn vtd_cap_decodes_spec_positions() {
        let raw = (1u64 << 10) | (47 << 16) | (1 << 7) | (0x22 << 24) | (0b11 << 34) | (1 << 39);
        let c = VtdCap(raw);
        assert_eq!(c.get(cap::SAGAW), 0b00100);
        assert_eq!(c.get(cap::MGAW) + 1, 48);
        assert!(c.has(cap::CM));
        assert_eq!(c.get(cap::FRO) * 16, 0x220);
        assert_eq!(c.get(cap::NFR), 0);
        assert!(c.has(cap::PSI));
        assert_eq!(c.get(cap::SLLPS), 0b11);
    }

    #[test]
    fn vtd_ecap_fields_match_linux_positions() {
        let e = VtdEcap(0)
            .with(ecap::NEST, 1)
            .with(ecap::FSTS, 1)
            .with(ecap::PSS, 19)
            .with(ecap::IRO, 0x50);
        assert_eq!(e.0, (1 << 26) | (1 << 47) | (19 << 35) | (0x50 << 8));
    }

    #[test]
    fn smmuv3_idr_fields() {
        let idr1 = 20 << 6 | 16;
        assert_eq!(idr::IDR1_SSIDSIZE.get(idr1), 20);
        assert_eq!(idr::IDR1_SIDSIZE.get(idr1), 16);
        assert_eq!(idr::OAS_BITS[idr::IDR5_OAS.get(5) as usize], 48);
    }
}
