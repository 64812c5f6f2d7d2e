//! Register files declared as data: each register has an offset, a width,
//! a reset value, a writable mask and a write-1-to-clear mask. Used for the
//! PCI configuration space and for the endpoint's BAR registers.
//!
//! Accesses are decoded byte by byte, so every offset and length a client
//! can send is total: bytes no register covers read as zero and ignore
//! writes, as PCI requires of reserved configuration space (PCI Local Bus
//! 3.0, 6.1: "read accesses to reserved or unimplemented registers must be
//! completed normally and a data value of 0 returned").

use std::borrow::Cow;

use thiserror::Error;

/// One register of a [`RegFile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegSpec {
    /// Name, for logs.
    pub name: &'static str,
    /// Byte offset in the file.
    pub offset: u32,
    /// Width in bytes: 1, 2 or 4.
    pub width: u8,
    /// Value after reset.
    pub reset: u32,
    /// Bits a write changes.
    pub writable: u32,
    /// Bits a write of 1 clears.
    pub w1c: u32,
}

impl RegSpec {
    /// A read-only register.
    pub const fn ro(name: &'static str, offset: u32, width: u8, reset: u32) -> Self {
        RegSpec {
            name,
            offset,
            width,
            reset,
            writable: 0,
            w1c: 0,
        }
    }

    /// A register whose `writable` bits a write sets.
    pub const fn rw(name: &'static str, offset: u32, width: u8, reset: u32, writable: u32) -> Self {
        RegSpec {
            name,
            offset,
            width,
            reset,
            writable,
            w1c: 0,
        }
    }

    fn covers(&self, off: u32) -> bool {
        off >= self.offset && off - self.offset < u32::from(self.width)
    }
}

/// Errors of a register file access.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RegFileError {
    /// The access reaches past the end of the file.
    #[error("access of {len} bytes at {offset:#x} is outside the {size:#x}-byte register file")]
    OutOfRange {
        /// First byte.
        offset: u64,
        /// Length.
        len: usize,
        /// Size of the file.
        size: u32,
    },
}

/// A register file: the specs and the current values.
#[derive(Clone, Debug)]
pub struct RegFile {
    specs: Cow<'static, [RegSpec]>,
    values: Vec<u32>,
    size: u32,
}

impl RegFile {
    /// A file of `size` bytes holding `specs`, at reset.
    pub fn new(specs: impl Into<Cow<'static, [RegSpec]>>, size: u32) -> Self {
        let specs = specs.into();
        let values = specs.iter().map(|s| s.reset).collect();
        RegFile {
            specs,
            values,
            size,
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Puts every register back to its reset value.
    pub fn reset(&mut self) {
        for (v, s) in self.values.iter_mut().zip(self.specs.iter()) {
            *v = s.reset;
        }
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    fn index_at(&self, off: u32) -> Option<usize> {
        self.specs.iter().position(|s| s.covers(off))
    }

    /// The value of the register called `name` (0 if there is none).
    pub fn get(&self, name: &str) -> u32 {
        self.index_of(name)
            .and_then(|i| self.values.get(i).copied())
            .unwrap_or(0)
    }

    /// Sets the register called `name`, bypassing its masks (device side).
    pub fn set(&mut self, name: &str, value: u32) {
        if let Some(v) = self.index_of(name).and_then(|i| self.values.get_mut(i)) {
            *v = value;
        }
    }

    fn check(&self, offset: u64, len: usize) -> Result<u32, RegFileError> {
        let end = offset.checked_add(len as u64);
        match (u32::try_from(offset), end) {
            (Ok(off), Some(end)) if end <= u64::from(self.size) => Ok(off),
            _ => Err(RegFileError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Reads `data.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), RegFileError> {
        let base = self.check(offset, data.len())?;
        for (off, byte) in (base..).zip(data.iter_mut()) {
            *byte = match self.index_at(off) {
                Some(i) => {
                    let shift = (off - self.specs[i].offset) * 8;
                    (self.values[i] >> shift) as u8
                }
                None => 0,
            };
        }
        Ok(())
    }

    /// Writes `data` at `offset`, honouring each register's masks. Returns
    /// the names of the registers the write touched, in offset order,
    /// without repeats, so the device can act on them.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<Vec<&'static str>, RegFileError> {
        let base = self.check(offset, data.len())?;
        let mut touched = Vec::new();
        for (off, byte) in (base..).zip(data.iter()) {
            let Some(i) = self.index_at(off) else {
                continue;
            };
            let spec = self.specs[i];
            let shift = (off - spec.offset) * 8;
            let lane = 0xffu32 << shift;
            let value = u32::from(*byte) << shift;
            let old = self.values[i];
            let set = (old & !(spec.writable & lane)) | (value & spec.writable & lane);
            self.values[i] = set & !(value & spec.w1c & lane);
            if touched.last() != Some(&spec.name) {
                touched.push(spec.name);
            }
        }
        Ok(touched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SPECS: &[RegSpec] = &[
        RegSpec::ro("ID", 0x0, 4, 0x1234_5678),
        RegSpec::rw("CTRL", 0x4, 2, 0x0001, 0x00f0),
        RegSpec {
            name: "STS",
            offset: 0x8,
            width: 4,
            reset: 0x0000_0003,
            writable: 0,
            w1c: 0x0000_0001,
        },
    ];

    #[test]
    fn read_dword_little_endian_returns_reset() {
        let f = RegFile::new(SPECS, 0x10);
        let mut b = [0u8; 4];
        f.read(0, &mut b).unwrap();
        assert_eq!(b, [0x78, 0x56, 0x34, 0x12]);
    }

    #[test]
    fn read_unimplemented_bytes_returns_zero() {
        let f = RegFile::new(SPECS, 0x10);
        let mut b = [0xffu8; 4];
        f.read(0xc, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn write_read_only_register_is_ignored() {
        let mut f = RegFile::new(SPECS, 0x10);
        f.write(0, &[0, 0, 0, 0]).unwrap();
        assert_eq!(f.get("ID"), 0x1234_5678);
    }

    #[test]
    fn write_honours_writable_mask() {
        let mut f = RegFile::new(SPECS, 0x10);
        let touched = f.write(4, &[0xff, 0xff]).unwrap();
        assert_eq!(f.get("CTRL"), 0x00f1);
        assert_eq!(touched, vec!["CTRL"]);
    }

    #[test]
    fn write_one_clears_w1c_bits_only() {
        let mut f = RegFile::new(SPECS, 0x10);
        f.write(8, &[0x03, 0, 0, 0]).unwrap();
        assert_eq!(f.get("STS"), 0x2);
    }

    #[test]
    fn write_spanning_registers_touches_each_once() {
        let mut f = RegFile::new(SPECS, 0x10);
        let touched = f.write(0, &[0u8; 12]).unwrap();
        assert_eq!(touched, vec!["ID", "CTRL", "STS"]);
    }

    #[test]
    fn access_past_end_is_error() {
        let f = RegFile::new(SPECS, 0x10);
        let mut b = [0u8; 4];
        assert!(matches!(
            f.read(0xe, &mut b),
            Err(RegFileError::OutOfRange { .. })
        ));
        assert!(f.read(u64::MAX, &mut b).is_err());
    }

    #[test]
    fn reset_restores_values() {
        let mut f = RegFile::new(SPECS, 0x10);
        f.set("CTRL", 0xffff);
        f.reset();
        assert_eq!(f.get("CTRL"), 0x0001);
    }
}
