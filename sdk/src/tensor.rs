//! Tensors as raw little-endian bytes, with typed views so stage code never handles bytes.

use crate::StageError;
use crate::bindings::weir::pipeline::types as wit;

/// The Open Inference Protocol datatypes.
pub use wit::Datatype;

/// A number type that a tensor can hold, with its V2 datatype and little-endian codec.
pub trait Element: Copy {
    /// The V2 datatype whose elements are exactly this type.
    const DATATYPE: Datatype;
    /// Bytes per element.
    const SIZE: usize;
    /// Decode one element from exactly `SIZE` little-endian bytes.
    fn from_le_slice(bytes: &[u8]) -> Self;
    /// Append this element's little-endian bytes.
    fn extend_le(self, out: &mut Vec<u8>);
    /// Widen to f64 (exact for every type except 64-bit integers beyond 2^53).
    fn to_f64(self) -> f64;
}

macro_rules! element {
    ($($ty:ty => $dt:ident),* $(,)?) => {$(
        impl Element for $ty {
            const DATATYPE: Datatype = Datatype::$dt;
            const SIZE: usize = std::mem::size_of::<$ty>();
            fn from_le_slice(bytes: &[u8]) -> Self {
                <$ty>::from_le_bytes(bytes.try_into().expect("slice of element size"))
            }
            fn extend_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            #[allow(clippy::cast_lossless, clippy::cast_precision_loss)]
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    )*};
}

element! {
    u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64,
    i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64,
    f32 => Fp32, f64 => Fp64,
}

/// The V2 name of a datatype, as clients write it (`FP32`, `BYTES`, ...).
pub fn datatype_name(datatype: Datatype) -> &'static str {
    match datatype {
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

/// Bytes per element of a datatype; `None` for BYTES, whose elements vary in length.
fn element_size(datatype: Datatype) -> Option<usize> {
    Some(match datatype {
        Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => 1,
        Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 | Datatype::Bf16 => 2,
        Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => 4,
        Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => 8,
        Datatype::Bytes => return None,
    })
}

/// A named tensor: datatype, shape and row-major little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    name: String,
    datatype: Datatype,
    shape: Vec<u64>,
    data: Vec<u8>,
}

impl Tensor {
    /// A tensor of numbers. `values.len()` must equal the product of `shape`.
    pub fn new<T: Element>(name: impl Into<String>, shape: Vec<u64>, values: &[T]) -> Self {
        let mut data = Vec::with_capacity(values.len() * T::SIZE);
        for v in values {
            v.extend_le(&mut data);
        }
        Tensor {
            name: name.into(),
            datatype: T::DATATYPE,
            shape,
            data,
        }
    }

    /// A BYTES tensor (strings or binary blobs), one element per item.
    pub fn from_bytes<I, B>(name: impl Into<String>, shape: Vec<u64>, items: I) -> Self
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        let mut data = Vec::new();
        for item in items {
            let item = item.as_ref();
            let len = u32::try_from(item.len()).expect("BYTES element under 4 GiB");
            data.extend_from_slice(&len.to_le_bytes());
            data.extend_from_slice(item);
        }
        Tensor {
            name: name.into(),
            datatype: Datatype::Bytes,
            shape,
            data,
        }
    }

    /// A tensor from its row-major little-endian bytes (BYTES: each element a 4-byte length,
    /// then its bytes), as `wasi:nn` and other raw sources give them; a failure when a
    /// fixed-size datatype's bytes do not fill the shape.
    pub fn from_le_bytes(
        name: impl Into<String>,
        datatype: Datatype,
        shape: Vec<u64>,
        data: Vec<u8>,
    ) -> Result<Self, StageError> {
        let name = name.into();
        let elements: u64 = shape.iter().product();
        if let Some(size) = element_size(datatype)
            && elements.checked_mul(size as u64) != Some(data.len() as u64)
        {
            return Err(StageError::Failure(format!(
                "tensor '{name}': {} bytes do not make {elements} {} elements",
                data.len(),
                datatype_name(datatype)
            )));
        }
        Ok(Tensor {
            name,
            datatype,
            shape,
            data,
        })
    }

    /// The row-major little-endian bytes, without a copy.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tensor's datatype.
    pub fn datatype(&self) -> Datatype {
        self.datatype
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The elements as `T`; an invalid-input error if the datatype is not exactly `T`'s.
    pub fn values<T: Element>(&self) -> Result<Vec<T>, StageError> {
        if self.datatype != T::DATATYPE {
            return Err(self.wrong_datatype(datatype_name(T::DATATYPE)));
        }
        Ok(decode::<T>(&self.data))
    }

    /// The elements of any numeric datatype widened to f64, for stages that accept FP32 or
    /// FP64 (or integers) alike.
    pub fn to_f64(&self) -> Result<Vec<f64>, StageError> {
        fn widen<T: Element>(data: &[u8]) -> Vec<f64> {
            data.chunks_exact(T::SIZE)
                .map(|b| T::from_le_slice(b).to_f64())
                .collect()
        }
        Ok(match self.datatype {
            Datatype::Uint8 => widen::<u8>(&self.data),
            Datatype::Uint16 => widen::<u16>(&self.data),
            Datatype::Uint32 => widen::<u32>(&self.data),
            Datatype::Uint64 => widen::<u64>(&self.data),
            Datatype::Int8 => widen::<i8>(&self.data),
            Datatype::Int16 => widen::<i16>(&self.data),
            Datatype::Int32 => widen::<i32>(&self.data),
            Datatype::Int64 => widen::<i64>(&self.data),
            Datatype::Fp32 => widen::<f32>(&self.data),
            Datatype::Fp64 => widen::<f64>(&self.data),
            _ => return Err(self.wrong_datatype("a numeric datatype")),
        })
    }

    /// The elements of a BYTES tensor, each as its raw bytes.
    pub fn bytes_elements(&self) -> Result<Vec<&[u8]>, StageError> {
        if self.datatype != Datatype::Bytes {
            return Err(self.wrong_datatype("BYTES"));
        }
        let mut items = Vec::new();
        let mut rest = self.data.as_slice();
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len) as usize;
            let (item, tail) = tail.split_at_checked(len).ok_or_else(|| {
                StageError::InvalidInput(format!("tensor '{}': truncated BYTES element", self.name))
            })?;
            items.push(item);
            rest = tail;
        }
        Ok(items)
    }

    /// `(rows, columns)` of a 2-D tensor; an invalid-input error naming the tensor otherwise.
    pub fn matrix(&self) -> Result<(usize, usize), StageError> {
        match self.shape[..] {
            [rows, cols] => Ok((rows as usize, cols as usize)),
            _ => Err(StageError::InvalidInput(format!(
                "tensor '{}' must be 2-D [rows, columns], got shape {:?}",
                self.name, self.shape
            ))),
        }
    }

    fn wrong_datatype(&self, expected: &str) -> StageError {
        StageError::InvalidInput(format!(
            "tensor '{}' has datatype {}, expected {expected}",
            self.name,
            datatype_name(self.datatype)
        ))
    }
}

fn decode<T: Element>(data: &[u8]) -> Vec<T> {
    data.chunks_exact(T::SIZE).map(T::from_le_slice).collect()
}

impl From<wit::Tensor> for Tensor {
    fn from(t: wit::Tensor) -> Self {
        Tensor {
            name: t.name,
            datatype: t.datatype,
            shape: t.shape,
            data: t.data,
        }
    }
}

impl From<Tensor> for wit::Tensor {
    fn from(t: Tensor) -> Self {
        wit::Tensor {
            name: t.name,
            datatype: t.datatype,
            shape: t.shape,
            data: t.data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_through_bytes() {
        let t = Tensor::new("x", vec![2, 2], &[1.5f32, -2.0, 3.25, 0.0]);
        assert_eq!(t.values::<f32>().unwrap(), vec![1.5, -2.0, 3.25, 0.0]);
        assert_eq!(t.to_f64().unwrap(), vec![1.5, -2.0, 3.25, 0.0]);
        assert_eq!(t.matrix().unwrap(), (2, 2));
    }

    #[test]
    fn wrong_datatype_is_invalid_input_naming_the_tensor() {
        let t = Tensor::new("x", vec![1], &[1i64]);
        match t.values::<f32>() {
            Err(StageError::InvalidInput(m)) => assert!(m.contains("'x'") && m.contains("INT64")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bytes_elements_round_trip() {
        let t = Tensor::from_bytes("s", vec![3], ["a", "", "setosa"]);
        let items = t.bytes_elements().unwrap();
        assert_eq!(items, vec![b"a".as_slice(), b"", b"setosa"]);
    }
}
