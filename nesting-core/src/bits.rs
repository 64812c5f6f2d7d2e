//! One typed accessor layer for register and wire-structure bit fields.
//!
//! A field is declared once, next to the spec section that defines it, with
//! [`bitfield!`](crate::bitfield): its bit range (numbered across the words of
//! the structure, as specs number them), the type its getter returns, and
//! the getter's and setter's names. From that one line come a [`Field`]
//! constant (word, low bit, width: for masks and reserved-bit checks), the
//! getter (which does the one narrowing conversion, checked at compile time
//! to fit the type) and the setter. Logic code reads and writes through
//! them and never shifts, masks or narrows by hand.
//!
//! The same macro serves single 64-bit registers (`struct Ccmd(u64)`) and
//! wire structures of several quadwords (a 128-bit invalidation descriptor
//! `[u64; 2]`, a 512-bit PASID table entry `[u64; 8]`).

/// A bit field of a register or wire structure: `width` bits from bit `lo`
/// of the structure's 64-bit word `word`.
///
/// [`get`](Field::get), [`set`](Field::set), [`mask`](Field::mask) and
/// [`is_set`](Field::is_set) work on the field's own word;
/// [`read`](Field::read) and [`write`](Field::write) pick the word out of
/// the whole structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Which 64-bit word of the structure holds the field (0 for a
    /// register).
    pub word: usize,
    /// Lowest bit of the field within its word.
    pub lo: u32,
    /// Number of bits (1..=64).
    pub width: u32,
}

impl Field {
    /// The field of bits `hi..=lo` of a 64-bit word, as specs write them.
    pub const fn bits(hi: u32, lo: u32) -> Field {
        assert!(hi >= lo && hi < 64);
        Field {
            word: 0,
            lo,
            width: hi - lo + 1,
        }
    }

    /// The one-bit field at bit `n`.
    pub const fn bit(n: u32) -> Field {
        Field::bits(n, n)
    }

    /// The field of bits `hi..=lo` of a structure of several 64-bit words,
    /// numbered across the words as specs number them (bit 64 is bit 0 of
    /// word 1). A field lies within one word.
    pub const fn span(hi: u32, lo: u32) -> Field {
        assert!(hi >= lo, "a field's high bit is at or above its low bit");
        assert!(hi / 64 == lo / 64, "a field lies within one 64-bit word");
        Field {
            word: (lo / 64) as usize,
            lo: lo % 64,
            width: hi - lo + 1,
        }
    }

    /// The field's mask, unshifted (`width` ones).
    pub const fn max(self) -> u64 {
        u64::MAX >> (64 - self.width)
    }

    /// The field's mask, in place in its word.
    pub const fn mask(self) -> u64 {
        self.max() << self.lo
    }

    /// Extracts the field from its word `raw`.
    pub const fn get(self, raw: u64) -> u64 {
        (raw >> self.lo) & self.max()
    }

    /// Whether the field is non-zero in its word `raw`.
    pub const fn is_set(self, raw: u64) -> bool {
        self.get(raw) != 0
    }

    /// The word `raw` with the field replaced by `val` (truncated to the
    /// field width).
    pub const fn set(self, raw: u64, val: u64) -> u64 {
        (raw & !self.mask()) | ((val & self.max()) << self.lo)
    }

    /// The field's value in the structure `w`.
    pub fn read<W: Words>(self, w: &W) -> u64 {
        self.get(w.word(self.word))
    }

    /// Replaces the field in the structure `w` by `val` (truncated to the
    /// field width).
    pub fn write<W: Words>(self, w: &mut W, val: u64) {
        w.set_word(self.word, self.set(w.word(self.word), val));
    }

    /// The masks of `fields`, one per word of an `N`-word structure (a
    /// structure's reserved bits, say). A field beyond the structure fails
    /// to compile when this is evaluated in a constant.
    pub const fn word_masks<const N: usize>(fields: &[Field]) -> [u64; N] {
        let mut out = [0u64; N];
        let mut i = 0;
        while i < fields.len() {
            let f = fields[i];
            assert!(f.word < N, "a field lies beyond the structure");
            out[f.word] |= f.mask();
            i += 1;
        }
        out
    }
}

/// The storage of a register or wire structure: one or more 64-bit words.
/// [`bitfield!`](crate::bitfield) implements it for the structures it
/// declares; a hand-written structure (two named quadwords, say) implements
/// it to get accessors with `bitfield! { impl Name; .. }`.
pub trait Words {
    /// Number of 64-bit words.
    const LEN: usize;
    /// Word `i`; 0 beyond the structure.
    fn word(&self, i: usize) -> u64;
    /// Replaces word `i`; ignored beyond the structure.
    fn set_word(&mut self, i: usize, v: u64);
    /// Whether any bit of `masks[i]` is set in word `i`, for any `i`.
    fn intersects(&self, masks: &[u64]) -> bool {
        masks.iter().enumerate().any(|(i, m)| self.word(i) & m != 0)
    }
}

impl Words for u64 {
    const LEN: usize = 1;
    fn word(&self, i: usize) -> u64 {
        if i == 0 { *self } else { 0 }
    }
    fn set_word(&mut self, i: usize, v: u64) {
        if i == 0 {
            *self = v;
        }
    }
}

impl<const N: usize> Words for [u64; N] {
    const LEN: usize = N;
    fn word(&self, i: usize) -> u64 {
        self.get(i).copied().unwrap_or(0)
    }
    fn set_word(&mut self, i: usize, v: u64) {
        if let Some(w) = self.get_mut(i) {
            *w = v;
        }
    }
}

/// A type a field getter returns and its setter takes.
///
/// Implemented for `bool` (one-bit flags), the unsigned integers, and
/// domain types such as [`Bdf`](crate::types::Bdf); a model implements it for
/// its own total decodings (an enum with an `Unknown(raw)` variant).
pub trait FieldValue: Sized {
    /// The widest field the type holds: declaring a wider field of this
    /// type fails to compile.
    const BITS: u32;
    /// The value of a field's raw bits (below `2^BITS` for every field
    /// [`bitfield!`](crate::bitfield) lets through).
    fn from_raw(raw: u64) -> Self;
    /// The value's raw bits (a setter truncates them to the field width).
    fn into_raw(self) -> u64;
}

impl FieldValue for bool {
    const BITS: u32 = 1;
    fn from_raw(raw: u64) -> Self {
        raw != 0
    }
    fn into_raw(self) -> u64 {
        u64::from(self)
    }
}

impl FieldValue for u64 {
    const BITS: u32 = u64::BITS;
    fn from_raw(raw: u64) -> Self {
        raw
    }
    fn into_raw(self) -> u64 {
        self
    }
}

/// The narrowing integer values. `from_raw` is the one narrowing cast of
/// the accessor layer: the field's width was checked against `BITS` at
/// compile time, so the cast never drops a set bit.
macro_rules! narrow_field_value {
    ($($t:ty),*) => {$(
        impl FieldValue for $t {
            const BITS: u32 = <$t>::BITS;
            #[allow(clippy::cast_possible_truncation)]
            fn from_raw(raw: u64) -> Self {
                raw as $t
            }
            fn into_raw(self) -> u64 {
                u64::from(self)
            }
        }
    )*};
}

narrow_field_value!(u8, u16, u32);

/// Declares a register or wire structure and, once per field, its
/// [`Field`] constant, typed getter and optional setter.
///
/// ```
/// use nesting_core::bitfield;
/// use nesting_core::types::Bdf;
///
/// bitfield! {
///     /// A 128-bit descriptor.
///     pub struct Desc([u64; 2]);
///     /// Domain-id.
///     DID [31:16]: u16 => did, with_did;
///     /// Source-id (a requester id).
///     SID [47:32]: Bdf => sid, with_sid;
///     /// Invalidation hint.
///     IH [70]: bool => ih;
///     /// Page address (returned in place).
///     ADDR [127:76]: address => addr, with_addr;
///     reserved [63:48], [75:71];
/// }
///
/// let d = Desc([0x0003_0102_0007_0000, 0x1234_5000 | 1 << 6]);
/// assert_eq!(d.did(), 7);
/// assert_eq!(d.sid(), Bdf(0x0102));
/// assert!(d.ih());
/// assert_eq!(d.addr(), 0x1234_5000);
/// assert!(d.reserved_set()); // bit 48
/// assert_eq!(Desc::DID.mask(), 0xffff_0000);
/// assert_eq!(Desc::RESERVED, [0xffff << 48, 0x1f << 71 - 64]);
/// assert_eq!(Desc::default().with_did(9).0, [9 << 16, 0]);
/// ```
///
/// Each field line is `NAME [hi:lo]: Type => getter, setter;` (the setter
/// is optional; `[n]` is a one-bit field):
///
/// - Bits are numbered across the structure's words as specs number them:
///   `[79:64]` is bits 15:0 of word 1. A field lies within one word.
/// - `Type` is anything implementing [`FieldValue`]: `bool`, `u8` to `u64`,
///   [`Bdf`](crate::types::Bdf), a model's enum. A field wider than the
///   type fails to compile; the getter narrows once, here, never at its
///   callers.
/// - `address` instead of a type: an address field (`ADDR[63:12]`); the
///   getter returns the address in place (`word & mask`), the setter takes
///   an address and keeps the field's bits of it.
/// - `NAME (PATH): ..` instead of a bit range declares the field through an
///   existing [`Field`] constant (a bit every entry of a family shares).
/// - A last line `reserved [..], [..];` declares the reserved bits: the
///   constant `RESERVED` (one mask per word) and `reserved_set()`.
///
/// Forms:
///
/// - `pub struct Name(u64);` or `pub struct Name([u64; N]);` declares the
///   structure; the constants are associated (`Name::DID`).
/// - `pub struct Name(u64) in mod;` puts the constants in the enclosing
///   module instead (`ccmd::DID`), the way register modules name them.
/// - `impl Name(field: [u64; N]);` adds accessors to an existing struct
///   whose words are its field `field`; `impl Name;` to an existing struct
///   implementing [`Words`].
///
/// A field wider than its type does not compile:
///
/// ```compile_fail,E0080
/// nesting_core::bitfield! {
///     /// A register.
///     pub struct Reg(u64);
///     /// Nine bits do not fit a `u8`.
///     WIDE [8:0]: u8 => wide;
/// }
/// ```
#[macro_export]
macro_rules! bitfield {
    // -- declaring forms --------------------------------------------------
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident($repr:ty) in mod;
        $($body:tt)*
    ) => {
        $crate::bitfield!(@struct $(#[$meta])* $vis $name $repr);
        $crate::bitfield!(@fields mod $name; $($body)*);
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident($repr:ty);
        $($body:tt)*
    ) => {
        $crate::bitfield!(@struct $(#[$meta])* $vis $name $repr);
        $crate::bitfield!(@fields assoc $name; $($body)*);
    };
    (impl $name:ident($field:ident: $repr:ty); $($body:tt)*) => {
        impl $crate::bits::Words for $name {
            const LEN: usize = <$repr as $crate::bits::Words>::LEN;
            fn word(&self, i: usize) -> u64 {
                $crate::bits::Words::word(&self.$field, i)
            }
            fn set_word(&mut self, i: usize, v: u64) {
                $crate::bits::Words::set_word(&mut self.$field, i, v)
            }
        }
        $crate::bitfield!(@fields assoc $name; $($body)*);
    };
    (impl $name:ident; $($body:tt)*) => {
        $crate::bitfield!(@fields assoc $name; $($body)*);
    };

    // -- internal rules ---------------------------------------------------
    (@struct $(#[$meta:meta])* $vis:vis $name:ident $repr:ty) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        $vis struct $name(pub $repr);

        impl $crate::bits::Words for $name {
            const LEN: usize = <$repr as $crate::bits::Words>::LEN;
            fn word(&self, i: usize) -> u64 {
                $crate::bits::Words::word(&self.0, i)
            }
            fn set_word(&mut self, i: usize, v: u64) {
                $crate::bits::Words::set_word(&mut self.0, i, v)
            }
        }
    };

    // A field's position: a bit range, one bit, or an existing constant.
    (@at [$hi:literal : $lo:literal]) => {
        $crate::bits::Field::span($hi, $lo)
    };
    (@at [$bit:literal]) => {
        $crate::bits::Field::span($bit, $bit)
    };
    (@at ($field:path)) => {
        $field
    };

    // Where a field constant lives: on the struct, or in the module.
    (@const assoc $name:ident $(#[$doc:meta])* $f:ident $at:tt) => {
        impl $name {
            $(#[$doc])*
            pub const $f: $crate::bits::Field = $crate::bitfield!(@at $at);
        }
    };
    (@const mod $name:ident $(#[$doc:meta])* $f:ident $at:tt) => {
        $(#[$doc])*
        pub const $f: $crate::bits::Field = $crate::bitfield!(@at $at);
    };
    (@path assoc $name:ident $f:ident) => {
        $name::$f
    };
    (@path mod $name:ident $f:ident) => {
        $f
    };

    // Compile-time checks: the field fits its type and its structure.
    (@check $mode:ident $name:ident $f:ident $t:ty) => {
        const _: () = {
            let f = $crate::bitfield!(@path $mode $name $f);
            assert!(
                f.width <= <$t as $crate::bits::FieldValue>::BITS,
                concat!(stringify!($name), "::", stringify!($f), " is wider than its type")
            );
            assert!(
                f.word < <$name as $crate::bits::Words>::LEN,
                concat!(stringify!($name), "::", stringify!($f), " lies beyond the structure")
            );
        };
    };

    (@fields $mode:ident $name:ident;) => {};
    (@fields $mode:ident $name:ident; $(#[$doc:meta])* reserved $($at:tt),+ $(,)?;) => {
        impl $name {
            /// Reserved bits, one mask per 64-bit word.
            $(#[$doc])*
            pub const RESERVED: [u64; <$name as $crate::bits::Words>::LEN] =
                $crate::bits::Field::word_masks(&[$($crate::bitfield!(@at $at)),+]);

            /// Whether any reserved bit is set.
            pub fn reserved_set(&self) -> bool {
                $crate::bits::Words::intersects(self, &Self::RESERVED)
            }
        }
    };
    (@fields $mode:ident $name:ident;
        $(#[$doc:meta])* $f:ident $at:tt : address => $get:ident $(, $set:ident)?;
        $($rest:tt)*
    ) => {
        $crate::bitfield!(@const $mode $name $(#[$doc])* $f $at);
        impl $name {
            $(#[$doc])*
            ///
            /// The address in place: the field's bits, every other bit clear.
            pub fn $get(&self) -> u64 {
                let f = $crate::bitfield!(@path $mode $name $f);
                f.read(self) << f.lo
            }
            $(
                #[doc = concat!("A copy with the ", stringify!($f),
                    " address field set to the field's bits of `addr`.")]
                #[must_use]
                pub fn $set(mut self, addr: u64) -> Self {
                    let f = $crate::bitfield!(@path $mode $name $f);
                    f.write(&mut self, addr >> f.lo);
                    self
                }
            )?
        }
        $crate::bitfield!(@check $mode $name $f u64);
        $crate::bitfield!(@fields $mode $name; $($rest)*);
    };
    (@fields $mode:ident $name:ident;
        $(#[$doc:meta])* $f:ident $at:tt : $t:ty => $get:ident $(, $set:ident)?;
        $($rest:tt)*
    ) => {
        $crate::bitfield!(@const $mode $name $(#[$doc])* $f $at);
        impl $name {
            $(#[$doc])*
            pub fn $get(&self) -> $t {
                let f = $crate::bitfield!(@path $mode $name $f);
                <$t as $crate::bits::FieldValue>::from_raw(f.read(self))
            }
            $(
                #[doc = concat!("A copy with the ", stringify!($f),
                    " field set to `v` (truncated to the field width).")]
                #[must_use]
                pub fn $set(mut self, v: $t) -> Self {
                    let f = $crate::bitfield!(@path $mode $name $f);
                    f.write(&mut self, <$t as $crate::bits::FieldValue>::into_raw(v));
                    self
                }
            )?
        }
        $crate::bitfield!(@check $mode $name $f $t);
        $crate::bitfield!(@fields $mode $name; $($rest)*);
    };
}

/// Declares a `u64`-backed register newtype with `get`, `has` and `with`
/// through [`Field`] constants.
#[macro_export]
macro_rules! field_register {
    ($(#[$doc:meta])* $vis:vis struct $name:ident;) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        $vis struct $name(pub u64);

        impl $name {
            /// Value of a field.
            pub const fn get(self, f: $crate::bits::Field) -> u64 {
                f.get(self.0)
            }
            /// Whether a field is non-zero.
            pub const fn has(self, f: $crate::bits::Field) -> bool {
                f.is_set(self.0)
            }
            /// A copy with the field set to `val`.
            #[must_use]
            pub const fn with(self, f: $crate::bits::Field, val: u64) -> Self {
                Self(f.set(self.0, val))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Bdf;

    #[test]
    fn field_get_set_roundtrip() {
        let f = Field::bits(13, 8);
        let raw = f.set(0xffff_ffff_ffff_ffff, 0x15);
        assert_eq!(f.get(raw), 0x15);
        assert_eq!(raw | f.mask(), u64::MAX);
    }

    #[test]
    fn field_full_width_does_not_overflow() {
        let f = Field::bits(63, 0);
        assert_eq!(f.max(), u64::MAX);
        assert_eq!(f.get(0x1234), 0x1234);
        assert_eq!(Field::bit(63).mask(), 1 << 63);
    }

    #[test]
    fn field_set_truncates_to_width() {
        let f = Field::bits(3, 2);
        assert_eq!(f.set(0, 0xff), 0b1100);
    }

    #[test]
    fn field_span_numbers_bits_across_words() {
        let f = Field::span(87, 72);
        assert_eq!((f.word, f.lo, f.width), (1, 8, 16));
        assert_eq!(Field::span(511, 448).word, 7);
        assert_eq!(Field::span(63, 0), Field::bits(63, 0));
    }

    #[test]
    fn word_masks_collects_fields_per_word() {
        let m: [u64; 3] =
            Field::word_masks(&[Field::span(3, 0), Field::span(8, 8), Field::span(191, 128)]);
        assert_eq!(m, [0x10f, 0, u64::MAX]);
    }

    crate::bitfield! {
        /// A 512-bit structure with a field in every word.
        struct Wide([u64; 8]);
        /// Word 0: a flag.
        FLAG [0]: bool => flag, with_flag;
        /// Word 0: a byte.
        BYTE [15:8]: u8 => byte, with_byte;
        /// Word 1: a requester id.
        RID [79:64]: Bdf => rid, with_rid;
        /// Word 2: twenty bits.
        TWENTY [147:128]: u32 => twenty, with_twenty;
        /// Word 3: the whole word.
        FULL [255:192]: u64 => full, with_full;
        /// Word 4: an address, bits 51:12.
        ADDR [307:268]: address => addr, with_addr;
        /// Word 5: sixteen bits.
        HALF [335:320]: u16 => half, with_half;
        /// Word 6: a getter without a setter.
        RO [389:388]: u8 => ro;
        /// Word 7: the top bit.
        TOP [511]: bool => top, with_top;
        reserved [7:1], [63:16], [447:384], [510:448];
    }

    #[test]
    fn bitfield_getters_golden_values() {
        let w = Wide([
            0x0000_0000_0000_a501,
            0x0000_0000_0000_3a0f,
            0xffff_ffff_fff1_2345,
            0xdead_beef_0123_4567,
            0xfff0_0001_2345_6fff,
            0x0000_0000_0000_beef,
            0x0000_0000_0000_0030,
            0x8000_0000_0000_0000,
        ]);
        assert!(w.flag());
        assert_eq!(w.byte(), 0xa5);
        assert_eq!(w.rid(), Bdf(0x3a0f));
        assert_eq!(w.twenty(), 0x1_2345);
        assert_eq!(w.full(), 0xdead_beef_0123_4567);
        assert_eq!(w.addr(), 0x0000_0001_2345_6000);
        assert_eq!(w.half(), 0xbeef);
        assert_eq!(w.ro(), 3);
        assert!(w.top());
    }

    #[test]
    fn bitfield_constants_carry_word_and_bits() {
        assert_eq!(Wide::RID, Field::span(79, 64));
        assert_eq!((Wide::RID.word, Wide::RID.lo), (1, 0));
        assert_eq!((Wide::TOP.word, Wide::TOP.lo), (7, 63));
        assert_eq!(Wide::ADDR.mask(), 0x000f_ffff_ffff_f000);
        assert_eq!(Wide::FULL.mask(), u64::MAX);
    }

    #[test]
    fn bitfield_setters_truncate_to_width() {
        let w = Wide::default()
            .with_byte(0xff)
            .with_twenty(0xfff_ffff)
            .with_half(0xffff)
            .with_addr(u64::MAX)
            .with_rid(Bdf(0xffff));
        assert_eq!(w.0[0], 0xff00);
        assert_eq!(w.0[1], 0xffff);
        assert_eq!(w.0[2], 0xf_ffff);
        assert_eq!(w.0[4], 0x000f_ffff_ffff_f000);
        assert_eq!(w.0[5], 0xffff);
        assert_eq!(w.twenty(), 0xf_ffff);
    }

    #[test]
    fn bitfield_setters_keep_other_bits() {
        let w = Wide([u64::MAX; 8])
            .with_byte(0)
            .with_flag(false)
            .with_full(0);
        assert_eq!(w.0[0], !0xff01);
        assert_eq!(w.0[3], 0);
        assert_eq!(w.0[7], u64::MAX);
        let w = Wide::default().with_top(true).with_flag(true);
        assert_eq!((w.0[0], w.0[7]), (1, 1 << 63));
    }

    #[test]
    fn bitfield_full_width_roundtrips() {
        let w = Wide::default().with_full(u64::MAX);
        assert_eq!(w.full(), u64::MAX);
        assert_eq!(w.0[3], u64::MAX);
    }

    #[test]
    fn bitfield_reserved_masks_per_word() {
        assert_eq!(
            Wide::RESERVED,
            [
                0xffff_ffff_ffff_00fe,
                0,
                0,
                0,
                0,
                0,
                u64::MAX,
                u64::MAX >> 1
            ]
        );
        assert!(!Wide::default().with_top(true).with_byte(7).reserved_set());
        assert!(Wide([0, 0, 0, 0, 0, 0, 1 << 63, 0]).reserved_set());
        assert!(Wide([2, 0, 0, 0, 0, 0, 0, 0]).reserved_set());
    }

    mod reg {
        crate::bitfield! {
            /// A register whose field constants are module items.
            pub struct Reg(u64) in mod;
            /// Enable.
            EN [31]: bool => en, with_en;
            /// A count.
            COUNT [6:4]: u8 => count, with_count;
            /// Through an existing constant.
            LOW (super::LOW): u8 => low;
        }
    }

    const LOW: Field = Field::bits(3, 0);

    #[test]
    fn bitfield_register_in_mod_names_module_constants() {
        assert_eq!(reg::EN, Field::bit(31));
        assert_eq!(reg::COUNT.mask(), 0x70);
        let r = reg::Reg(0x8000_0035);
        assert!(r.en());
        assert_eq!((r.count(), r.low()), (3, 5));
        assert_eq!(reg::Reg(0).with_count(9).with_en(true).0, 0x8000_0010);
    }

    struct Pair {
        lo: u64,
        hi: u64,
    }

    impl Words for Pair {
        const LEN: usize = 2;
        fn word(&self, i: usize) -> u64 {
            match i {
                0 => self.lo,
                1 => self.hi,
                _ => 0,
            }
        }
        fn set_word(&mut self, i: usize, v: u64) {
            match i {
                0 => self.lo = v,
                1 => self.hi = v,
                _ => {}
            }
        }
    }

    crate::bitfield! {
        impl Pair;
        /// In the high word.
        HI_BYTE [71:64]: u8 => hi_byte, with_hi_byte;
    }

    struct Named {
        q: [u64; 2],
    }

    crate::bitfield! {
        impl Named(q: [u64; 2]);
        /// In the high word.
        TOP [127:120]: u8 => top;
    }

    #[test]
    fn bitfield_on_existing_structs() {
        let p = Pair { lo: 0, hi: 0x1ab }.with_hi_byte(0xcd);
        assert_eq!((p.lo, p.hi, p.hi_byte()), (0, 0x1cd, 0xcd));
        assert_eq!(Named { q: [0, 0xfe << 56] }.top(), 0xfe);
    }
}
