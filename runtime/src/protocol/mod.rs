//! The Open Inference Protocol (KServe V2) over REST: request bodies into [`Batch`]es and
//! batches into response bodies, in the JSON form ([`json`]) and Triton's binary tensor
//! extension ([`binary`]), which `tritonclient` uses by default. See
//! `../shared/V2-PROTOCOL.md` for the choices made where servers differ.

mod binary;
mod json;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;
use crate::tensor::{Batch, Datatype, Tensor, element_count};

/// The header that gives the length of the JSON part of a body with binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The most inputs a request may have.
pub const MAX_INPUTS: usize = 1024;

/// The most request parameters, and their bytes (names and values) in all: every stage gets
/// them on every call.
pub const MAX_PARAMETERS: usize = 256;
pub const MAX_PARAMETER_BYTES: usize = 64 << 10;

/// The most dimensions a tensor may have (numpy's limit).
pub const MAX_RANK: usize = 64;

/// Parameters attached to a request, an input or an output.
type Parameters = Map<String, Value>;

/// An inference request's JSON part as clients send it.
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
    /// Absent when the tensor travels in the binary part (`binary_data_size`). Kept as text
    /// until the datatype is known, then decoded straight into bytes.
    data: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

/// An output the client asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRequest {
    pub name: String,
    /// Send this output in the binary part (`"binary_data": true`).
    pub binary: bool,
}

/// A decoded inference request: the batch for the pipeline plus what the response must echo.
#[derive(Debug)]
pub struct Request {
    /// The client's request id, echoed in the response.
    pub id: Option<String>,
    /// The inputs as tensors, and the request parameters as strings.
    pub batch: Batch,
    /// The outputs the client asked for, in its order; `None` means all of them.
    pub outputs: Option<Vec<OutputRequest>>,
    /// Send outputs the client did not name in the binary part (`binary_data_output`).
    pub binary_outputs: bool,
}

/// Decode a request body. `header_length` is the `Inference-Header-Content-Length` header:
/// the JSON part's length when binary tensors follow it. An input of more than
/// `max_elements` elements is refused before its data is decoded.
pub fn decode_request(
    body: &[u8],
    header_length: Option<&str>,
    max_elements: u64,
) -> Result<Request, Error> {
    let (json_part, mut binary_part) = binary::split(body, header_length)?;
    let request: InferenceRequest = serde_json::from_slice(json_part)
        .map_err(|e| Error::InvalidInput(format!("invalid inference request JSON: {e}")))?;
    if request.inputs.len() > MAX_INPUTS {
        return Err(Error::InvalidInput(format!(
            "the request has {} inputs; at most {MAX_INPUTS} are accepted",
            request.inputs.len()
        )));
    }
    unique(request.inputs.iter().map(|i| &i.name), "input")?;
    let mut tensors = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        tensors.push(decode_input(input, &mut binary_part, max_elements)?);
    }
    if !binary_part.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{} bytes of binary data follow the inputs' binary_data_size",
            binary_part.len()
        )));
    }
    if let Some(outputs) = &request.outputs {
        unique(outputs.iter().map(|o| &o.name), "output")?;
    }
    let binary_outputs = flag(&request.parameters, "binary_data_output");
    Ok(Request {
        id: request.id,
        binary_outputs,
        outputs: request.outputs.map(|outs| {
            outs.into_iter()
                .map(|o| OutputRequest {
                    binary: flag(&o.parameters, "binary_data"),
                    name: o.name,
                })
                .collect()
        }),
        batch: Batch {
            tensors,
            parameters: parameters(request.parameters)?,
        },
    })
}

/// Refuse a name that appears twice: a second copy of an input is ambiguous, and one of an
/// output would copy the whole tensor into the response again.
fn unique<'a>(names: impl Iterator<Item = &'a String>, what: &str) -> Result<(), Error> {
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(Error::InvalidInput(format!(
                "{what} '{name}' appears more than once"
            )));
        }
    }
    Ok(())
}

/// The request parameters as strings, as every stage receives them: at most
/// [`MAX_PARAMETERS`] of them, of at most [`MAX_PARAMETER_BYTES`] in all.
fn parameters(given: Parameters) -> Result<Vec<(String, String)>, Error> {
    if given.len() > MAX_PARAMETERS {
        return Err(Error::InvalidInput(format!(
            "the request has {} parameters; at most {MAX_PARAMETERS} are accepted",
            given.len()
        )));
    }
    let parameters: Vec<(String, String)> = given
        .into_iter()
        .map(|(k, v)| (k, parameter_string(v)))
        .collect();
    let bytes: usize = parameters.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_PARAMETER_BYTES {
        return Err(Error::InvalidInput(format!(
            "the request's parameters take {bytes} bytes; at most {MAX_PARAMETER_BYTES} are \
             accepted"
        )));
    }
    Ok(parameters)
}

/// Whether boolean parameter `name` is present and true.
fn flag(parameters: &Parameters, name: &str) -> bool {
    parameters.get(name).and_then(Value::as_bool) == Some(true)
}

fn parameter_string(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn decode_input(
    input: RequestInput,
    binary_part: &mut &[u8],
    max_elements: u64,
) -> Result<Tensor, Error> {
    let name = input.name;
    let invalid = |msg: String| Error::InvalidInput(format!("input '{name}': {msg}"));
    let datatype: Datatype = input.datatype.parse().map_err(invalid)?;
    let shape = input
        .shape
        .iter()
        .map(|&d| u64::try_from(d))
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| invalid(format!("shape {:?} has a negative dimension", input.shape)))?;
    if shape.len() > MAX_RANK {
        return Err(invalid(format!(
            "shape has {} dimensions; at most {MAX_RANK} are accepted",
            shape.len()
        )));
    }
    let count = element_count(&shape)
        .ok_or_else(|| invalid(format!("shape {shape:?} has too many elements")))?;
    if count > max_elements {
        return Err(invalid(format!(
            "shape {shape:?} has {count} elements, over this pipeline's limit of {max_elements} \
             (limits.max_tensor_elements)"
        )));
    }
    // A zero dimension makes any other one possible without data; no stage should have to
    // size anything by a dimension no tensor within the limit could have.
    let extent = (shape.iter()).try_fold(1u64, |n, &d| n.checked_mul(d.max(1)));
    if extent.is_none_or(|extent| extent > max_elements) {
        return Err(invalid(format!(
            "shape {shape:?} has dimensions that no tensor within this pipeline's limit of \
             {max_elements} elements has (limits.max_tensor_elements)"
        )));
    }
    let data = match (input.parameters.get("binary_data_size"), input.data) {
        (Some(size), None) => {
            let size = size
                .as_u64()
                .ok_or_else(|| invalid("binary_data_size must be a byte count".into()))?;
            binary::take_input(binary_part, size, datatype, count).map_err(invalid)?
        }
        (None, Some(data)) => json::decode_data(&data, datatype, &shape, count).map_err(invalid)?,
        (Some(_), Some(_)) => {
            return Err(invalid("has both data and binary_data_size".into()));
        }
        (None, None) => return Err(invalid("has no data".into())),
    };
    Ok(Tensor {
        name,
        datatype,
        shape,
        data,
    })
}

/// An output picked for the response, and the form it travels in.
pub struct Selected<'a> {
    pub tensor: &'a Tensor,
    pub binary: bool,
}

/// Pick the outputs the client asked for, in its order; all of `available` when it named none.
pub fn select_outputs<'a>(
    available: &'a [Tensor],
    request: &Request,
) -> Result<Vec<Selected<'a>>, Error> {
    let Some(requested) = &request.outputs else {
        return Ok(available
            .iter()
            .map(|tensor| Selected {
                tensor,
                binary: request.binary_outputs,
            })
            .collect());
    };
    requested
        .iter()
        .map(|wanted| {
            let tensor = available
                .iter()
                .find(|t| t.name == wanted.name)
                .ok_or_else(|| {
                    let names: Vec<&str> = available.iter().map(|t| t.name.as_str()).collect();
                    Error::InvalidInput(format!(
                        "unknown output '{}' (this model has: {})",
                        wanted.name,
                        names.join(", ")
                    ))
                })?;
            Ok(Selected {
                tensor,
                binary: wanted.binary,
            })
        })
        .collect()
}

/// A V2 inference response's JSON part.
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
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<json::TensorData<'a>>,
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

/// An encoded response body.
pub struct Response {
    pub body: Vec<u8>,
    /// The JSON part's length when binary tensors follow it (for `Inference-Header-Content-Length`).
    pub header_length: Option<usize>,
}

/// Encode the response: JSON outputs inline, binary ones after the JSON part in order. A
/// response that would be over `max_bytes` is refused (413) as soon as the encoder gets
/// there, never built whole first.
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[Selected],
    max_bytes: usize,
) -> Result<Response, Error> {
    let response = InferenceResponse {
        model_name,
        model_version,
        id,
        outputs: outputs
            .iter()
            .map(|o| ResponseOutput {
                name: &o.tensor.name,
                datatype: o.tensor.datatype.name(),
                shape: &o.tensor.shape,
                parameters: o.binary.then_some(BinaryParameters {
                    binary_data_size: o.tensor.data.len(),
                }),
                data: (!o.binary).then_some(json::TensorData(o.tensor)),
            })
            .collect(),
    };
    let too_large = || {
        Error::TooLarge(format!(
            "the response would be over the limit of {max_bytes} bytes (weir serve \
             --max-response-bytes); ask for fewer rows or outputs"
        ))
    };
    let binary = outputs.iter().filter(|o| o.binary);
    let binary_bytes: usize = binary.clone().map(|o| o.tensor.data.len()).sum();
    let mut writer = Capped {
        buffer: Vec::new(),
        room: max_bytes.checked_sub(binary_bytes).ok_or_else(too_large)?,
    };
    match serde_json::to_writer(&mut writer, &response) {
        Ok(()) => {}
        Err(e) if e.is_io() => return Err(too_large()),
        Err(e) => return Err(Error::StageFailed(e.to_string())),
    }
    let mut body = writer.buffer;
    if !outputs.iter().any(|o| o.binary) {
        return Ok(Response {
            body,
            header_length: None,
        });
    }
    let header_length = body.len();
    body.reserve_exact(binary_bytes);
    for output in binary {
        body.extend_from_slice(&output.tensor.data);
    }
    Ok(Response {
        body,
        header_length: Some(header_length),
    })
}

/// A buffer that refuses to grow past `room` bytes.
struct Capped {
    buffer: Vec<u8>,
    room: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buffer.len() + bytes.len() > self.room {
            return Err(std::io::Error::other("over the response limit"));
        }
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Property tests: no body, however malformed, panics the decoder or gets anything but a 400;
/// and every well-formed tensor survives the round trip.
#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// Datatype names, valid and not.
    fn datatype() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(Datatype::ALL.map(|d| d.name()).to_vec())
                .prop_map(String::from),
            "[A-Z0-9]{0,6}",
        ]
    }

    /// Arbitrary JSON, nested a few levels.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn shape() -> impl Strategy<Value = Vec<i64>> {
        proptest::collection::vec(
            prop_oneof![-3i64..6, Just(1i64 << 40), Just(i64::MAX), Just(i64::MIN)],
            0..5,
        )
    }

    fn assert_client_error(result: Result<Request, Error>) {
        if let Err(e) = result {
            assert!(matches!(e, Error::InvalidInput(_)), "not a 400: {e:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256),
                                       header in proptest::option::of("[0-9]{0,4}|-1|x")) {
            assert_client_error(decode_request(&body, header.as_deref(), 1 << 24));
        }

        #[test]
        fn arbitrary_inputs_get_a_400_or_decode(name in ".{0,8}", datatype in datatype(),
                                                shape in shape(), data in json_value(),
                                                parameters in json_value()) {
            let body = json!({ "inputs": [{ "name": name, "datatype": datatype, "shape": shape,
                                            "data": data, "parameters": parameters }] });
            assert_client_error(decode_request(body.to_string().as_bytes(), None, 1 << 24));
        }

        #[test]
        fn binary_sections_of_any_size_get_a_400_or_decode(
            size in prop_oneof![0u64..64, Just(u64::MAX)], datatype in datatype(),
            shape in shape(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let header = json!({ "inputs": [{ "name": "x", "datatype": datatype, "shape": shape,
                                              "parameters": { "binary_data_size": size } }] })
                .to_string();
            let mut body = header.clone().into_bytes();
            body.extend(tail);
            assert_client_error(decode_request(&body, Some(&header.len().to_string()), 1 << 24));
        }

        #[test]
        fn integers_round_trip(values in proptest::collection::vec(any::<i32>(), 1..16)) {
            let body = json!({ "inputs": [{ "name": "x", "datatype": "INT32",
                                            "shape": [values.len()], "data": values }] });
            let request = decode_request(body.to_string().as_bytes(), None, 1 << 24).unwrap();
            let tensor = &request.batch.tensors[0];
            let decoded: Vec<i32> = tensor.data.chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
            prop_assert_eq!(decoded, values);
        }

        #[test]
        fn strings_round_trip_through_encode(items in proptest::collection::vec(".{0,10}", 1..8)) {
            let body = json!({ "inputs": [{ "name": "s", "datatype": "BYTES",
                                            "shape": [items.len()], "data": items }] });
            let request = decode_request(body.to_string().as_bytes(), None, 1 << 24).unwrap();
            let selected = select_outputs(&request.batch.tensors, &request).unwrap();
            let response = encode_response("m", "1", None, &selected, 1 << 20).unwrap();
            let answer: Value = serde_json::from_slice(&response.body).unwrap();
            prop_assert_eq!(&answer["outputs"][0]["data"], &json!(items));
        }
    }
}
