//! The JSON form of tensor data: `data` arrays (flat, or nested to the shape) into
//! little-endian bytes, and bytes back into flat arrays.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Error as _, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::tensor::{Datatype, Tensor, bytes_elements};

/// Decode a JSON `data` array holding `count` elements of `datatype` in `shape`, straight from
/// its text into little-endian bytes: no tree of JSON values is built on the way.
pub fn decode_data(
    data: &RawValue,
    datatype: Datatype,
    shape: &[u64],
    count: u64,
) -> Result<Vec<u8>, String> {
    if matches!(datatype, Datatype::Fp16 | Datatype::Bf16) {
        return Err(format!(
            "{datatype} has no JSON form; send it with the binary tensor extension"
        ));
    }
    let capacity = usize::try_from(count).unwrap_or(0) * datatype.size().unwrap_or(4);
    let mut decoder = Decoder {
        datatype,
        shape,
        layout: Layout::Unknown,
        data: Vec::with_capacity(capacity),
        count: 0,
        error: None,
    };
    let mut json = serde_json::Deserializer::from_str(data.get());
    let parsed = Level {
        decoder: &mut decoder,
        depth: 0,
    }
    .deserialize(&mut json);
    if let Err(e) = parsed {
        return Err(decoder.error.take().unwrap_or_else(|| e.to_string()));
    }
    if decoder.count != count {
        return Err(format!(
            "shape {shape:?} needs {count} elements, data has {}",
            decoder.count
        ));
    }
    Ok(decoder.data)
}

/// Whether `data` is flat (an array of elements) or nested exactly to the shape; its first
/// item decides.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    Unknown,
    Flat,
    Nested,
}

/// Collects the elements of `data` into little-endian bytes.
struct Decoder<'s> {
    datatype: Datatype,
    shape: &'s [u64],
    layout: Layout,
    data: Vec<u8>,
    count: u64,
    /// Why decoding stopped, without serde_json's position suffix.
    error: Option<String>,
}

/// One JSON value of `data`, `depth` arrays deep (0: `data` itself).
struct Level<'a, 's> {
    decoder: &'a mut Decoder<'s>,
    depth: usize,
}

/// A JSON value that is not an array, as the visitor sees it.
enum Scalar<'v> {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str(&'v str),
    Object,
}

impl<'de> DeserializeSeed<'de> for Level<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Level<'_, '_> {
    /// Fail with `message` (kept apart from serde_json's error, which adds a position).
    fn fail<E: de::Error>(self, message: String) -> E {
        let error = E::custom(&message);
        self.decoder.error = Some(message);
        error
    }

    /// Fail because nested data does not follow the shape at `depth`.
    fn mismatched<E: de::Error>(self, depth: usize) -> E {
        let message = format!(
            "nested data does not match shape {:?} at depth {depth}",
            self.decoder.shape
        );
        self.fail(message)
    }

    fn scalar<E: de::Error>(self, value: Scalar) -> Result<(), E> {
        let d = &mut *self.decoder;
        if self.depth == 0 {
            return Err(self.fail("data must be an array".into()));
        }
        if d.layout == Layout::Unknown {
            d.layout = Layout::Flat;
        }
        if d.layout == Layout::Nested && self.depth != d.shape.len() {
            let depth = self.depth;
            return Err(self.mismatched(depth));
        }
        match d.element(&value) {
            Ok(()) => Ok(()),
            Err(message) => Err(self.fail(message)),
        }
    }
}

impl<'de> Visitor<'de> for Level<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of tensor elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let depth = self.depth;
        let d = &mut *self.decoder;
        if depth == 1 && d.layout == Layout::Unknown {
            d.layout = Layout::Nested;
        }
        if depth > 0 && d.layout == Layout::Flat {
            let message = format!("element {} is an array, expected {}", d.count, d.expected());
            return Err(self.fail(message));
        }
        if depth > 0 && depth >= d.shape.len() {
            return Err(self.mismatched(depth));
        }
        let mut seen = 0u64;
        loop {
            let level = Level {
                decoder: &mut *self.decoder,
                depth: depth + 1,
            };
            if items.next_element_seed(level)?.is_none() {
                break;
            }
            seen += 1;
            let d = &*self.decoder;
            if d.layout == Layout::Nested && d.shape.get(depth).is_none_or(|&n| seen > n) {
                return Err(self.mismatched(depth));
            }
        }
        let d = &*self.decoder;
        if d.layout == Layout::Nested && d.shape.get(depth) != Some(&seen) {
            return Err(self.mismatched(depth));
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.scalar(Scalar::Object)
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar(Scalar::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(Scalar::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(Scalar::Unsigned(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(Scalar::Signed(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(Scalar::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(Scalar::Str(v))
    }
}

impl Decoder<'_> {
    /// What an element of the datatype must be, for error messages.
    fn expected(&self) -> &'static str {
        match self.datatype {
            Datatype::Bool => "true or false",
            Datatype::Bytes => "a string",
            Datatype::Fp32 | Datatype::Fp64 => "a number",
            _ => "an integer",
        }
    }

    fn element(&mut self, value: &Scalar) -> Result<(), String> {
        let index = self.count;
        let expected = self.expected();
        let wrong = || {
            format!(
                "element {index} is {}, expected {expected}",
                describe(value)
            )
        };
        let number = match *value {
            Scalar::Unsigned(n) => Some(n as f64),
            Scalar::Signed(n) => Some(n as f64),
            Scalar::Float(n) => Some(n),
            _ => None,
        };
        let out = &mut self.data;
        match self.datatype {
            Datatype::Bool => match value {
                Scalar::Bool(b) => out.push(u8::from(*b)),
                _ => return Err(wrong()),
            },
            Datatype::Uint8 => out.extend(integer::<u8>(value, index, &wrong)?.to_le_bytes()),
            Datatype::Uint16 => out.extend(integer::<u16>(value, index, &wrong)?.to_le_bytes()),
            Datatype::Uint32 => out.extend(integer::<u32>(value, index, &wrong)?.to_le_bytes()),
            Datatype::Uint64 => out.extend(integer::<u64>(value, index, &wrong)?.to_le_bytes()),
            Datatype::Int8 => out.extend(integer::<i8>(value, index, &wrong)?.to_le_bytes()),
            Datatype::Int16 => out.extend(integer::<i16>(value, index, &wrong)?.to_le_bytes()),
            Datatype::Int32 => out.extend(integer::<i32>(value, index, &wrong)?.to_le_bytes()),
            Datatype::Int64 => out.extend(integer::<i64>(value, index, &wrong)?.to_le_bytes()),
            Datatype::Fp32 => {
                let v = number.ok_or_else(wrong)?;
                let narrowed = v as f32;
                if narrowed.is_infinite() {
                    return Err(format!("element {index} ({v}) is out of range for FP32"));
                }
                out.extend(narrowed.to_le_bytes());
            }
            Datatype::Fp64 => out.extend(number.ok_or_else(wrong)?.to_le_bytes()),
            Datatype::Bytes => {
                let Scalar::Str(s) = value else {
                    return Err(wrong());
                };
                let len =
                    u32::try_from(s.len()).map_err(|_| format!("element {index} is over 4 GiB"))?;
                out.extend(len.to_le_bytes());
                out.extend(s.as_bytes());
            }
            Datatype::Fp16 | Datatype::Bf16 => unreachable!("refused by decode_data"),
        }
        self.count += 1;
        Ok(())
    }
}

/// A JSON integer that fits `T`; fractions, strings and booleans are refused with `wrong`.
fn integer<T: TryFrom<i64> + TryFrom<u64>>(
    value: &Scalar,
    index: u64,
    wrong: &dyn Fn() -> String,
) -> Result<T, String> {
    let (fits, shown) = match *value {
        Scalar::Unsigned(n) => (T::try_from(n).ok(), n.to_string()),
        Scalar::Signed(n) => (T::try_from(n).ok(), n.to_string()),
        _ => return Err(wrong()),
    };
    fits.ok_or_else(|| format!("element {index} ({shown}) is out of range for the datatype"))
}

/// How a JSON value reads in an error message.
fn describe(value: &Scalar) -> String {
    match value {
        Scalar::Null => "null".into(),
        Scalar::Bool(b) => format!("a boolean ({b})"),
        Scalar::Unsigned(n) => format!("a number ({n})"),
        Scalar::Signed(n) => format!("a number ({n})"),
        Scalar::Float(n) => match serde_json::Number::from_f64(*n) {
            Some(n) => format!("a number ({n})"),
            None => "a number".into(),
        },
        Scalar::Str(_) => "a string".into(),
        Scalar::Object => "an object".into(),
    }
}

/// Serializes a tensor's bytes as a flat JSON array of its elements.
pub struct TensorData<'a>(pub &'a Tensor);

impl Serialize for TensorData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let data = &t.data;
        let mut seq = serializer.serialize_seq(None)?;
        macro_rules! each {
            ($ty:ty) => {
                for chunk in data.chunks_exact(std::mem::size_of::<$ty>()) {
                    seq.serialize_element(&<$ty>::from_le_bytes(chunk.try_into().unwrap()))?;
                }
            };
        }
        macro_rules! each_float {
            ($ty:ty) => {
                for chunk in data.chunks_exact(std::mem::size_of::<$ty>()) {
                    let v = <$ty>::from_le_bytes(chunk.try_into().unwrap());
                    if !v.is_finite() {
                        return Err(S::Error::custom(format!(
                            "output '{}' holds {v}, which JSON cannot carry",
                            t.name
                        )));
                    }
                    seq.serialize_element(&v)?;
                }
            };
        }
        match t.datatype {
            Datatype::Bool => {
                for b in data {
                    seq.serialize_element(&(*b != 0))?;
                }
            }
            Datatype::Uint8 => each!(u8),
            Datatype::Uint16 => each!(u16),
            Datatype::Uint32 => each!(u32),
            Datatype::Uint64 => each!(u64),
            Datatype::Int8 => each!(i8),
            Datatype::Int16 => each!(i16),
            Datatype::Int32 => each!(i32),
            Datatype::Int64 => each!(i64),
            Datatype::Fp32 => each_float!(f32),
            Datatype::Fp64 => each_float!(f64),
            Datatype::Bytes => {
                for item in bytes_elements(data) {
                    let s = std::str::from_utf8(item.map_err(S::Error::custom)?).map_err(|_| {
                        S::Error::custom(format!(
                            "output '{}' holds bytes that are not UTF-8, which JSON cannot carry",
                            t.name
                        ))
                    })?;
                    seq.serialize_element(s)?;
                }
            }
            Datatype::Fp16 | Datatype::Bf16 => {
                return Err(S::Error::custom(format!(
                    "output '{}' is {}, which has no JSON form",
                    t.name, t.datatype
                )));
            }
        }
        seq.end()
    }
}
