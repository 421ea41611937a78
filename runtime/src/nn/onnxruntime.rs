//! The ONNX Runtime backend: Microsoft's runtime, the one Triton and KServe serve ONNX models
//! with, for the operators tract lacks (scikit-learn's `ai.onnx.ml` domain: trees, SVMs,
//! scalers, string labels) and for its speed. Weir never downloads it: the shared library is
//! loaded at start from where the machine has it — `--onnxruntime-lib` (or
//! `WEIR_ONNXRUNTIME_LIB`), else the `onnxruntime` Python package of the active environment,
//! else the usual library directories — and without it Weir runs on tract alone.
//!
//! One session per model artifact, shared by the pipeline versions that pin it. A session
//! runs one execution at a time (the `ort` crate requires it), on `threads` intra-op threads
//! that sleep rather than spin between runs, since the server has other work for the cores:
//! measured with wrk on the CNN at batch 32 (2 cores), spinning served one client 20% faster
//! but four clients 22% slower, its threads spinning while the workers parse requests (and
//! spinning within a run only, `session.force_spinning_stop`, was slower for both).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use ort::environment::Environment;
use ort::memory::Allocator;
use ort::session::{RunOptions, Session};
use ort::value::{DynTensor, DynValue, TensorElementType, ValueType};

use super::{NnError, Port};
use crate::tensor::{Datatype, Tensor};

/// The library's file name on this platform.
const LIBRARY: &str = "libonnxruntime.so";

/// Directories searched for [`LIBRARY`] when no path is given and no Python package has one.
const SYSTEM_DIRS: &[&str] = &[
    "/usr/local/lib",
    "/usr/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/opt/onnxruntime/lib",
];

/// ONNX Runtime, loaded.
pub struct OnnxRuntime {
    environment: Environment,
    /// Intra-op threads of each session.
    threads: usize,
}

/// The process's ONNX Runtime: the library can be loaded once per process.
static LOADED: OnceLock<Arc<OnnxRuntime>> = OnceLock::new();

impl OnnxRuntime {
    /// Load ONNX Runtime from `library`, with `threads` intra-op threads per session. Once a
    /// library is loaded, later calls get it (whatever their path).
    pub fn load(library: &Path, threads: usize) -> anyhow::Result<Arc<OnnxRuntime>> {
        if let Some(loaded) = LOADED.get() {
            return Ok(loaded.clone());
        }
        let environment = ort::init_from(library)
            .map_err(|e| anyhow!("{e}"))?
            .with_name("weir")
            .build()
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("starting ONNX Runtime from {}", library.display()))?;
        let runtime = Arc::new(OnnxRuntime {
            environment,
            threads: threads.max(1),
        });
        Ok(LOADED.get_or_init(|| runtime).clone())
    }

    /// The ONNX Runtime environment sessions are made in (for a baseline that runs the `ort`
    /// crate directly, as the benchmarks do).
    pub fn environment(&self) -> &Environment {
        &self.environment
    }

    /// Where ONNX Runtime is on this machine, and how it was found: `explicit` (the flag or
    /// its environment variable), else the `onnxruntime` Python package that `python3` (the
    /// active environment's, when one is active) imports, else the usual library directories.
    pub fn find(explicit: Option<&Path>) -> Option<(PathBuf, &'static str)> {
        if let Some(path) = explicit {
            return Some((path.to_path_buf(), "given by --onnxruntime-lib"));
        }
        if let Some(path) = python_package_library() {
            return Some((path, "found in the onnxruntime Python package"));
        }
        SYSTEM_DIRS
            .iter()
            .find_map(|dir| library_in(Path::new(dir)))
            .map(|path| (path, "found in the system's library directories"))
    }

    /// Load the ONNX model in `bytes` into a session; its inputs and output names. Inputs and
    /// outputs must be tensors: skl2onnx's ZipMap (a sequence of maps) is refused, naming the
    /// export option that leaves it out.
    pub(super) fn load_model(
        &self,
        bytes: &[u8],
    ) -> anyhow::Result<(Model, Vec<Port>, Vec<String>)> {
        let session = Session::builder(&self.environment)
            .and_then(|b| b.with_intra_threads(self.threads).map_err(Into::into))
            .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
            .and_then(|b| b.with_intra_op_spinning(false).map_err(Into::into))
            .map_err(|e| anyhow!("{e}"))?
            .commit_from_memory(bytes)
            .map_err(|e| anyhow!("ONNX Runtime could not load the model: {e}"))?;
        let mut ports = Vec::new();
        for input in session.inputs() {
            let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
                bail!("graph input '{}' is not a tensor", input.name());
            };
            ports.push(Port {
                name: input.name().to_owned(),
                datatype: datatype(*ty),
                type_name: datatype(*ty).map_or_else(|| format!("{ty:?}"), |d| d.name().into()),
                shape: shape.iter().map(|&d| usize::try_from(d).ok()).collect(),
            });
        }
        let mut outputs = Vec::new();
        for output in session.outputs() {
            if !matches!(output.dtype(), ValueType::Tensor { .. }) {
                bail!(
                    "graph output '{}' is not a tensor but a {}; export plain tensors (for \
                     skl2onnx, options={{id(model): {{'zipmap': False}}}})",
                    output.name(),
                    output.dtype()
                );
            }
            outputs.push(output.name().to_owned());
        }
        let model = Model {
            session: Mutex::new(session),
        };
        Ok((model, ports, outputs))
    }
}

/// A model in an ONNX Runtime session.
pub struct Model {
    session: Mutex<Session>,
}

impl Model {
    /// Options for one run, through which a deadline can stop it.
    pub fn run_options(&self) -> Result<Arc<RunOptions>, NnError> {
        RunOptions::new()
            .map(Arc::new)
            .map_err(|e| NnError::runtime(format!("ONNX Runtime: {e}")))
    }

    /// Run one execution on inputs named and ordered as the graph's, already checked against
    /// its ports; the outputs in the graph's order.
    pub fn run(&self, inputs: Vec<Tensor>, options: &RunOptions) -> Result<Vec<Tensor>, NnError> {
        let values = (inputs.iter())
            .map(|tensor| Ok((tensor.name.as_str(), to_ort(tensor)?)))
            .collect::<Result<Vec<(&str, DynValue)>, NnError>>()?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = (session.run_with_options(values, options))
            .map_err(|e| NnError::runtime(format!("the ONNX graph failed: {e}")))?;
        outputs
            .into_iter()
            .map(|(_, value)| from_ort(value))
            .collect()
    }
}

/// Stops ONNX Runtime runs that pass their deadline: one thread for the process, asleep until
/// the earliest deadline. Registering costs a lock and a push; a task per run cost about
/// 35 µs. A run that ended first has dropped its options, and is skipped.
struct Watchdog {
    deadlines: Mutex<BinaryHeap<Reverse<Deadline>>>,
    earlier: Condvar,
}

/// A run's deadline and its options (through which it is told to stop).
struct Deadline(Instant, Weak<RunOptions>);

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Deadline {}
impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// Tell the run with `options` to stop once `deadline` passes, unless it ended before.
pub fn stop_at(deadline: Instant, options: &Arc<RunOptions>) {
    static WATCHDOG: OnceLock<Arc<Watchdog>> = OnceLock::new();
    let watchdog = WATCHDOG.get_or_init(|| {
        let watchdog = Arc::new(Watchdog {
            deadlines: Mutex::default(),
            earlier: Condvar::new(),
        });
        let watching = watchdog.clone();
        std::thread::Builder::new()
            .name("weir-onnxruntime-deadlines".into())
            .spawn(move || watching.watch())
            .expect("spawning the deadline thread");
        watchdog
    });
    let mut deadlines = watchdog.deadlines.lock().unwrap_or_else(|e| e.into_inner());
    let earliest = deadlines.peek().is_none_or(|Reverse(d)| deadline < d.0);
    deadlines.push(Reverse(Deadline(deadline, Arc::downgrade(options))));
    if earliest {
        watchdog.earlier.notify_one();
    }
}

impl Watchdog {
    fn watch(&self) {
        let mut deadlines = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            while deadlines.peek().is_some_and(|Reverse(d)| d.0 <= now) {
                let Reverse(Deadline(_, options)) = deadlines.pop().expect("peeked");
                if let Some(options) = options.upgrade() {
                    let _ = options.terminate();
                }
            }
            deadlines = match deadlines.peek().map(|Reverse(d)| d.0 - now) {
                Some(wait) => {
                    self.earlier
                        .wait_timeout(deadlines, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self
                    .earlier
                    .wait(deadlines)
                    .unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

/// A pipeline tensor as an ONNX Runtime value. Its datatype matches the graph's input.
fn to_ort(tensor: &Tensor) -> Result<DynValue, NnError> {
    let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
    let failed = |e: ort::Error| NnError::invalid(format!("tensor '{}': {e}", tensor.name));
    if tensor.datatype == Datatype::Bytes {
        let strings = tensor.strings().map_err(NnError::invalid)?;
        let value = ort::value::Tensor::from_string_array((shape, &strings[..])).map_err(failed)?;
        return Ok(value.into_dyn());
    }
    let mut value = DynTensor::new(&Allocator::default(), element_type(tensor.datatype), shape)
        .map_err(failed)?;
    let size = tensor.data.len();
    if size > 0 {
        // SAFETY: ONNX Runtime allocated the tensor in CPU memory for exactly its shape's
        // elements of the datatype, and `tensor.data` holds that many bytes (the protocol's
        // decoder and the stage's output checks see to it), little-endian as the host's.
        unsafe {
            std::ptr::copy_nonoverlapping(tensor.data.as_ptr(), value.data_ptr_mut().cast(), size);
        }
    }
    Ok(value.into_dyn())
}

/// An output value as a pipeline tensor (named later).
fn from_ort(value: DynValue) -> Result<Tensor, NnError> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype().clone() else {
        return Err(NnError::runtime("a graph output is not a tensor".into()));
    };
    let dims: Vec<u64> = shape.iter().map(|&d| d.max(0) as u64).collect();
    if ty == TensorElementType::String {
        let (_, strings) = (value.try_extract_strings())
            .map_err(|e| NnError::runtime(format!("a string output: {e}")))?;
        return Ok(tensor(
            Datatype::Bytes,
            dims,
            crate::tensor::bytes_data(strings.iter()),
        ));
    }
    let datatype = datatype(ty).ok_or_else(|| {
        NnError::runtime(format!(
            "a graph output is {ty:?}, which no V2 datatype carries"
        ))
    })?;
    let count = crate::tensor::element_count(&dims).unwrap_or(0) as usize;
    let size = ty.byte_size(count).unwrap_or(0);
    let value = (value.downcast::<ort::value::DynTensorValueType>())
        .map_err(|e| NnError::runtime(format!("a graph output: {e}")))?;
    let mut data = vec![0u8; size];
    if size > 0 {
        // SAFETY: the output lives in CPU memory (the CPU execution provider) and holds
        // `count` elements of `ty`, `size` bytes in all.
        unsafe {
            std::ptr::copy_nonoverlapping(value.data_ptr().cast::<u8>(), data.as_mut_ptr(), size);
        }
    }
    Ok(tensor(datatype, dims, data))
}

fn tensor(datatype: Datatype, shape: Vec<u64>, data: Vec<u8>) -> Tensor {
    Tensor {
        name: String::new(),
        datatype,
        shape,
        data,
    }
}

/// ONNX Runtime's element type for a V2 datatype.
fn element_type(datatype: Datatype) -> TensorElementType {
    match datatype {
        Datatype::Bool => TensorElementType::Bool,
        Datatype::Uint8 => TensorElementType::Uint8,
        Datatype::Uint16 => TensorElementType::Uint16,
        Datatype::Uint32 => TensorElementType::Uint32,
        Datatype::Uint64 => TensorElementType::Uint64,
        Datatype::Int8 => TensorElementType::Int8,
        Datatype::Int16 => TensorElementType::Int16,
        Datatype::Int32 => TensorElementType::Int32,
        Datatype::Int64 => TensorElementType::Int64,
        Datatype::Fp16 => TensorElementType::Float16,
        Datatype::Fp32 => TensorElementType::Float32,
        Datatype::Fp64 => TensorElementType::Float64,
        Datatype::Bf16 => TensorElementType::Bfloat16,
        Datatype::Bytes => TensorElementType::String,
    }
}

/// The V2 datatype of an ONNX Runtime element type, if there is one.
fn datatype(ty: TensorElementType) -> Option<Datatype> {
    Datatype::ALL.into_iter().find(|&d| element_type(d) == ty)
}

/// The ONNX Runtime library in the `onnxruntime` package `python3` imports, if any. The
/// package is found without importing it (which takes a second).
fn python_package_library() -> Option<PathBuf> {
    let script = "import importlib.util as u; s = u.find_spec('onnxruntime'); \
                  print(s.submodule_search_locations[0] if s else '')";
    let output = Command::new("python3").args(["-c", script]).output().ok()?;
    let package = String::from_utf8(output.stdout).ok()?;
    let package = package.trim();
    (!package.is_empty()).then(|| library_in(&Path::new(package).join("capi")))?
}

/// The ONNX Runtime library in `dir` (`libonnxruntime.so` or a versioned one), if any.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == LIBRARY || n.starts_with(&format!("{LIBRARY}.")))
        })
        .collect();
    found.sort();
    found.pop()
}
