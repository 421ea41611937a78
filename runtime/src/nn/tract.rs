//! The tract backend: tract-onnx, pure Rust, so serving a model needs no native library. A
//! model is parsed, typed and optimized once; each execution then only runs the plan.

use anyhow::{Context, bail};
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{DimFact, Factoid};
use tract_onnx::tract_hir::internal::DimLike;

use super::{NnError, Port};
use crate::tensor::{Datatype, Tensor as V2Tensor};

#[cfg(target_endian = "big")]
compile_error!("tensors are little-endian bytes, and the tract backend copies them as-is");

/// A first dimension the ONNX file leaves open (skl2onnx's batch dimension, `None` in Python)
/// is this symbol, shared by every input and resolved from each request's shapes: a batch of N
/// rows is one execution. Other open dimensions get a symbol of their own each.
const BATCH_SYMBOL: &str = "N";

/// An optimized model, ready to run.
pub struct Plan(Arc<TypedRunnableModel>);

/// Decode `bytes` as an ONNX model, if they are one (not a JSON weights file, say: a model
/// stage's other artifacts stay plain bytes).
pub fn decode(bytes: &[u8]) -> Option<ModelProto> {
    let proto = tract_onnx::onnx().proto_model_for_read(&mut &*bytes).ok()?;
    let graph = proto.graph.as_ref()?;
    (!graph.node.is_empty() && !proto.opset_import.is_empty()).then_some(proto)
}

impl Plan {
    /// Type and optimize the ONNX model `proto`; its inputs and output names. Fails naming
    /// every operator tract lacks.
    pub fn load(proto: &ModelProto) -> anyhow::Result<(Plan, Vec<Port>, Vec<String>)> {
        let onnx = tract_onnx::onnx();
        let mut model = (onnx.model_for_proto_model(proto))
            .context("tract-onnx could not read the ONNX graph")?;
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
        let typed = (model.into_optimized())
            .context("tract-onnx could not type and optimize the ONNX graph")?;
        let ports = inputs
            .into_iter()
            .enumerate()
            .map(|(index, name)| {
                let fact = typed.input_fact(index)?;
                Ok(Port {
                    name,
                    datatype: datatype(fact.datum_type),
                    type_name: type_name(fact.datum_type),
                    shape: fact.shape.iter().map(|d| d.to_usize().ok()).collect(),
                })
            })
            .collect::<TractResult<Vec<Port>>>()?;
        Ok((Plan(typed.into_runnable()?), ports, outputs))
    }

    /// Run one execution on inputs in the graph's order, already checked against its ports;
    /// the outputs in the graph's order.
    pub fn run(&self, inputs: Vec<V2Tensor>) -> Result<Vec<V2Tensor>, NnError> {
        let values = (inputs.iter())
            .map(|t| to_tract(t).map(TValue::from))
            .collect::<Result<TVec<TValue>, NnError>>()?;
        let outputs = (self.0.run(values))
            .map_err(|e| NnError::runtime(format!("the ONNX graph failed: {e:#}")))?;
        outputs.iter().map(from_tract).collect()
    }
}

/// A pipeline tensor as tract's. Its datatype matches the graph's input (checked before).
fn to_tract(tensor: &V2Tensor) -> Result<Tensor, NnError> {
    let shape: Vec<usize> = tensor.shape.iter().map(|&d| d as usize).collect();
    let invalid = |e: TractError| NnError::invalid(format!("tensor '{}': {e}", tensor.name));
    if tensor.datatype == Datatype::Bytes {
        let strings = tensor.strings().map_err(NnError::invalid)?;
        let array = tract_ndarray::ArrayD::from_shape_vec(shape, strings)
            .map_err(|e| NnError::invalid(format!("tensor '{}': {e}", tensor.name)))?;
        return Ok(array.into());
    }
    let datum_type = datum_type(tensor.datatype).ok_or_else(|| {
        NnError::invalid(format!(
            "tensor '{}' is {}, which tract cannot take",
            tensor.name, tensor.datatype
        ))
    })?;
    // SAFETY: the element type is a plain number type (see `datum_type`) and the byte count
    // fits the shape (the protocol's decoder and the stage's output checks see to it); tract
    // copies the bytes.
    unsafe { Tensor::from_raw_dt(datum_type, &shape, &tensor.data) }.map_err(invalid)
}

/// An output value as a pipeline tensor (named later). tract computes some INT64 outputs
/// (labels after an ArgMax and Cast, say) as its symbolic-dimension type; they leave as INT64.
fn from_tract(value: &TValue) -> Result<V2Tensor, NnError> {
    let cast;
    let value = if value.datum_type() == DatumType::TDim {
        cast = (value.cast_to_dt(DatumType::I64))
            .map_err(|e| NnError::runtime(format!("a graph output: {e}")))?;
        &*cast
    } else {
        &**value
    };
    let shape = value.shape().iter().map(|&d| d as u64).collect();
    let (datatype, data) = match value.datum_type() {
        DatumType::String => {
            let strings = (value.to_plain_array_view::<String>())
                .map_err(|e| NnError::runtime(format!("a string output: {e}")))?;
            (Datatype::Bytes, crate::tensor::bytes_data(strings.iter()))
        }
        other => {
            let datatype = datatype(other).ok_or_else(|| {
                NnError::runtime(format!(
                    "a graph output is {other:?}, which no V2 datatype carries"
                ))
            })?;
            (datatype, value.as_bytes().to_vec())
        }
    };
    Ok(V2Tensor {
        name: String::new(),
        datatype,
        shape,
        data,
    })
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
            "tract-onnx does not support the operator{} {}",
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

/// tract's element type for a V2 datatype with a fixed size; `None` for BF16 (tract lacks it)
/// and BYTES (strings, built apart).
fn datum_type(datatype: Datatype) -> Option<DatumType> {
    Some(match datatype {
        Datatype::Bool => DatumType::Bool,
        Datatype::Uint8 => DatumType::U8,
        Datatype::Uint16 => DatumType::U16,
        Datatype::Uint32 => DatumType::U32,
        Datatype::Uint64 => DatumType::U64,
        Datatype::Int8 => DatumType::I8,
        Datatype::Int16 => DatumType::I16,
        Datatype::Int32 => DatumType::I32,
        Datatype::Int64 => DatumType::I64,
        Datatype::Fp16 => DatumType::F16,
        Datatype::Fp32 => DatumType::F32,
        Datatype::Fp64 => DatumType::F64,
        Datatype::Bf16 | Datatype::Bytes => return None,
    })
}

/// The V2 datatype of a tract element type, if there is one.
fn datatype(datum_type: DatumType) -> Option<Datatype> {
    Some(match datum_type {
        DatumType::Bool => Datatype::Bool,
        DatumType::U8 => Datatype::Uint8,
        DatumType::U16 => Datatype::Uint16,
        DatumType::U32 => Datatype::Uint32,
        DatumType::U64 => Datatype::Uint64,
        DatumType::I8 => Datatype::Int8,
        DatumType::I16 => Datatype::Int16,
        DatumType::I32 => Datatype::Int32,
        DatumType::I64 => Datatype::Int64,
        DatumType::F16 => Datatype::Fp16,
        DatumType::F32 => Datatype::Fp32,
        DatumType::F64 => Datatype::Fp64,
        DatumType::String => Datatype::Bytes,
        _ => return None,
    })
}

/// How an error message names a tract element type: by its V2 datatype, as clients know it.
fn type_name(datum_type: DatumType) -> String {
    match datatype(datum_type) {
        Some(datatype) => datatype.name().to_owned(),
        None => format!("{datum_type:?}"),
    }
}
