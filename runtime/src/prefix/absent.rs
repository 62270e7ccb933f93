//! The frozen prefix in a build without tract: a plan whose prefix tract would run cannot be
//! opened (nor can `decompose` and `plrd` run their models), and the error says what would.

use crate::exec::ExecError;
use crate::plan::ModelInput;

/// A tract-run prefix, which this build cannot make (it has no values).
pub enum Prefix {}

impl Prefix {
    pub fn new(_onnx: &[u8], _input_shape: &[usize]) -> Result<Prefix, ExecError> {
        Err(without_tract())
    }

    pub fn packed(_onnx: &[u8], _inputs: &[ModelInput]) -> Result<Prefix, ExecError> {
        Err(without_tract())
    }

    pub fn run(&self, _input: &[f32], _write: impl FnMut(usize, &[f32])) -> Result<(), ExecError> {
        match *self {}
    }
}

/// Nothing to set: only tract's products have threads of their own.
pub fn set_threads(_n: usize) {}

fn without_tract() -> ExecError {
    ExecError(
        "this runs ONNX on tract (a plan's frozen prefix that actc's kernels do not run, or the model `decompose` and `plrd` check), and this actc was built without it (cargo feature `tract`): compile plans with `--prefix actc`, or use a build with default features".into(),
    )
}

#[cfg(test)]
mod tests {
    use crate::plan::Plan;
    use crate::train::Session;

    /// `cargo test -p actc-runtime --no-default-features --lib prefix::absent` (tests/all.sh).
    #[test]
    fn a_plan_whose_prefix_needs_tract_is_refused_with_the_way_out() {
        let plan = Plan {
            prefix_onnx: vec![8, 7],
            ..Default::default()
        };
        let err = Session::new(plan, 1).err().expect("refused without tract");
        assert!(
            err.0.contains("built without it (cargo feature `tract`)"),
            "{err}"
        );
        assert!(err.0.contains("--prefix actc"), "{err}");
    }
}
