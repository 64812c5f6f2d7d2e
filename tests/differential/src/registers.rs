//! Register names and ID register fields, so a register disagreement
//! says which register and which field (IHI 0070 chapter 6).

use nesting_core::bits::Field;
use nesting_core::host::info::idr;
use smmuv3::regs::{cr0, gbpa, gerror, off, queue_base, queue_ptr, strtab_base_cfg};

/// The name of the register at `offset` (page 1 aliases of page 0 are
/// named by their page-0 register, with `(page 1)`).
pub fn name(offset: u64) -> String {
    let table: &[(u64, &str)] = &[
        (off::IDR0, "SMMU_IDR0"),
        (off::IDR1, "SMMU_IDR1"),
        (off::IDR2, "SMMU_IDR2"),
        (off::IDR3, "SMMU_IDR3"),
        (off::IDR4, "SMMU_IDR4"),
        (off::IDR5, "SMMU_IDR5"),
        (off::IIDR, "SMMU_IIDR"),
        (off::AIDR, "SMMU_AIDR"),
        (off::CR0, "SMMU_CR0"),
        (off::CR0ACK, "SMMU_CR0ACK"),
        (off::CR1, "SMMU_CR1"),
        (off::CR2, "SMMU_CR2"),
        (off::STATUSR, "SMMU_STATUSR"),
        (off::GBPA, "SMMU_GBPA"),
        (off::AGBPA, "SMMU_AGBPA"),
        (off::IRQ_CTRL, "SMMU_IRQ_CTRL"),
        (off::IRQ_CTRLACK, "SMMU_IRQ_CTRLACK"),
        (off::GERROR, "SMMU_GERROR"),
        (off::GERRORN, "SMMU_GERRORN"),
        (off::GERROR_IRQ_CFG0, "SMMU_GERROR_IRQ_CFG0"),
        (off::GERROR_IRQ_CFG1, "SMMU_GERROR_IRQ_CFG1"),
        (off::GERROR_IRQ_CFG2, "SMMU_GERROR_IRQ_CFG2"),
        (off::STRTAB_BASE, "SMMU_STRTAB_BASE"),
        (off::STRTAB_BASE + 4, "SMMU_STRTAB_BASE[63:32]"),
        (off::STRTAB_BASE_CFG, "SMMU_STRTAB_BASE_CFG"),
        (off::CMDQ_BASE, "SMMU_CMDQ_BASE"),
        (off::CMDQ_BASE + 4, "SMMU_CMDQ_BASE[63:32]"),
        (off::CMDQ_PROD, "SMMU_CMDQ_PROD"),
        (off::CMDQ_CONS, "SMMU_CMDQ_CONS"),
        (off::EVTQ_BASE, "SMMU_EVENTQ_BASE"),
        (off::EVTQ_BASE + 4, "SMMU_EVENTQ_BASE[63:32]"),
        (off::EVTQ_IRQ_CFG0, "SMMU_EVENTQ_IRQ_CFG0"),
        (off::EVTQ_IRQ_CFG1, "SMMU_EVENTQ_IRQ_CFG1"),
        (off::EVTQ_IRQ_CFG2, "SMMU_EVENTQ_IRQ_CFG2"),
        (off::EVTQ_PROD, "SMMU_EVENTQ_PROD"),
        (off::EVTQ_CONS, "SMMU_EVENTQ_CONS"),
        (off::PRIQ_BASE, "SMMU_PRIQ_BASE"),
        (off::PRIQ_PROD, "SMMU_PRIQ_PROD"),
        (off::PRIQ_CONS, "SMMU_PRIQ_CONS"),
    ];
    if let Some((_, n)) = table.iter().find(|(o, _)| *o == offset) {
        return (*n).to_string();
    }
    if offset >= off::PAGE1
        && let Some((_, n)) = table.iter().find(|(o, _)| *o == offset - off::PAGE1)
    {
        return format!("{n} (page 1 offset {offset:#x})");
    }
    if (off::EVTQ_PROD - off::PAGE1..=off::PRIQ_CONS - off::PAGE1).contains(&offset)
        && let Some((_, n)) = table.iter().find(|(o, _)| *o == offset + off::PAGE1)
    {
        return format!("page 0 offset {offset:#x} (where {n} is in page 1)");
    }
    format!("register {offset:#x}")
}

/// The named fields of a register, in bit order.
fn fields(offset: u64) -> &'static [(&'static str, Field)] {
    match offset {
        off::IDR0 => &[
            ("S2P", idr::IDR0_S2P),
            ("S1P", idr::IDR0_S1P),
            ("TTF", idr::IDR0_TTF),
            ("COHACC", idr::IDR0_COHACC),
            ("BTM", idr::IDR0_BTM),
            ("HTTU", idr::IDR0_HTTU),
            ("DORMHINT", idr::IDR0_DORMHINT),
            ("HYP", idr::IDR0_HYP),
            ("ATS", idr::IDR0_ATS),
            ("NS1ATS", idr::IDR0_NS1ATS),
            ("ASID16", idr::IDR0_ASID16),
            ("MSI", idr::IDR0_MSI),
            ("SEV", idr::IDR0_SEV),
            ("ATOS", idr::IDR0_ATOS),
            ("PRI", idr::IDR0_PRI),
            ("VMW", idr::IDR0_VMW),
            ("VMID16", idr::IDR0_VMID16),
            ("CD2L", idr::IDR0_CD2L),
            ("TTENDIAN", idr::IDR0_TTENDIAN),
            ("STALL_MODEL", idr::IDR0_STALL_MODEL),
            ("TERM_MODEL", idr::IDR0_TERM_MODEL),
            ("ST_LEVEL", idr::IDR0_ST_LEVEL),
        ],
        off::IDR1 => &[
            ("SIDSIZE", idr::IDR1_SIDSIZE),
            ("SSIDSIZE", idr::IDR1_SSIDSIZE),
            ("PRIQS", idr::IDR1_PRIQS),
            ("EVENTQS", idr::IDR1_EVENTQS),
            ("CMDQS", idr::IDR1_CMDQS),
            ("ATTR_PERMS_OVR", idr::IDR1_ATTR_PERMS_OVR),
            ("ATTR_TYPES_OVR", idr::IDR1_ATTR_TYPES_OVR),
            ("REL", idr::IDR1_REL),
            ("QUEUES_PRESET", idr::IDR1_QUEUES_PRESET),
            ("TABLES_PRESET", idr::IDR1_TABLES_PRESET),
        ],
        off::IDR3 => &[
            ("HAD", idr::IDR3_HAD),
            ("XNX", idr::IDR3_XNX),
            ("FWB", idr::IDR3_FWB),
            ("STT", idr::IDR3_STT),
            ("RIL", idr::IDR3_RIL),
            ("BBML", idr::IDR3_BBML),
        ],
        off::IDR5 => &[
            ("OAS", idr::IDR5_OAS),
            ("GRAN4K", idr::IDR5_GRAN4K),
            ("GRAN16K", idr::IDR5_GRAN16K),
            ("GRAN64K", idr::IDR5_GRAN64K),
            ("VAX", idr::IDR5_VAX),
            ("STALL_MAX", idr::IDR5_STALL_MAX),
        ],
        off::CR0 | off::CR0ACK => &[
            ("SMMUEN", cr0::SMMUEN),
            ("PRIQEN", cr0::PRIQEN),
            ("EVENTQEN", cr0::EVTQEN),
            ("CMDQEN", cr0::CMDQEN),
            ("ATSCHK", cr0::ATSCHK),
        ],
        off::GBPA => &[
            ("MEMATTR", gbpa::MEMATTR),
            ("MTCFG", gbpa::MTCFG),
            ("ALLOCCFG", gbpa::ALLOCCFG),
            ("SHCFG", gbpa::SHCFG),
            ("PRIVCFG", gbpa::PRIVCFG),
            ("INSTCFG", gbpa::INSTCFG),
            ("ABORT", gbpa::ABORT),
            ("UPDATE", gbpa::UPDATE),
        ],
        off::GERROR | off::GERRORN => &[
            ("CMDQ_ERR", gerror::CMDQ_ERR),
            ("EVTQ_ABT_ERR", gerror::EVTQ_ABT_ERR),
            ("PRIQ_ABT_ERR", gerror::PRIQ_ABT_ERR),
            ("MSI_CMDQ_ABT_ERR", gerror::MSI_CMDQ_ABT_ERR),
            ("MSI_EVTQ_ABT_ERR", gerror::MSI_EVTQ_ABT_ERR),
            ("MSI_PRIQ_ABT_ERR", gerror::MSI_PRIQ_ABT_ERR),
            ("MSI_GERROR_ABT_ERR", gerror::MSI_GERROR_ABT_ERR),
            ("SFM_ERR", gerror::SFM_ERR),
        ],
        off::STRTAB_BASE_CFG => &[
            ("LOG2SIZE", strtab_base_cfg::LOG2SIZE),
            ("SPLIT", strtab_base_cfg::SPLIT),
            ("FMT", strtab_base_cfg::FMT),
        ],
        off::CMDQ_BASE | off::EVTQ_BASE | off::PRIQ_BASE => &[
            ("LOG2SIZE", queue_base::LOG2SIZE),
            ("ADDR", queue_base::ADDR),
            ("RA/WA", queue_base::ALLOC),
        ],
        off::CMDQ_PROD => &[("WR", queue_ptr::WRAP_INDEX)],
        off::CMDQ_CONS => &[("RD", queue_ptr::WRAP_INDEX), ("ERR", queue_ptr::ERR)],
        off::EVTQ_PROD | off::PRIQ_PROD => {
            &[("WR", queue_ptr::WRAP_INDEX), ("OVFLG", queue_ptr::OVF)]
        }
        off::EVTQ_CONS | off::PRIQ_CONS => {
            &[("RD", queue_ptr::WRAP_INDEX), ("OVACKFLG", queue_ptr::OVF)]
        }
        _ => &[],
    }
}

/// Where two values of the register at `offset` differ: one
/// `(name, ours, qemu)` per differing named field, plus the bits no
/// field names; the whole register for registers without field tables.
pub fn split(offset: u64, ours: u64, qemu: u64) -> Vec<(String, u64, u64)> {
    let reg = name(offset);
    let fs = fields(offset);
    if fs.is_empty() {
        return vec![(reg, ours, qemu)];
    }
    let mut out = Vec::new();
    let mut named = 0u64;
    for (n, f) in fs {
        named |= f.mask();
        if f.get(ours) != f.get(qemu) {
            out.push((format!("{reg}.{n}"), f.get(ours), f.get(qemu)));
        }
    }
    if (ours ^ qemu) & !named != 0 {
        out.push((format!("{reg} unnamed bits"), ours & !named, qemu & !named));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idr0_difference_is_split_into_fields() {
        // QEMU 11.1 virt (stage=nested) against our S1-only defaults.
        let d = split(off::IDR0, 0x0d44_101a | (1 << 14), 0x0d44_101b);
        let names: Vec<&str> = d.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["SMMU_IDR0.S2P", "SMMU_IDR0.SEV"]);
    }

    #[test]
    fn page1_and_page0_aliases_are_named() {
        assert_eq!(name(off::EVTQ_PROD), "SMMU_EVENTQ_PROD");
        assert!(name(off::EVTQ_PROD - off::PAGE1).contains("page 1"));
        assert!(name(off::PAGE1 + off::CR0).contains("SMMU_CR0"));
    }

    #[test]
    fn plain_register_difference_is_whole() {
        assert_eq!(
            split(off::STATUSR, 1, 0),
            vec![("SMMU_STATUSR".to_string(), 1, 0)]
        );
    }

    #[test]
    fn event_queue_overflow_flag_is_its_own_field() {
        assert_eq!(
            split(off::EVTQ_PROD, 0x8000_0002, 0x2),
            vec![("SMMU_EVENTQ_PROD.OVFLG".to_string(), 1, 0)]
        );
    }
}
