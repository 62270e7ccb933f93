//! The training graph of every bundled model at `--layers 1, 2, 4, all`, pinned as text.
//! A change to any pass shows up here as a reviewed diff (`cargo insta review`).

mod common;

use actc::passes::select::Layers;
use common::{MODELS, compile};

fn snapshot_of(name: &str, shape: &[usize], layers: Layers) -> String {
    match compile(name, layers, Some(shape.to_vec())) {
        Ok(c) => {
            let m = c.plan.memory.clone().unwrap_or_default();
            format!(
                "# {name} --layers {layers} --input-shape {}\n# arena {} B, naive {} B, persistent {} B, saved {} B\n{}",
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("x"),
                m.arena,
                m.naive,
                m.persistent,
                m.saved,
                c.ir
            )
        }
        Err(e) => format!("# {name} --layers {layers}\nerror: {e}\n"),
    }
}

#[test]
fn training_graphs() {
    for &(name, shape) in MODELS {
        for layers in [
            Layers::Last(1),
            Layers::Last(2),
            Layers::Last(4),
            Layers::All,
        ] {
            let text = snapshot_of(name, shape, layers);
            // Paths in error messages depend on the checkout; keep the file name only.
            let text = text.replace(
                &format!("{}/", common::model("x").parent().unwrap().display()),
                "models/",
            );
            insta::assert_snapshot!(format!("{name}__layers_{layers}"), text);
        }
    }
}
