//! One typed accessor layer for register and descriptor bit fields.
//!
//! A field is declared once as a [`Field`] constant (low bit and width) next
//! to the spec section that defines it; logic code reads and writes through
//! it and never shifts and masks by hand.

/// A bit field inside a 64-bit word: `width` bits starting at bit `lo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Lowest bit of the field.
    pub lo: u32,
    /// Number of bits (1..=64).
    pub width: u32,
}

impl Field {
    /// The field of bits `hi..=lo`, as specs write them.
    pub const fn bits(hi: u32, lo: u32) -> Field {
        assert!(hi >= lo && hi < 64);
        Field {
            lo,
            width: hi - lo + 1,
        }
    }

    /// The one-bit field at bit `n`.
    pub const fn bit(n: u32) -> Field {
        Field::bits(n, n)
    }

    /// The field's mask, unshifted (`width` ones).
    pub const fn max(self) -> u64 {
        u64::MAX >> (64 - self.width)
    }

    /// The field's mask, in place.
    pub const fn mask(self) -> u64 {
        self.max() << self.lo
    }

    /// Extracts the field from `raw`.
    pub const fn get(self, raw: u64) -> u64 {
        (raw >> self.lo) & self.max()
    }

    /// Whether the field is non-zero in `raw`.
    pub const fn is_set(self, raw: u64) -> bool {
        self.get(raw) != 0
    }

    /// `raw` with the field replaced by `val` (truncated to the field width).
    pub const fn set(self, raw: u64, val: u64) -> u64 {
        (raw & !self.mask()) | ((val & self.max()) << self.lo)
    }
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
}
