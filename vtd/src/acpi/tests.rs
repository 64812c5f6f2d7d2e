//! DMAR bytes against the layout of VT-d chapter 8, and against where
//! Linux's parser (`drivers/iommu/intel/dmar.c`, `iommu.c`, on the
//! structures of `include/acpi/actbl1.h`) reads each field.

use super::*;

const OEM_ID: [u8; 6] = *b"VIOMMU";
const OEM_TABLE_ID: [u8; 8] = *b"VIOMMUGT";

fn bdf(dev: u8, func: u8) -> Bdf {
    Bdf::new(0, dev, func)
}

/// A client platform's DMAR: a unit for the integrated GPU (00:02.0) and
/// an INCLUDE_PCI_ALL unit with the I/O APIC and HPET, the GPU's stolen
/// memory as an RMRR, ATS on every root port, the GPU's ATC in a SATC.
fn client_platform() -> Dmar {
    let lpc = PciPathEntry {
        device: 0x1f,
        function: 0,
    };
    let mut all = Drhd::include_all(0xfed9_1000, 0);
    all.scopes = vec![
        DeviceScope {
            kind: ScopeKind::IoApic,
            enumeration_id: 2,
            start_bus: 0xf0,
            path: vec![lpc],
        },
        DeviceScope {
            kind: ScopeKind::MsiCapableHpet,
            enumeration_id: 0,
            start_bus: 0,
            path: vec![lpc],
        },
    ];
    let gpu = DeviceScope::pci_endpoint(bdf(2, 0));
    Dmar {
        host_address_width: 39,
        flags: DmarFlags::INTR_REMAP | DmarFlags::DMA_CTRL_PLATFORM_OPT_IN,
        drhds: vec![Drhd::for_devices(0xfed9_0000, 0, &[bdf(2, 0)]), all],
        rmrrs: vec![Rmrr {
            segment: 0,
            base: 0x7b80_0000,
            limit: 0x7fff_ffff,
            scopes: vec![gpu.clone()],
        }],
        atsrs: vec![Atsr {
            flags: AtsrFlags::ALL_PORTS,
            segment: 0,
            scopes: vec![],
        }],
        satcs: vec![Satc {
            flags: SatcFlags::ATC_REQUIRED,
            segment: 0,
            scopes: vec![gpu],
        }],
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

#[test]
fn client_platform_table_golden_bytes() {
    let t = client_platform()
        .sdt(OEM_ID, OEM_TABLE_ID, 1)
        .unwrap()
        .as_slice()
        .to_vec();
    #[rustfmt::skip]
    let body: [u8; 124] = [
        // 8.1: Host Address Width 39 - 1, Flags INTR_REMAP |
        // DMA_CTRL_PLATFORM_OPT_IN, 10 reserved
        38, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        // 8.3 DRHD: type 0, length 24, flags 0, size 0, segment 0,
        // base 0xfed90000
        0, 0, 24, 0, 0, 0, 0, 0, 0x00, 0x00, 0xd9, 0xfe, 0, 0, 0, 0,
        //   8.3.1 scope: PCI endpoint, length 8, flags, reserved,
        //   enumeration ID 0, start bus 0, path 02.0
        1, 8, 0, 0, 0, 0, 2, 0,
        // DRHD: length 32, INCLUDE_PCI_ALL, base 0xfed91000
        0, 0, 32, 0, 1, 0, 0, 0, 0x00, 0x10, 0xd9, 0xfe, 0, 0, 0, 0,
        //   I/O APIC 2 on bus 0xf0 at 1f.0; HPET 0 on bus 0 at 1f.0
        3, 8, 0, 0, 2, 0xf0, 0x1f, 0,
        4, 8, 0, 0, 0, 0, 0x1f, 0,
        // 8.4 RMRR: type 1, length 32, reserved, segment 0,
        // base 0x7b800000, limit 0x7fffffff
        1, 0, 32, 0, 0, 0, 0, 0,
        0x00, 0x00, 0x80, 0x7b, 0, 0, 0, 0,
        0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0,
        1, 8, 0, 0, 0, 0, 2, 0,
        // 8.5 ATSR: type 2, length 8, ALL_PORTS, reserved, segment 0
        2, 0, 8, 0, 1, 0, 0, 0,
        // 8.8 SATC: type 5, length 16, ATC_REQUIRED, reserved, segment 0
        5, 0, 16, 0, 1, 0, 0, 0,
        1, 8, 0, 0, 0, 0, 2, 0,
    ];
    assert_eq!(t[36..], body);
    // The ACPI header: signature, length, revision 1 (8.1), checksum,
    // OEM ID, OEM table ID, OEM revision, creator ID and revision.
    assert_eq!(&t[0..4], b"DMAR");
    assert_eq!(u32_at(&t, 4), 160);
    assert_eq!(t[8], 1);
    assert_eq!(&t[10..16], b"VIOMMU");
    assert_eq!(&t[16..24], b"VIOMMUGT");
    assert_eq!(u32_at(&t, 24), 1);
    assert_eq!(&t[28..32], &acpi_tables::CREATOR_ID);
    assert_eq!(&t[32..36], &acpi_tables::CREATOR_REVISION);
}

#[test]
fn table_checksum_makes_every_byte_sum_to_zero() {
    for dmar in [client_platform(), harness_dmar()] {
        let sdt = dmar.sdt(OEM_ID, OEM_TABLE_ID, 7).unwrap();
        let t = sdt.as_slice();
        assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(u32_at(t, 4) as usize, t.len());
        assert_eq!(t[36..], dmar.body().unwrap());
    }
}

/// The real-guest harness's DMAR: one unit at the VT-d function's BAR,
/// without INCLUDE_PCI_ALL, naming the DMA test endpoint.
fn harness_dmar() -> Dmar {
    let mut dmar = Dmar::new(48);
    dmar.drhds
        .push(Drhd::for_devices(0xfebe_1000, 0, &[bdf(5, 0)]));
    dmar
}

#[test]
fn one_unit_one_endpoint_body_golden_bytes() {
    #[rustfmt::skip]
    let want = [
        47, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        // DRHD, 24 bytes, flags 0, size 0, segment 0, base
        0, 0, 24, 0, 0, 0, 0, 0, 0x00, 0x10, 0xbe, 0xfe, 0, 0, 0, 0,
        // PCI endpoint scope, 8 bytes, bus 0, path 05.0
        1, 8, 0, 0, 0, 0, 5, 0,
    ];
    assert_eq!(harness_dmar().body().unwrap(), want);
}

/// A device scope as Linux's `dmar_insert_dev_scope` reads it.
#[derive(Debug, PartialEq, Eq)]
struct LinuxScope {
    entry_type: u8,
    enumeration_id: u8,
    bus: u8,
    path: Vec<(u8, u8)>,
}

/// What Linux keeps of a table: `struct dmar_drhd_unit` (reg base, size,
/// include_all, segment, scopes), `struct dmar_rmrr_unit` (base, end),
/// ATSR `include_all`, SATC `atc_required`.
#[derive(Debug, Default, PartialEq, Eq)]
struct LinuxDmar {
    haw: u32,
    flags: u8,
    drhd: Vec<(u64, u64, bool, u16, Vec<LinuxScope>)>,
    rmrr: Vec<(u64, u64, Vec<LinuxScope>)>,
    atsr: Vec<(bool, u16)>,
    satc: Vec<(bool, u16, Vec<LinuxScope>)>,
}

/// `dmar_alloc_dev_scope` and `dmar_insert_dev_scope`: scopes from
/// `start` to the structure's end, each `length` long, its path the
/// (device, function) pairs after the 6-byte `acpi_dmar_device_scope`.
fn linux_scopes(s: &[u8], start: usize) -> Vec<LinuxScope> {
    let mut out = Vec::new();
    let mut off = start;
    while off < s.len() {
        let len = usize::from(s[off + 1]);
        let path = s[off + 6..off + len]
            .chunks(2)
            .map(|p| (p[0], p[1]))
            .collect();
        out.push(LinuxScope {
            entry_type: s[off],
            enumeration_id: s[off + 4],
            bus: s[off + 5],
            path,
        });
        off += len;
    }
    out
}

/// `parse_dmar_table` and `dmar_walk_remapping_entries`, on the offsets of
/// the ACPICA structures, with the kernel's own refusals.
fn linux_parse(t: &[u8]) -> LinuxDmar {
    // struct acpi_table_dmar: header (36), width, flags, reserved[10].
    let width = t[36];
    assert!(width >= 12 - 1, "Invalid DMAR haw");
    let mut d = LinuxDmar {
        haw: u32::from(width) + 1,
        flags: t[37],
        ..LinuxDmar::default()
    };
    let end = u32_at(t, 4) as usize;
    let mut off = 48;
    while off < end {
        let (kind, len) = (u16_at(t, off), usize::from(u16_at(t, off + 2)));
        assert_ne!(len, 0, "Invalid 0-length structure");
        assert!(off + len <= end, "Record passes table end");
        let s = &t[off..off + len];
        match kind {
            // dmar_parse_one_drhd: address, segment, 1 << (size + 12),
            // flags & 1, scopes after struct acpi_dmar_hardware_unit.
            0 => d.drhd.push((
                u64_at(s, 8),
                1 << (u32::from(s[5]) + 12),
                s[4] & 1 != 0,
                u16_at(s, 6),
                linux_scopes(s, 16),
            )),
            // dmar_parse_one_rmrr and rmrr_sanity_check.
            1 => {
                let (base, end) = (u64_at(s, 8), u64_at(s, 16));
                assert!(base % 4096 == 0 && (end + 1) % 4096 == 0 && end > base);
                d.rmrr.push((base, end, linux_scopes(s, 24)));
            }
            // dmar_parse_one_atsr: include_all = flags & 1.
            2 => d.atsr.push((s[4] & 1 != 0, u16_at(s, 6))),
            // dmar_parse_one_satc: atc_required = flags & 1.
            5 => d
                .satc
                .push((s[4] & 1 != 0, u16_at(s, 6), linux_scopes(s, 8))),
            other => panic!("unexpected structure type {other}"),
        }
        off += len;
    }
    d
}

#[test]
fn linux_reads_every_field_where_the_model_put_it() {
    let t = client_platform().sdt(OEM_ID, OEM_TABLE_ID, 1).unwrap();
    let d = linux_parse(t.as_slice());
    let scope = |entry_type, enumeration_id, bus, dev, func| LinuxScope {
        entry_type,
        enumeration_id,
        bus,
        path: vec![(dev, func)],
    };
    assert_eq!(d.haw, 39);
    // dmar_platform_optin() and the interrupt remapping check.
    assert_eq!(d.flags & 1, 1);
    assert_eq!(d.flags & 4, 4);
    assert_eq!(
        d.drhd,
        [
            (0xfed9_0000, 4096, false, 0, vec![scope(1, 0, 0, 2, 0)]),
            (
                0xfed9_1000,
                4096,
                true,
                0,
                vec![scope(3, 2, 0xf0, 0x1f, 0), scope(4, 0, 0, 0x1f, 0)]
            ),
        ]
    );
    assert_eq!(
        d.rmrr,
        [(0x7b80_0000, 0x7fff_ffff, vec![scope(1, 0, 0, 2, 0)])]
    );
    assert_eq!(d.atsr, [(true, 0)]);
    assert_eq!(d.satc, [(true, 0, vec![scope(1, 0, 0, 2, 0)])]);
}

#[test]
fn linux_reads_a_deep_path_and_a_larger_register_set() {
    // A device two bridges down: bus 0 00:1c.0 -> 01:00.0 -> 02:03.1.
    let mut d = Dmar::new(46);
    d.drhds.push(Drhd {
        size: 1,
        segment: 2,
        base: 0x1_0000_0000,
        scopes: vec![DeviceScope {
            kind: ScopeKind::PciEndpoint,
            enumeration_id: 0,
            start_bus: 0,
            path: [(0x1c, 0), (0, 0), (3, 1)]
                .map(|(device, function)| PciPathEntry { device, function })
                .to_vec(),
        }],
        ..Drhd::default()
    });
    let l = linux_parse(d.sdt(OEM_ID, OEM_TABLE_ID, 1).unwrap().as_slice());
    let (base, size, all, segment, scopes) = &l.drhd[0];
    assert_eq!(
        (*base, *size, *all, *segment),
        (0x1_0000_0000, 8192, false, 2)
    );
    assert_eq!(scopes[0].path, [(0x1c, 0), (0, 0), (3, 1)]);
}

#[test]
fn bad_tables_are_errors_not_bytes() {
    let with = |f: &dyn Fn(&mut Dmar)| {
        let mut d = harness_dmar();
        f(&mut d);
        d.body().unwrap_err()
    };
    assert_eq!(
        with(&|d| d.host_address_width = 11),
        DmarError::HostAddressWidth { bits: 11 }
    );
    assert_eq!(
        with(&|d| d.host_address_width = 65),
        DmarError::HostAddressWidth { bits: 65 }
    );
    assert_eq!(with(&|d| d.drhds.clear()), DmarError::NoUnit);
    assert!(matches!(
        with(&|d| d.drhds[0].size = 16),
        DmarError::RegisterSetSize { size: 16, .. }
    ));
    assert_eq!(
        with(&|d| d.drhds.insert(0, Drhd::include_all(0x1000, 0))),
        DmarError::IncludeAllNotLast {
            base: 0x1000,
            segment: 0
        }
    );
    // Another segment's unit may follow an INCLUDE_PCI_ALL unit.
    let mut d = harness_dmar();
    d.drhds.insert(0, Drhd::include_all(0x1000, 1));
    assert!(d.body().is_ok());
    for (base, limit) in [(0x800, 0x1fff), (0x1000, 0x1ffe), (0x2000, 0x1fff)] {
        assert_eq!(
            with(&|d| d.rmrrs.push(Rmrr {
                segment: 0,
                base,
                limit,
                scopes: vec![],
            })),
            DmarError::RmrrRange { base, limit }
        );
    }
    assert_eq!(
        with(&|d| d.drhds[0].scopes[0].path.clear()),
        DmarError::EmptyPath
    );
    assert_eq!(
        with(&|d| d.drhds[0].scopes[0].path = vec![
            PciPathEntry {
                device: 0,
                function: 0
            };
            125
        ]),
        DmarError::PathTooLong { len: 125 }
    );
    assert_eq!(
        with(&|d| d.drhds[0].scopes[0].path[0].device = 32),
        DmarError::PathEntry {
            device: 32,
            function: 0
        }
    );
    assert_eq!(
        with(&|d| d.drhds[0].scopes = vec![DeviceScope::pci_endpoint(bdf(1, 0)); 8192]),
        DmarError::StructureTooLong { len: 16 + 8 * 8192 }
    );
}

#[test]
fn longest_path_fits_its_length_byte() {
    let mut d = harness_dmar();
    d.drhds[0].scopes[0].path = vec![
        PciPathEntry {
            device: 1,
            function: 2
        };
        MAX_PATH_ENTRIES
    ];
    let b = d.body().unwrap();
    // The scope starts after the 12 fixed bytes and the DRHD's 16.
    assert_eq!(usize::from(b[28 + 1]), 6 + 2 * MAX_PATH_ENTRIES);
    assert_eq!(b.len(), 28 + 6 + 2 * MAX_PATH_ENTRIES);
}
