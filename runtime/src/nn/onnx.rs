//! The ONNX backend behind `wasi:nn`: tract-onnx, pure Rust, so serving a model needs no native
//! library. A model is parsed, typed and optimized once; each execution then only runs the plan.

use std::sync::Arc;

use anyhow::{Context, bail};
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{DimFact, Factoid};
use tract_onnx::tract_hir::internal::DimLike;

use super::{NnError, TensorType, WasiTensor};

#[cfg(target_endian = "big")]
compile_error!("wasi:nn tensors are little-endian bytes, and the ONNX backend copies them as-is");

/// A first dimension the ONNX file leaves open (skl2onnx's batch dimension, `None` in Python)
/// is this symbol, shared by every input and resolved from each request's shapes: a batch of N
/// rows is one execution. Other open dimensions get a symbol of their own each.
const BATCH_SYMBOL: &str = "N";

/// An ONNX model, optimized and ready to run.
pub struct OnnxGraph {
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<Port>,
    outputs: Vec<String>,
}

/// One graph input: its name, element type and shape (`None`: any size).
struct Port {
    name: String,
    datum_type: DatumType,
    shape: Vec<Option<usize>>,
}

impl std::fmt::Debug for OnnxGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inputs: Vec<&str> = self.inputs.iter().map(|p| p.name.as_str()).collect();
        f.debug_struct("OnnxGraph")
            .field("inputs", &inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

/// Decode `bytes` as an ONNX model: `None` when they are not one (a JSON weights file, say),
/// so a model stage's other artifacts stay plain bytes.
pub fn decode(bytes: &[u8]) -> Option<ModelProto> {
    let proto = tract_onnx::onnx().proto_model_for_read(&mut &*bytes).ok()?;
    let graph = proto.graph.as_ref()?;
    (!graph.node.is_empty() && !proto.opset_import.is_empty()).then_some(proto)
}

impl OnnxGraph {
    /// Type and optimize `proto`. Fails naming every operator the backend lacks.
    pub fn load(proto: &ModelProto) -> anyhow::Result<OnnxGraph> {
        let onnx = tract_onnx::onnx();
        let mut model = onnx
            .model_for_proto_model(proto)
            .context("reading the ONNX graph")?;
        refuse_unsupported_operators(&model, proto)?;
        for index in 0..model.inputs.len() {
            let fact = model.input_fact(index)?.clone();
            if fact.shape.is_open() {
                bail!("graph input #{index} has no declared rank");
            }
            let dims: TVec<TDim> = fact
                .shape
                .dims()
                .enumerate()
                .map(|(axis, d): (usize, &DimFact)| {
                    d.concretize().unwrap_or_else(|| {
                        let name = match axis {
                            0 => BATCH_SYMBOL.to_owned(),
                            _ => format!("{BATCH_SYMBOL}_{index}_{axis}"),
                        };
                        model.symbols.sym(&name).into()
                    })
                })
                .collect();
            let datum_type = fact
                .datum_type
                .concretize()
                .with_context(|| format!("graph input #{index} has no declared element type"))?;
            model.set_input_fact(index, InferenceFact::dt_shape(datum_type, dims))?;
        }
        let inputs = port_names(&model, model.input_outlets()?);
        let outputs = port_names(&model, model.output_outlets()?);
        let typed = model
            .into_optimized()
            .context("typing and optimizing the ONNX graph")?;
        let inputs = inputs
            .into_iter()
            .enumerate()
            .map(|(index, name)| {
                let fact = typed.input_fact(index)?;
                Ok(Port {
                    name,
                    datum_type: fact.datum_type,
                    shape: fact.shape.iter().map(|d| d.to_usize().ok()).collect(),
                })
            })
            .collect::<TractResult<Vec<Port>>>()?;
        let plan = typed.into_runnable()?;
        Ok(OnnxGraph {
            plan,
            inputs,
            outputs,
        })
    }

    /// Run one execution. `inputs` are matched to the graph's inputs by name, or by position
    /// when their names are not the graph's; every graph output comes back, named.
    pub fn run(
        &self,
        inputs: Vec<(String, WasiTensor)>,
    ) -> Result<Vec<(String, WasiTensor)>, NnError> {
        let ordered = self.order_inputs(inputs)?;
        let values = ordered
            .iter()
            .zip(&self.inputs)
            .map(|((name, tensor), port)| port.accept(name, tensor).map(TValue::from))
            .collect::<Result<TVec<TValue>, NnError>>()?;
        let outputs = self
            .plan
            .run(values)
            .map_err(|e| NnError::runtime(format!("the ONNX graph failed: {e:#}")))?;
        self.outputs
            .iter()
            .zip(outputs)
            .map(|(name, value)| Ok((name.clone(), to_wasi(name, &value)?)))
            .collect()
    }

    /// The request's tensors in the graph's input order.
    fn order_inputs(
        &self,
        mut inputs: Vec<(String, WasiTensor)>,
    ) -> Result<Vec<(String, WasiTensor)>, NnError> {
        let by_name = self
            .inputs
            .iter()
            .all(|port| inputs.iter().any(|(name, _)| *name == port.name));
        if by_name {
            let ordered = self.inputs.iter().map(|port| {
                let at = inputs.iter().position(|(name, _)| *name == port.name);
                inputs.swap_remove(at.expect("checked above"))
            });
            return Ok(ordered.collect());
        }
        if inputs.len() == self.inputs.len() {
            return Ok(inputs);
        }
        let expected: Vec<&str> = self.inputs.iter().map(|p| p.name.as_str()).collect();
        let given: Vec<&str> = inputs.iter().map(|(name, _)| name.as_str()).collect();
        Err(NnError::invalid(format!(
            "the ONNX graph takes the inputs [{}]; got [{}]",
            expected.join(", "),
            given.join(", ")
        )))
    }
}

impl Port {
    /// `tensor` as a value for this input, or a refusal naming `name` when its element type or
    /// shape does not fit.
    fn accept(&self, name: &str, tensor: &WasiTensor) -> Result<Tensor, NnError> {
        let datum_type = datum_type(tensor.ty);
        let shape: Vec<usize> = tensor.dimensions.iter().map(|&d| d as usize).collect();
        let fits = shape.len() == self.shape.len()
            && shape
                .iter()
                .zip(&self.shape)
                .all(|(&given, expected)| expected.is_none_or(|e| e == given));
        if datum_type != Some(self.datum_type) || !fits {
            return Err(NnError::invalid(format!(
                "tensor '{name}' is {} {shape:?}; the ONNX graph's input '{}' takes {} {}",
                v2_name(tensor.ty),
                self.name,
                wasi_name(self.datum_type),
                self.describe_shape()
            )));
        }
        let expected_bytes = shape.iter().product::<usize>() * self.datum_type.size_of();
        if tensor.data.len() != expected_bytes {
            return Err(NnError::invalid(format!(
                "tensor '{name}' has {} bytes of data; its shape {shape:?} needs {expected_bytes}",
                tensor.data.len()
            )));
        }
        // SAFETY: the element type is a plain number type (see `datum_type`) and the byte
        // count was checked against the shape just above; tract copies the bytes.
        unsafe { Tensor::from_raw_dt(self.datum_type, &shape, &tensor.data) }
            .map_err(|e| NnError::invalid(format!("tensor '{name}': {e}")))
    }

    /// `[N, 64]`: an open first dimension as `N`, other open ones as `?`.
    fn describe_shape(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .enumerate()
            .map(|(axis, d)| match (axis, d) {
                (_, Some(d)) => d.to_string(),
                (0, None) => BATCH_SYMBOL.to_owned(),
                (_, None) => "?".to_owned(),
            })
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

/// The operators in `model` that tract-onnx could not build, named with their ONNX domain.
fn refuse_unsupported_operators(model: &InferenceModel, proto: &ModelProto) -> anyhow::Result<()> {
    let mut missing: Vec<String> = Vec::new();
    for node in model.nodes() {
        let op_name = node.op.name();
        if op_name.starts_with("Unimplemented(") {
            let operator = proto
                .graph
                .iter()
                .flat_map(|g| &g.node)
                .find(|n| n.name == node.name)
                .map(|n| match n.domain.as_str() {
                    "" => n.op_type.clone(),
                    domain => format!("{domain}.{}", n.op_type),
                })
                .unwrap_or_else(|| op_name.to_string());
            if !missing.contains(&operator) {
                missing.push(operator);
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "the ONNX backend (tract-onnx) does not support the operator{} {}",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        );
    }
    Ok(())
}

/// The names of `outlets`: their labels, else their nodes' names.
fn port_names(model: &InferenceModel, outlets: &[OutletId]) -> Vec<String> {
    outlets
        .iter()
        .map(|&outlet| {
            model
                .outlet_label(outlet)
                .map(str::to_owned)
                .unwrap_or_else(|| model.node(outlet.node).name.clone())
        })
        .collect()
}

/// The tract element type of a `wasi:nn` tensor type; `None` for BF16, which tract lacks.
fn datum_type(ty: TensorType) -> Option<DatumType> {
    Some(match ty {
        TensorType::Fp16 => DatumType::F16,
        TensorType::Fp32 => DatumType::F32,
        TensorType::Fp64 => DatumType::F64,
        TensorType::U8 => DatumType::U8,
        TensorType::I32 => DatumType::I32,
        TensorType::I64 => DatumType::I64,
        TensorType::Bf16 => return None,
    })
}

/// The `wasi:nn` tensor type of a tract element type, if `wasi:nn` can carry it.
fn tensor_type(datum_type: DatumType) -> Option<TensorType> {
    Some(match datum_type {
        DatumType::F16 => TensorType::Fp16,
        DatumType::F32 => TensorType::Fp32,
        DatumType::F64 => TensorType::Fp64,
        DatumType::U8 => TensorType::U8,
        DatumType::I32 => TensorType::I32,
        DatumType::I64 => TensorType::I64,
        _ => return None,
    })
}

/// How an error message names a tract element type: by its V2 datatype, as clients know it.
fn wasi_name(datum_type: DatumType) -> String {
    match tensor_type(datum_type) {
        Some(ty) => v2_name(ty).to_owned(),
        None => format!("{datum_type:?}"),
    }
}

/// The V2 datatype of a `wasi:nn` element type.
fn v2_name(ty: TensorType) -> &'static str {
    match ty {
        TensorType::Fp16 => "FP16",
        TensorType::Fp32 => "FP32",
        TensorType::Fp64 => "FP64",
        TensorType::Bf16 => "BF16",
        TensorType::U8 => "UINT8",
        TensorType::I32 => "INT32",
        TensorType::I64 => "INT64",
    }
}

/// An output value as a `wasi:nn` tensor. tract computes some INT64 outputs (labels after an
/// ArgMax and Cast, say) as its symbolic-dimension type; they leave as INT64.
fn to_wasi(name: &str, value: &TValue) -> Result<WasiTensor, NnError> {
    let cast;
    let value = if value.datum_type() == DatumType::TDim {
        cast = value
            .cast_to_dt(DatumType::I64)
            .map_err(|e| NnError::runtime(format!("graph output '{name}': {e}")))?;
        &*cast
    } else {
        &**value
    };
    let ty = tensor_type(value.datum_type()).ok_or_else(|| {
        NnError::runtime(format!(
            "graph output '{name}' is {:?}, which wasi:nn tensors cannot carry",
            value.datum_type()
        ))
    })?;
    let dimensions = value
        .shape()
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| NnError::runtime(format!("graph output '{name}' is too large")))?;
    Ok(WasiTensor {
        dimensions,
        ty,
        data: value.as_bytes().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ErrorCode;

    const DIGITS: &[u8] = include_bytes!("../../../examples/digits/mlp.onnx");

    /// An FP32 tensor of `values` in `dimensions`.
    fn fp32(dimensions: Vec<u32>, values: impl IntoIterator<Item = f32>) -> WasiTensor {
        WasiTensor {
            dimensions,
            ty: TensorType::Fp32,
            data: values.into_iter().flat_map(f32::to_le_bytes).collect(),
        }
    }

    /// The values of an FP32 tensor.
    fn floats(tensor: &WasiTensor) -> Vec<f32> {
        tensor
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn pixels(rows: u32, columns: u32) -> WasiTensor {
        let values = (0..rows * columns).map(|i| (i % 17) as f32 / 16.0);
        fp32(vec![rows, columns], values)
    }

    fn digits() -> OnnxGraph {
        OnnxGraph::load(&decode(DIGITS).expect("an ONNX model")).unwrap()
    }

    #[test]
    fn a_batch_of_rows_is_one_execution_with_a_row_per_output() {
        let outputs = digits().run(vec![("x".into(), pixels(5, 64))]).unwrap();
        let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["label", "probabilities"]);
        assert_eq!(outputs[0].1.dimensions, [5]);
        assert_eq!(outputs[0].1.ty, TensorType::I64);
        assert_eq!(outputs[1].1.dimensions, [5, 10]);
        for row in floats(&outputs[1].1).chunks_exact(10) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        }
    }

    #[test]
    fn a_wrong_shape_or_type_is_invalid_argument_naming_the_tensor() {
        let graph = digits();
        let error = graph
            .run(vec![("pixels".into(), pixels(2, 63))])
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert!(
            error.message.contains("tensor 'pixels'"),
            "{}",
            error.message
        );
        assert!(error.message.contains("[N, 64]"), "{}", error.message);
        let mut wide = pixels(1, 32);
        wide.ty = TensorType::Fp64;
        let error = graph.run(vec![("pixels".into(), wide)]).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert!(error.message.contains("is FP64"), "{}", error.message);
        let error = graph.run(Vec::new()).unwrap_err();
        assert!(
            error.message.contains("takes the inputs [pixels]"),
            "{}",
            error.message
        );
    }

    #[test]
    fn an_unknown_operator_is_refused_by_name() {
        let mut proto = decode(DIGITS).unwrap();
        let node = &mut proto.graph.as_mut().unwrap().node[3];
        node.op_type = "FancyActivation".into();
        node.domain = "com.example".into();
        let error = OnnxGraph::load(&proto).unwrap_err();
        assert!(
            format!("{error:#}").contains("operator com.example.FancyActivation"),
            "{error:#}"
        );
    }

    /// `y = relu(x)`, with `x` FP32 of two open dimensions.
    fn relu_of_two_open_dimensions() -> ModelProto {
        use tract_onnx::pb::*;
        let open = tensor_shape_proto::Dimension::default;
        let value = |name: &str| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(TensorShapeProto {
                        dim: vec![open(), open()],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                version: 17,
                ..Default::default()
            }],
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    name: "relu".into(),
                    op_type: "Relu".into(),
                    input: vec!["x".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                }],
                input: vec![value("x")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn open_dimensions_after_the_first_are_independent_of_the_batch() {
        let graph = OnnxGraph::load(&relu_of_two_open_dimensions()).unwrap();
        let x = fp32(vec![2, 3], [-1.0, 2.0, -3.0, 4.0, 5.0, -6.0]);
        let outputs = graph.run(vec![("x".into(), x)]).unwrap();
        assert_eq!(outputs[0].1.dimensions, [2, 3]);
        assert_eq!(floats(&outputs[0].1), [0.0, 2.0, 0.0, 4.0, 5.0, 0.0]);
        let wide = graph.run(vec![("x".into(), pixels(1, 5))]).unwrap();
        assert_eq!(wide[0].1.dimensions, [1, 5]);
    }

    #[test]
    fn json_is_not_onnx() {
        assert!(decode(br#"{"coef": [[1.0]], "intercept": [0.0]}"#).is_none());
        assert!(decode(b"").is_none());
    }
}
