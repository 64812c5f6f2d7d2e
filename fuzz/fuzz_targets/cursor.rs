//! Shared by the sequence targets: reads an input as a stream of small
//! decisions, ending the sequence when the input does.
#![allow(dead_code)]

/// The unread part of an input.
pub struct Cursor<'a>(pub &'a [u8]);

impl Cursor<'_> {
    pub fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from(self.u16()?) | (u32::from(self.u16()?) << 16))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from(self.u32()?) | (u64::from(self.u32()?) << 32))
    }
    /// One of `n` choices.
    pub fn pick(&mut self, n: usize) -> Option<usize> {
        Some(usize::from(self.u8()?) % n)
    }
    pub fn bool(&mut self) -> Option<bool> {
        Some(self.u8()? & 1 == 1)
    }
}
