//! `actc._actc`, the native half of the `actc` Python package (`python/actc/` is the
//! other): plans as bytes, and a trainer over NumPy arrays. Flags reach the command line's
//! own parser, so options, defaults and error messages are the CLI's.

use actc::driver::cli;
use actc::driver::run::RunData;
use actc::driver::trainer::{Scores, Targets, Trainer};
use actc_runtime::data::{Dataset, SampleValues};
use actc_runtime::plan::Plan;
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

create_exception!(
    _actc,
    ActcError,
    PyException,
    "A rejected call: bad flags, files, arrays or plans, with the command line's message."
);

fn fail(msg: impl Into<String>) -> PyErr {
    ActcError::new_err(msg.into())
}

fn actc_err(e: actc::Error) -> PyErr {
    fail(e.0)
}

/// A compiled plan, held as the bytes of its file.
#[pyclass(module = "actc._actc", name = "Plan", frozen)]
struct PyPlan {
    bytes: Vec<u8>,
    /// Where it came from, for messages.
    name: String,
}

impl PyPlan {
    fn decoded(&self) -> PyResult<Plan> {
        Plan::from_bytes(&self.bytes).map_err(|e| fail(format!("{}: {e}", self.name)))
    }
}

#[pymethods]
impl PyPlan {
    /// What `actc inspect --json` prints of the plan, as a JSON string.
    fn inspect_json(&self) -> PyResult<String> {
        let plan = self.decoded()?;
        Ok(actc::driver::inspect::json(&plan).to_string())
    }

    /// Writes the plan file (through a temporary file, so never a partial one).
    fn save(&self, path: PathBuf) -> PyResult<()> {
        actc::driver::fs::check_output(&path, &[]).map_err(actc_err)?;
        actc::driver::fs::write_atomically(&path, &self.bytes).map_err(actc_err)
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    fn __len__(&self) -> usize {
        self.bytes.len()
    }
}

/// `actc compile` with `args` (the program name first), the GIL released while it runs.
#[pyfunction]
fn compile_args(py: Python<'_>, args: Vec<String>) -> PyResult<PyPlan> {
    let name = args.get(2).cloned().unwrap_or_default();
    let bytes = py.detach(|| cli::compile_in_process(&args)).map_err(fail)?;
    Ok(PyPlan { bytes, name })
}

/// Reads a plan file (or a checkpoint saved by `actc train` or `Trainer.save_checkpoint`).
#[pyfunction]
fn load(path: PathBuf) -> PyResult<PyPlan> {
    let name = path.display().to_string();
    let bytes = std::fs::read(&path).map_err(|e| fail(format!("{name}: cannot read: {e}")))?;
    let plan = PyPlan { bytes, name };
    plan.decoded()?;
    Ok(plan)
}

/// Threads for actc's kernels and the frozen prefix (for every trainer in the process).
#[pyfunction]
fn set_threads(n: usize) -> PyResult<()> {
    cli::set_threads(n).map_err(actc_err)
}

/// A float32 array's values, borrowed when it is C-contiguous, else copied.
fn floats<'a>(
    a: &'a Bound<'_, PyAny>,
    what: &str,
    keep: &'a mut Option<Vec<f32>>,
) -> PyResult<&'a [f32]> {
    let arr = a.cast::<PyArrayDyn<f32>>().map_err(|_| {
        fail(format!(
            "{what} must be a numpy float32 array, got {}; convert it with numpy.asarray(x, dtype=numpy.float32)",
            describe(a)
        ))
    })?;
    if arr.is_c_contiguous() {
        // SAFETY: the array lives as long as `a`, and nothing in this call writes to it. A
        // Python thread writing into it while a step runs (the GIL released) would race
        // with the step, as with any extension that reads arrays without the GIL; README
        // says not to.
        return Ok(unsafe { arr.as_slice() }.expect("contiguous"));
    }
    Ok(keep.insert(owned(arr)))
}

/// A copy of an array's values in their logical (C) order, whatever its strides.
fn owned<T: numpy::Element + Copy>(arr: &Bound<'_, PyArrayDyn<T>>) -> Vec<T> {
    arr.to_owned_array().iter().copied().collect()
}

/// One class index per sample from an integer array.
fn classes(a: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
    if let Ok(arr) = a.cast::<PyArrayDyn<i64>>() {
        return Ok(owned(arr));
    }
    if let Ok(arr) = a.cast::<PyArrayDyn<i32>>() {
        return Ok(owned(arr).into_iter().map(i64::from).collect());
    }
    Err(fail(format!(
        "{what} must be a numpy int64 or int32 array of class indices, got {}",
        describe(a)
    )))
}

fn describe(a: &Bound<'_, PyAny>) -> String {
    match a.cast::<numpy::PyUntypedArray>() {
        Ok(arr) => format!("an array of {} with shape {:?}", arr.dtype(), arr.shape()),
        Err(_) => a
            .get_type()
            .name()
            .map_or("another type".into(), |n| n.to_string()),
    }
}

fn shape_of(a: &Bound<'_, PyAny>) -> Option<Vec<usize>> {
    a.cast::<numpy::PyUntypedArray>()
        .ok()
        .map(|arr| arr.shape().to_vec())
}

/// A data set from arrays `x` (uint8 pixels or float32 values, the sample count first) and
/// `y`: one class index per sample, or with `regression` float32 targets (the sample count
/// first).
fn dataset(
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    what: &str,
    regression: bool,
) -> PyResult<Dataset> {
    let shape = shape_of(x).ok_or_else(|| {
        fail(format!(
            "{what} samples must be a numpy array, got {}",
            describe(x)
        ))
    })?;
    let values = if let Ok(arr) = x.cast::<PyArrayDyn<u8>>() {
        SampleValues::U8(owned(arr))
    } else {
        let mut keep = None;
        SampleValues::F32(floats(x, &format!("{what} samples"), &mut keep)?.to_vec())
    };
    let source = format!("<{what} arrays>");
    if regression {
        let mut keep = None;
        let targets = floats(y, &format!("{what} targets"), &mut keep)?.to_vec();
        let target_shape = shape_of(y).unwrap_or_default();
        return Dataset::from_arrays_with_targets(
            &source,
            shape,
            values,
            target_shape,
            targets,
            None,
        )
        .map_err(|e| fail(e.to_string()));
    }
    let labels = classes(y, &format!("{what} labels"))?;
    Dataset::from_arrays(&source, shape, values, labels, None).map_err(|e| fail(e.to_string()))
}

/// Trains a plan in process: steps on NumPy batches, `fit` on a data set, weights by ONNX
/// initializer name, checkpoints and export.
#[pyclass(module = "actc._actc", name = "Trainer")]
struct PyTrainer {
    /// `None` once closed.
    inner: Option<Trainer>,
}

/// A batch of model input: float32 of the plan's input shape (the batch size is compiled in).
fn batch<'a>(
    trainer: &Trainer,
    inputs: &'a Bound<'_, PyAny>,
    keep: &'a mut Option<Vec<f32>>,
) -> PyResult<&'a [f32]> {
    let x = floats(inputs, "inputs", keep)?;
    let want = trainer.input_shape();
    match shape_of(inputs) {
        Some(got) if got != want => Err(fail(format!(
            "inputs have shape {got:?}; this plan takes {want:?} (the batch size is compiled in)"
        ))),
        _ => Ok(x),
    }
}

impl PyTrainer {
    fn get(&mut self) -> PyResult<&mut Trainer> {
        self.inner
            .as_mut()
            .ok_or_else(|| fail("this trainer is closed"))
    }

    /// The targets of a step: class indices, or float targets for a `--loss mse` plan.
    fn with_targets<T>(
        &mut self,
        py: Python<'_>,
        labels: &Bound<'_, PyAny>,
        run: impl FnOnce(&mut Trainer, Targets) -> actc::Result<T> + Send,
    ) -> PyResult<T>
    where
        T: Send,
    {
        let trainer = self.get()?;
        if trainer.takes_classes() {
            let l = classes(labels, "labels")?;
            py.detach(|| run(trainer, Targets::Classes(&l)))
        } else {
            let mut keep = None;
            let t = floats(labels, "targets", &mut keep)?;
            py.detach(|| run(trainer, Targets::Values(t)))
        }
        .map_err(actc_err)
    }
}

#[pymethods]
impl PyTrainer {
    #[new]
    fn new(py: Python<'_>, plan: &PyPlan) -> PyResult<PyTrainer> {
        let inner = py
            .detach(|| Trainer::new(&plan.bytes, &plan.name))
            .map_err(actc_err)?;
        Ok(PyTrainer { inner: Some(inner) })
    }

    /// The model input's shape, the batch first.
    #[getter]
    fn input_shape(&mut self) -> PyResult<Vec<usize>> {
        Ok(self.get()?.input_shape())
    }

    /// The trained output's shape, the batch first.
    #[getter]
    fn output_shape(&mut self) -> PyResult<Vec<usize>> {
        Ok(self.get()?.output_shape())
    }

    /// Updates taken so far.
    #[getter]
    fn updates(&mut self) -> PyResult<u64> {
        Ok(self.get()?.updates())
    }

    /// The number of updates the lr schedule spans for steps taken one by one.
    fn set_total_steps(&mut self, total: u64) -> PyResult<()> {
        self.get()?.set_total_steps(total);
        Ok(())
    }

    fn train_step(
        &mut self,
        py: Python<'_>,
        inputs: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
    ) -> PyResult<f32> {
        let mut keep = None;
        let x = batch(self.get()?, inputs, &mut keep)?;
        self.with_targets(py, labels, |t, y| t.train_step(x, y))
    }

    fn eval_step(
        &mut self,
        py: Python<'_>,
        inputs: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
    ) -> PyResult<(f64, Option<f64>)> {
        let mut keep = None;
        let x = batch(self.get()?, inputs, &mut keep)?;
        let Scores { loss, accuracy } = self.with_targets(py, labels, |t, y| t.eval_step(x, y))?;
        Ok((loss, accuracy))
    }

    fn predict<'py>(
        &mut self,
        py: Python<'py>,
        inputs: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let mut keep = None;
        let trainer = self.get()?;
        let x = batch(trainer, inputs, &mut keep)?;
        let shape = trainer.output_shape();
        let out = py.detach(|| trainer.predict(x)).map_err(actc_err)?;
        PyArray1::from_vec(py, out).reshape(shape)
    }

    /// `actc train`'s flags `args` (the program name first) on this trainer's weights, on
    /// arrays `(x, y)` when given (else the flags' `--data`), validating on `val`'s arrays
    /// when given.
    #[pyo3(signature = (args, data=None, val=None))]
    fn fit(
        &mut self,
        py: Python<'_>,
        args: Vec<String>,
        data: Option<(Bound<'_, PyAny>, Bound<'_, PyAny>)>,
        val: Option<(Bound<'_, PyAny>, Bound<'_, PyAny>)>,
    ) -> PyResult<Option<f64>> {
        let opts = cli::train_options_in_process(&args).map_err(fail)?;
        let regression = !self.get()?.takes_classes();
        let data = match data {
            Some((x, y)) => {
                let train = dataset(&x, &y, "training", regression)?;
                let val = val
                    .map(|(x, y)| dataset(&x, &y, "validation", regression))
                    .transpose()?;
                Some(RunData::split(train, val, &opts).map_err(actc_err)?)
            }
            None => None,
        };
        let trainer = self.get()?;
        py.detach(|| trainer.fit(&opts, data)).map_err(actc_err)
    }

    /// `actc eval`'s flags `args` (the program name first) on these weights, on arrays
    /// `(x, y)` when given (else the flags' `--data`): what `actc eval --json` prints.
    #[pyo3(signature = (args, data=None))]
    fn evaluate(
        &mut self,
        py: Python<'_>,
        args: Vec<String>,
        data: Option<(Bound<'_, PyAny>, Bound<'_, PyAny>)>,
    ) -> PyResult<String> {
        let (path, prep) = cli::eval_options_in_process(&args).map_err(fail)?;
        let regression = !self.get()?.takes_classes();
        let data = data
            .map(|(x, y)| dataset(&x, &y, "evaluation", regression))
            .transpose()?;
        let trainer = self.get()?;
        let m = py
            .detach(|| trainer.evaluate(data, &path, &prep))
            .map_err(actc_err)?;
        Ok(actc::driver::run::metrics_json(&m).to_string())
    }

    /// The trainable weights: ONNX initializer name → float32 array.
    fn get_weights<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, shape, values) in self.get()?.weights() {
            dict.set_item(name, PyArray1::from_vec(py, values).reshape(shape)?)?;
        }
        Ok(dict)
    }

    /// Overwrites trainable weights (ONNX initializer name → array of the weight's shape);
    /// every entry is checked before any is written.
    fn set_weights(&mut self, weights: &Bound<'_, PyDict>) -> PyResult<()> {
        let mut all = Vec::new();
        for (k, v) in weights.iter() {
            let name: String = k
                .extract()
                .map_err(|_| fail("weight names must be strings"))?;
            let what = format!("weight '{name}'");
            let shape = shape_of(&v).ok_or_else(|| {
                fail(format!(
                    "{what} must be a numpy float32 array, got {}",
                    describe(&v)
                ))
            })?;
            let mut keep = None;
            let values = floats(&v, &what, &mut keep)?.to_vec();
            all.push((name, shape, values));
        }
        let all: Vec<(&str, &[usize], &[f32])> = all
            .iter()
            .map(|(n, s, v)| (n.as_str(), s.as_slice(), v.as_slice()))
            .collect();
        self.get()?.set_weights(&all).map_err(actc_err)
    }

    /// The plan with the current weights and optimizer state, as a plan.
    fn checkpoint(&mut self, py: Python<'_>) -> PyResult<PyPlan> {
        let trainer = self.get()?;
        let bytes = py.detach(|| trainer.checkpoint()).map_err(actc_err)?;
        Ok(PyPlan {
            bytes,
            name: "checkpoint".into(),
        })
    }

    fn save_checkpoint(&mut self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let trainer = self.get()?;
        py.detach(|| trainer.save(&path)).map_err(actc_err)
    }

    #[pyo3(signature = (path, external_data=false))]
    fn export(&mut self, py: Python<'_>, path: PathBuf, external_data: bool) -> PyResult<()> {
        let trainer = self.get()?;
        py.detach(|| trainer.export(&path, external_data))
            .map_err(actc_err)
    }

    /// Frees the trainer's memory now; any later call raises.
    fn close(&mut self) {
        self.inner = None;
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_none()
    }
}

#[pymodule]
fn _actc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ActcError", m.py().get_type::<ActcError>())?;
    m.add("FORMAT_VERSION", actc_runtime::plan::FORMAT_VERSION)?;
    m.add_class::<PyPlan>()?;
    m.add_class::<PyTrainer>()?;
    m.add_function(wrap_pyfunction!(compile_args, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    Ok(())
}
