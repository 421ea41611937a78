//! The Open Inference Protocol (KServe V2) JSON form: requests into [`Batch`]es and batches
//! into responses. See `../shared/V2-PROTOCOL.md` for the choices made where servers differ.

use std::collections::HashSet;

use serde::ser::{Error as _, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::Error;
use crate::tensor::{Batch, Datatype, Tensor, element_count};

/// Parameters attached to a request, an input or an output.
type Parameters = Map<String, Value>;

/// An inference request as clients send it.
#[derive(Deserialize)]
struct InferenceRequest {
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<RequestInput>,
    outputs: Option<Vec<RequestOutput>>,
}

#[derive(Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Parameters,
    data: Value,
}

#[derive(Deserialize)]
struct RequestOutput {
    name: String,
}

/// A decoded inference request: the batch for the pipeline plus what the response must echo.
#[derive(Debug)]
pub struct Request {
    /// The client's request id, echoed in the response.
    pub id: Option<String>,
    /// The inputs as tensors, and the request parameters as strings.
    pub batch: Batch,
    /// The outputs the client asked for, in its order; `None` means all of them.
    pub outputs: Option<Vec<String>>,
}

/// Decode a V2 JSON request body.
pub fn decode_request(body: &[u8]) -> Result<Request, Error> {
    let request: InferenceRequest = serde_json::from_slice(body)
        .map_err(|e| Error::InvalidInput(format!("invalid inference request JSON: {e}")))?;
    let mut seen = HashSet::new();
    let mut tensors = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        if !seen.insert(input.name.clone()) {
            return Err(Error::InvalidInput(format!(
                "input '{}' appears more than once",
                input.name
            )));
        }
        if input.parameters.contains_key("binary_data_size") {
            return Err(binary_extension_unsupported());
        }
        tensors.push(decode_input(input)?);
    }
    Ok(Request {
        id: request.id,
        batch: Batch {
            tensors,
            parameters: request
                .parameters
                .into_iter()
                .map(|(k, v)| (k, parameter_string(v)))
                .collect(),
        },
        outputs: request
            .outputs
            .map(|outs| outs.into_iter().map(|o| o.name).collect()),
    })
}

/// The error for a request in Triton's binary tensor format, which is not implemented yet.
pub fn binary_extension_unsupported() -> Error {
    Error::NotSupported(
        "the binary tensor extension is not supported yet; send tensors as JSON \
         (tritonclient: binary_data=False on inputs and outputs)"
            .into(),
    )
}

fn parameter_string(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn decode_input(input: RequestInput) -> Result<Tensor, Error> {
    let name = input.name;
    let invalid = |msg: String| Error::InvalidInput(format!("input '{name}': {msg}"));
    let datatype: Datatype = input.datatype.parse().map_err(invalid)?;
    if matches!(datatype, Datatype::Fp16 | Datatype::Bf16) {
        return Err(invalid(format!(
            "{datatype} has no JSON form; it needs the binary tensor extension"
        )));
    }
    let shape = input
        .shape
        .iter()
        .map(|&d| u64::try_from(d))
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| invalid(format!("shape {:?} has a negative dimension", input.shape)))?;
    let expected = element_count(&shape)
        .ok_or_else(|| invalid(format!("shape {shape:?} has too many elements")))?;
    let mut decoder = Decoder {
        datatype,
        data: Vec::new(),
        count: 0,
    };
    decoder
        .walk(&input.data, &shape)
        .map_err(|e| invalid(e.to_string()))?;
    if decoder.count != expected {
        return Err(invalid(format!(
            "shape {shape:?} needs {expected} elements, data has {}",
            decoder.count
        )));
    }
    Ok(Tensor {
        name,
        datatype,
        shape,
        data: decoder.data,
    })
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
            Datatype::Fp16 | Datatype::Bf16 => unreachable!("rejected before decoding"),
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

/// A V2 inference response, serialized straight from the batch's bytes.
#[derive(Serialize)]
struct InferenceResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<ResponseOutput<'a>>,
}

#[derive(Serialize)]
struct ResponseOutput<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [u64],
    data: TensorData<'a>,
}

/// Serializes a tensor's bytes as a flat JSON array of its elements.
struct TensorData<'a>(&'a Tensor);

/// Encode the response for `request` from the pipeline's final batch: the requested outputs in
/// the requested order, or every output in `order` when the client named none.
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[&Tensor],
) -> Result<Vec<u8>, Error> {
    let response = InferenceResponse {
        model_name,
        model_version,
        id,
        outputs: outputs
            .iter()
            .map(|t| ResponseOutput {
                name: &t.name,
                datatype: t.datatype.name(),
                shape: &t.shape,
                data: TensorData(t),
            })
            .collect(),
    };
    serde_json::to_vec(&response).map_err(|e| Error::StageFailed(e.to_string()))
}

/// Pick the outputs the client asked for, in its order; all of `available` when it named none.
pub fn select_outputs<'a>(
    available: &[&'a Tensor],
    requested: Option<&[String]>,
) -> Result<Vec<&'a Tensor>, Error> {
    let Some(requested) = requested else {
        return Ok(available.to_vec());
    };
    requested
        .iter()
        .map(|name| {
            available
                .iter()
                .find(|t| &t.name == name)
                .copied()
                .ok_or_else(|| {
                    let names: Vec<&str> = available.iter().map(|t| t.name.as_str()).collect();
                    Error::InvalidInput(format!(
                        "unknown output '{name}' (this model has: {})",
                        names.join(", ")
                    ))
                })
        })
        .collect()
}

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

/// The elements of BYTES data (4-byte little-endian length, then the bytes, repeated).
fn bytes_elements(mut data: &[u8]) -> impl Iterator<Item = Result<&[u8], &'static str>> {
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
