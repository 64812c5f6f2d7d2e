//! `key=value` model options, as the `model` directive of `REPLAY.md` and a
//! VMM's command line write them: the parsing every model shares. Each
//! model crate owns its keys, defaults and rules ([`ModelOptions`]); this
//! module knows none of them.

use thiserror::Error;

use crate::types::parse_u64;

/// A model configuration could not be built from its options.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionError {
    /// A token is not of the form `key=value`.
    #[error("option {token:?} is not key=value")]
    NotKeyValue {
        /// The token.
        token: String,
    },
    /// The key is not an option of this model.
    #[error("unknown {model} option {key:?}")]
    UnknownKey {
        /// The model.
        model: &'static str,
        /// The key as written.
        key: String,
    },
    /// A key that is not repeatable was given twice.
    #[error("option {key} given more than once")]
    Duplicate {
        /// The key.
        key: &'static str,
    },
    /// The value does not parse as the key's type.
    #[error("bad value {value:?} for {key}: expected {expected}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What the key takes.
        expected: &'static str,
    },
    /// A number parsed but lies outside what the architecture allows.
    #[error("{key}={value} is out of range (at most {max})")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The value.
        value: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// Two options cannot hold together.
    #[error("{key}={value} contradicts {other}: {why}")]
    Contradiction {
        /// The key found to conflict.
        key: &'static str,
        /// Its value.
        value: String,
        /// The other key(s) and value(s) it conflicts with.
        other: &'static str,
        /// Why, with the spec section.
        why: &'static str,
    },
    /// A value the key's type admits but the model cannot present (a
    /// register block that overlaps others, say).
    #[error("{key}={value}: {why}")]
    Unpresentable {
        /// The key.
        key: &'static str,
        /// The value as the model prints it.
        value: String,
        /// What is wrong, with the spec section.
        why: &'static str,
    },
}

/// A model's options: its keys in `REPLAY.md` order, parsing and printing.
pub trait ModelOptions: Sized {
    /// The model name as scripts write it.
    const MODEL: &'static str;
    /// Keys in `REPLAY.md` order.
    const KEYS: &'static [&'static str];

    /// Parses `key=value` tokens; keys left out take their defaults.
    fn from_options(tokens: &[&str]) -> Result<Self, OptionError>;

    /// Every key with its value, in `REPLAY.md` order (a repeatable key
    /// once per value). Joined as `key=value` tokens they parse back to
    /// `self`.
    fn options(&self) -> Vec<(String, String)>;

    /// `NAME KEY=VALUE ...`: the `model` directive's arguments.
    fn directive(&self) -> String {
        let mut out = Self::MODEL.to_string();
        for (k, v) in self.options() {
            out += &format!(" {k}={v}");
        }
        out
    }
}

/// Options split into `(key, value)` pairs whose keys are known to a
/// model and not repeated unless repeatable.
#[derive(Clone, Debug)]
pub struct Pairs<'a> {
    pairs: Vec<(&'static str, &'a str)>,
}

impl<'a> Pairs<'a> {
    /// Splits `tokens` for `model`, whose keys are `keys` (`repeatable`
    /// ones may appear more than once).
    pub fn parse(
        model: &'static str,
        keys: &[&'static str],
        repeatable: &[&str],
        tokens: &[&'a str],
    ) -> Result<Pairs<'a>, OptionError> {
        let mut pairs: Vec<(&'static str, &'a str)> = Vec::with_capacity(tokens.len());
        for tok in tokens {
            let (k, v) = tok
                .split_once('=')
                .ok_or_else(|| OptionError::NotKeyValue {
                    token: (*tok).to_string(),
                })?;
            let key = keys
                .iter()
                .copied()
                .find(|known| *known == k)
                .ok_or_else(|| OptionError::UnknownKey {
                    model,
                    key: k.to_string(),
                })?;
            if pairs.iter().any(|(seen, _)| *seen == key) && !repeatable.contains(&key) {
                return Err(OptionError::Duplicate { key });
            }
            pairs.push((key, v));
        }
        Ok(Pairs { pairs })
    }

    /// The (first) value of `key`.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// The pairs in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &'a str)> + '_ {
        self.pairs.iter().copied()
    }
}

/// [`OptionError::BadValue`].
pub fn bad(key: &'static str, value: &str, expected: &'static str) -> OptionError {
    OptionError::BadValue {
        key,
        value: value.to_string(),
        expected,
    }
}

/// [`OptionError::Contradiction`].
pub fn contradiction(
    key: &'static str,
    value: impl ToString,
    other: &'static str,
    why: &'static str,
) -> OptionError {
    OptionError::Contradiction {
        key,
        value: value.to_string(),
        other,
        why,
    }
}

/// `0` or `1`.
pub fn parse_bool(key: &'static str, v: &str) -> Result<bool, OptionError> {
    match v {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(bad(key, v, "0 or 1")),
    }
}

/// A number ([`parse_u64`]).
pub fn parse_num(key: &'static str, v: &str) -> Result<u64, OptionError> {
    parse_u64(v).ok_or_else(|| bad(key, v, "a number (decimal or 0x hex)"))
}

/// A number at most `max`.
pub fn parse_max(key: &'static str, v: &str, max: u64) -> Result<u64, OptionError> {
    let n = parse_num(key, v)?;
    if n > max {
        return Err(OptionError::OutOfRange { key, value: n, max });
    }
    Ok(n)
}

/// A number at most `max` that fits `T` (`u8`, `u16`, `u32`).
pub fn parse_small<T: TryFrom<u64>>(
    key: &'static str,
    v: &str,
    max: u64,
) -> Result<T, OptionError> {
    let n = parse_max(key, v, max)?;
    T::try_from(n).map_err(|_| OptionError::OutOfRange { key, value: n, max })
}

/// `START-END`, inclusive, `END >= START`.
pub fn parse_range(key: &'static str, v: &str) -> Result<(u64, u64), OptionError> {
    let (a, b) = v.split_once('-').ok_or_else(|| bad(key, v, "START-END"))?;
    let (a, b) = parse_u64(a)
        .zip(parse_u64(b))
        .ok_or_else(|| bad(key, v, "START-END with numbers"))?;
    if b < a {
        return Err(bad(key, v, "START-END with END >= START"));
    }
    Ok((a, b))
}

/// A boolean as options print it: `0` or `1`.
pub fn flag(b: bool) -> String {
    u8::from(b).to_string()
}

/// One `(key, value)` of [`ModelOptions::options`].
pub fn kv(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &["a", "b", "r"];

    #[test]
    fn pairs_unknown_key_names_model_and_key() {
        let e = Pairs::parse("m", KEYS, &[], &["zz=1"]).unwrap_err();
        assert_eq!(
            e,
            OptionError::UnknownKey {
                model: "m",
                key: "zz".into()
            }
        );
    }

    #[test]
    fn pairs_repeat_refused_unless_repeatable() {
        assert_eq!(
            Pairs::parse("m", KEYS, &[], &["a=1", "a=2"]).unwrap_err(),
            OptionError::Duplicate { key: "a" }
        );
        let p = Pairs::parse("m", KEYS, &["r"], &["r=1", "r=2", "b=3"]).unwrap();
        assert_eq!(
            p.iter().collect::<Vec<_>>(),
            [("r", "1"), ("r", "2"), ("b", "3")]
        );
        assert_eq!(p.get("r"), Some("1"));
        assert_eq!(p.get("a"), None);
    }

    #[test]
    fn pairs_token_without_equals_is_error() {
        assert_eq!(
            Pairs::parse("m", KEYS, &[], &["a"]).unwrap_err(),
            OptionError::NotKeyValue { token: "a".into() }
        );
    }

    #[test]
    fn numbers_fit_the_field_type() {
        assert_eq!(parse_small::<u8>("k", "255", 255), Ok(255));
        assert!(matches!(
            parse_small::<u8>("k", "256", 255),
            Err(OptionError::OutOfRange { value: 256, .. })
        ));
        // A limit beyond the type still refuses what does not fit it.
        assert!(matches!(
            parse_small::<u8>("k", "256", 1000),
            Err(OptionError::OutOfRange {
                value: 256,
                max: 1000,
                ..
            })
        ));
    }

    #[test]
    fn range_must_not_be_inverted() {
        assert_eq!(parse_range("k", "0x10-0x20"), Ok((0x10, 0x20)));
        assert!(parse_range("k", "0x20-0x10").is_err());
        assert!(parse_range("k", "0x20").is_err());
    }
}
