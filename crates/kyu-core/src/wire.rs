//! Reading whole numbers from JSON the way clients write them.
//!
//! JSON has one number type, and many clients write a whole number with a
//! fraction of zero: Python's `json.dumps(1.5 * 1000)` sends `1500.0`, and
//! JSON Schema counts `1500.0` as an integer too. kyu's integer fields take
//! such numbers; a real fraction (`1500.5`) or a number out of the field's
//! range is refused with a message saying so.
//!
//! Use with `#[serde(deserialize_with = "wire::i64")]`, or the `opt_` forms
//! (with `#[serde(default)]`) for optional fields.

use serde::de::{Deserialize, Deserializer, Error};
use serde_json::Number;

fn whole<E: Error>(n: &Number, min: i128, max: i128) -> Result<i128, E> {
    let v = if let Some(i) = n.as_i64() {
        i128::from(i)
    } else if let Some(u) = n.as_u64() {
        i128::from(u)
    } else {
        let f = n.as_f64().ok_or_else(|| E::custom("not a number"))?;
        if f.fract() != 0.0 || !f.is_finite() {
            return Err(E::custom(format!("{n} is not a whole number")));
        }
        if f < min as f64 || f > max as f64 {
            return Err(E::custom(format!("{n} is out of range ({min} to {max})")));
        }
        f as i128
    };
    if v < min || v > max {
        return Err(E::custom(format!("{n} is out of range ({min} to {max})")));
    }
    Ok(v)
}

macro_rules! whole_number {
    ($name:ident, $opt:ident, $t:ty) => {
        /// A whole number of this type (`5` or `5.0`).
        pub fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
            let n = Number::deserialize(d)?;
            Ok(whole::<D::Error>(&n, <$t>::MIN as i128, <$t>::MAX as i128)? as $t)
        }

        /// An optional whole number of this type (`null` or absent is `None`).
        pub fn $opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$t>, D::Error> {
            match Option::<Number>::deserialize(d)? {
                None => Ok(None),
                Some(n) => Ok(Some(whole::<D::Error>(&n, <$t>::MIN as i128, <$t>::MAX as i128)? as $t)),
            }
        }
    };
}

whole_number!(i64, opt_i64, i64);
whole_number!(i32, opt_i32, i32);
whole_number!(u64, opt_u64, u64);
whole_number!(usize, opt_usize, usize);

/// An optional field whose `null` means absent: its default.
pub fn null_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// A flag that is on unless set (`null` or absent is `true`).
pub fn default_true<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Option::<bool>::deserialize(d).map(|b| b.unwrap_or(true))
}

/// [`u64`] where `null` means absent (0).
pub fn null_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    opt_u64(d).map(Option::unwrap_or_default)
}

/// An optional field where `null` and absent differ: absent stays `None`,
/// `null` is `Some(None)` (a PATCH that clears a limit).
pub fn present_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    opt_i64(d).map(Some)
}

/// [`present_i64`] for `i32` fields.
pub fn present_i32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i32>>, D::Error> {
    opt_i32(d).map(Some)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct T {
        #[serde(deserialize_with = "super::i64")]
        a: i64,
        #[serde(default, deserialize_with = "super::opt_i32")]
        b: Option<i32>,
    }

    #[test]
    fn whole_numbers_with_or_without_a_fraction() {
        let t: T = serde_json::from_str(r#"{"a": 1500.0, "b": 7}"#).unwrap();
        assert_eq!(t, T { a: 1500, b: Some(7) });
        let t: T = serde_json::from_str(r#"{"a": -3, "b": null}"#).unwrap();
        assert_eq!(t, T { a: -3, b: None });
        assert!(serde_json::from_str::<T>(r#"{"a": 1}"#).unwrap().b.is_none());
        for bad in [r#"{"a": 1.5}"#, r#"{"a": "5"}"#, r#"{"a": 1e300}"#, r#"{"a": 1, "b": 3000000000}"#] {
            let e = serde_json::from_str::<T>(bad).unwrap_err().to_string();
            assert!(e.contains("whole") || e.contains("range") || e.contains("invalid type"), "{bad}: {e}");
        }
    }
}
