//! The JSON form of tensor data: `data` arrays (flat, or nested to the shape) into
//! little-endian bytes, and bytes back into flat arrays.

use serde::ser::{Error as _, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::binary::bytes_elements;
use crate::tensor::{Datatype, Tensor};

/// Decode a JSON `data` value holding `count` elements of `datatype` in `shape`.
pub fn decode_data(
    data: &Value,
    datatype: Datatype,
    shape: &[u64],
    count: u64,
) -> Result<Vec<u8>, String> {
    if matches!(datatype, Datatype::Fp16 | Datatype::Bf16) {
        return Err(format!(
            "{datatype} has no JSON form; send it with the binary tensor extension"
        ));
    }
    let mut decoder = Decoder {
        datatype,
        data: Vec::new(),
        count: 0,
    };
    decoder.walk(data, shape)?;
    if decoder.count != count {
        return Err(format!(
            "shape {shape:?} needs {count} elements, data has {}",
            decoder.count
        ));
    }
    Ok(decoder.data)
}

/// Flattens JSON `data` (flat, or nested to the shape) into little-endian bytes.
struct Decoder {
    datatype: Datatype,
    data: Vec<u8>,
    count: u64,
}

impl Decoder {
    /// Accept `value` as flat (an array of elements) or nested exactly to `shape`.
    fn walk(&mut self, value: &Value, shape: &[u64]) -> Result<(), String> {
        let Value::Array(items) = value else {
            return Err("data must be an array".into());
        };
        let nested = items.first().is_some_and(Value::is_array);
        if !nested {
            return items.iter().try_for_each(|v| self.element(v));
        }
        self.nested(items, shape, 0)
    }

    fn nested(&mut self, items: &[Value], shape: &[u64], depth: usize) -> Result<(), String> {
        match shape.get(depth) {
            Some(&dim) if dim == items.len() as u64 => {}
            _ => {
                return Err(format!(
                    "nested data does not match shape {shape:?} at depth {depth}"
                ));
            }
        }
        let last = depth + 1 == shape.len();
        for item in items {
            match (item, last) {
                (Value::Array(inner), false) => self.nested(inner, shape, depth + 1)?,
                (_, true) if !item.is_array() => self.element(item)?,
                _ => {
                    return Err(format!(
                        "nested data does not match shape {shape:?} at depth {}",
                        depth + 1
                    ));
                }
            }
        }
        Ok(())
    }

    fn element(&mut self, value: &Value) -> Result<(), String> {
        let index = self.count;
        let wrong = |what: &str| format!("element {index} is {}, expected {what}", describe(value));
        let out = &mut self.data;
        match self.datatype {
            Datatype::Bool => out.push(u8::from(
                value.as_bool().ok_or_else(|| wrong("true or false"))?,
            )),
            Datatype::Uint8 => out.extend(integer::<u8>(value, index)?.to_le_bytes()),
            Datatype::Uint16 => out.extend(integer::<u16>(value, index)?.to_le_bytes()),
            Datatype::Uint32 => out.extend(integer::<u32>(value, index)?.to_le_bytes()),
            Datatype::Uint64 => out.extend(integer::<u64>(value, index)?.to_le_bytes()),
            Datatype::Int8 => out.extend(integer::<i8>(value, index)?.to_le_bytes()),
            Datatype::Int16 => out.extend(integer::<i16>(value, index)?.to_le_bytes()),
            Datatype::Int32 => out.extend(integer::<i32>(value, index)?.to_le_bytes()),
            Datatype::Int64 => out.extend(integer::<i64>(value, index)?.to_le_bytes()),
            Datatype::Fp32 => {
                let v = value.as_f64().ok_or_else(|| wrong("a number"))?;
                let narrowed = v as f32;
                if narrowed.is_infinite() {
                    return Err(format!("element {index} ({v}) is out of range for FP32"));
                }
                out.extend(narrowed.to_le_bytes());
            }
            Datatype::Fp64 => out.extend(
                value
                    .as_f64()
                    .ok_or_else(|| wrong("a number"))?
                    .to_le_bytes(),
            ),
            Datatype::Bytes => {
                let s = value.as_str().ok_or_else(|| wrong("a string"))?;
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

/// A JSON integer that fits `T`; fractions, strings and booleans are refused.
fn integer<T: TryFrom<i64> + TryFrom<u64>>(value: &Value, index: u64) -> Result<T, String> {
    let fits = match value {
        Value::Number(n) if n.is_u64() => T::try_from(n.as_u64().unwrap()).ok(),
        Value::Number(n) if n.is_i64() => T::try_from(n.as_i64().unwrap()).ok(),
        _ => {
            return Err(format!(
                "element {index} is {}, expected an integer",
                describe(value)
            ));
        }
    };
    fits.ok_or_else(|| format!("element {index} ({value}) is out of range for the datatype"))
}

/// How a JSON value reads in an error message.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
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
