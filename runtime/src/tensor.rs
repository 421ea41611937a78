//! The host's tensors: what the V2 decoder produces, stages consume and the encoder writes.
//!
//! Data is raw row-major little-endian bytes, the layout of the WIT contract, so a batch moves
//! into a component without any per-element conversion.

use std::fmt;
use std::str::FromStr;

/// The Open Inference Protocol datatypes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bf16,
    /// Variable-length elements, each stored as a 4-byte little-endian length and the bytes.
    Bytes,
}

impl Datatype {
    /// Every datatype, in the protocol's order.
    pub const ALL: [Datatype; 14] = [
        Datatype::Bool,
        Datatype::Uint8,
        Datatype::Uint16,
        Datatype::Uint32,
        Datatype::Uint64,
        Datatype::Int8,
        Datatype::Int16,
        Datatype::Int32,
        Datatype::Int64,
        Datatype::Fp16,
        Datatype::Fp32,
        Datatype::Fp64,
        Datatype::Bf16,
        Datatype::Bytes,
    ];

    /// The name clients write (`FP32`, `BYTES`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp16 => "FP16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bf16 => "BF16",
            Datatype::Bytes => "BYTES",
        }
    }

    /// Bytes per element; `None` for BYTES, whose elements vary in length.
    pub fn size(self) -> Option<usize> {
        match self {
            Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => Some(1),
            Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 | Datatype::Bf16 => Some(2),
            Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => Some(4),
            Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => Some(8),
            Datatype::Bytes => None,
        }
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Datatype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Datatype::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Datatype::ALL.iter().map(|d| d.name()).collect();
                format!("unknown datatype '{s}' (one of {})", names.join(", "))
            })
    }
}

/// A named tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

impl Tensor {
    /// The elements of a numeric tensor widened to f64 (exact except for 64-bit integers
    /// beyond 2^53); empty for BYTES and the half-precision floats.
    pub fn numbers(&self) -> Vec<f64> {
        macro_rules! widen {
            ($ty:ty) => {
                self.data
                    .chunks_exact(std::mem::size_of::<$ty>())
                    .map(|c| <$ty>::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect()
            };
        }
        match self.datatype {
            Datatype::Bool | Datatype::Uint8 => widen!(u8),
            Datatype::Int8 => widen!(i8),
            Datatype::Uint16 => widen!(u16),
            Datatype::Int16 => widen!(i16),
            Datatype::Uint32 => widen!(u32),
            Datatype::Int32 => widen!(i32),
            Datatype::Uint64 => widen!(u64),
            Datatype::Int64 => widen!(i64),
            Datatype::Fp32 => widen!(f32),
            Datatype::Fp64 => widen!(f64),
            Datatype::Fp16 | Datatype::Bf16 | Datatype::Bytes => Vec::new(),
        }
    }
}

impl Tensor {
    /// The elements of a BYTES tensor as strings; an error naming the first that is not
    /// UTF-8 or is cut short.
    pub fn strings(&self) -> Result<Vec<String>, String> {
        bytes_elements(&self.data)
            .enumerate()
            .map(|(index, item)| {
                let item = item.map_err(|e| format!("tensor '{}': {e}", self.name))?;
                String::from_utf8(item.to_vec())
                    .map_err(|_| format!("tensor '{}': element {index} is not UTF-8", self.name))
            })
            .collect()
    }
}

/// BYTES data holding `items`: each a 4-byte little-endian length, then its bytes.
pub fn bytes_data<S: AsRef<[u8]>>(items: impl Iterator<Item = S>) -> Vec<u8> {
    let mut data = Vec::new();
    for item in items {
        let item = item.as_ref();
        data.extend((item.len() as u32).to_le_bytes());
        data.extend(item);
    }
    data
}

/// The elements of BYTES data (a 4-byte little-endian length, then the bytes, repeated).
pub fn bytes_elements(mut data: &[u8]) -> impl Iterator<Item = Result<&[u8], &'static str>> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        let Some((len, rest)) = data.split_first_chunk::<4>() else {
            data = &[];
            return Some(Err("truncated BYTES element length"));
        };
        let len = u32::from_le_bytes(*len) as usize;
        let Some((item, rest)) = rest.split_at_checked(len) else {
            data = &[];
            return Some(Err("truncated BYTES element"));
        };
        data = rest;
        Some(Ok(item))
    })
}

/// Named tensors plus the request's parameters, as strings: what flows through a pipeline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub tensors: Vec<Tensor>,
    pub parameters: Vec<(String, String)>,
}

impl Batch {
    /// The tensor called `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// The number of elements of `shape`, or `None` if it overflows u64.
pub fn element_count(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d))
}
