//! What `--layers` selects (DESIGN §3), the boundary between the frozen prefix and the
//! trainable suffix, and the sub-models the plan carries.

use crate::common::{self, compile, model};
use actc::{Layers, ModelProto};
use actc_runtime::plan::{BufferKind, Plan};
use prost::Message;

fn weight_shapes(plan: &Plan) -> Vec<(String, u32, Vec<u64>)> {
    plan.layers
        .iter()
        .map(|l| {
            (
                l.op_type.clone(),
                l.from_output,
                plan.buffer(l.weights[0]).shape.clone(),
            )
        })
        .collect()
}

fn ops(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .map(actc::driver::inspect::op_name)
        .collect()
}

#[test]
fn mobilenetv2_last_four_convs_and_the_classifier() {
    let c = compile("mobilenetv2", Layers::Last(4), None).unwrap();
    assert_eq!(
        weight_shapes(&c.plan),
        vec![
            ("Conv".into(), 4, vec![960, 160, 1, 1]),
            ("Conv".into(), 3, vec![960, 1, 3, 3]),
            ("Conv".into(), 2, vec![320, 960, 1, 1]),
            ("Conv".into(), 1, vec![1280, 320, 1, 1]),
            ("Gemm".into(), 0, vec![10, 1280]),
        ]
    );
    // biases train too
    assert_eq!(
        c.plan
            .buffers
            .iter()
            .filter(|b| b.kind() == BufferKind::Trainable)
            .count(),
        10
    );
    let boundary: Vec<_> = c
        .plan
        .feeds
        .iter()
        .map(|&b| c.plan.buffer(b).shape.clone())
        .collect();
    assert_eq!(
        boundary,
        vec![vec![8, 160, 7, 7], vec![8]],
        "boundary tensor and labels"
    );
}

#[test]
fn layer_totals_match_the_reference() {
    for (name, total) in [
        ("mobilenetv2", 52),
        ("mobilenetv2_bn", 52),
        ("resnet18", 20),
        ("mcunet", 42),
        ("tiny_mlp", 3),
    ] {
        let c = compile(name, Layers::Last(1), None).unwrap();
        assert_eq!(c.selection.total_layers, total, "{name}");
    }
}

#[test]
fn layers_all_trains_from_the_input_with_no_prefix() {
    let c = compile("tiny_cnn", Layers::All, None).unwrap();
    assert!(c.plan.prefix_onnx.is_empty());
    assert_eq!(c.plan.buffer(c.plan.feeds[0]).name, "input");
    assert_eq!(
        c.plan.layers.iter().filter(|l| l.op_type == "Conv").count(),
        6
    );
    // PRelu's slope and the classifier train as parameterized ops after the first layer
    assert!(c.plan.layers.iter().any(|l| l.op_type == "PRelu"));
}

#[test]
fn prefix_and_rest_partition_the_original_model() {
    let original = actc::load_onnx(&model("mobilenetv2")).unwrap();
    let c = compile("mobilenetv2", Layers::Last(4), None).unwrap();
    let prefix = ModelProto::decode(c.plan.prefix_onnx.as_slice()).unwrap();
    let rest = ModelProto::decode(c.plan.rest_onnx.as_slice()).unwrap();
    let (pg, rg, og) = (
        prefix.graph.unwrap(),
        rest.graph.unwrap(),
        original.graph.unwrap(),
    );
    assert_eq!(pg.node.len() + rg.node.len(), og.node.len());
    let outs: Vec<_> = pg.output.iter().map(|o| o.name().to_string()).collect();
    assert_eq!(outs, vec!["/features/features.16/Add_output_0".to_string()]);
    assert_eq!(
        rg.input.iter().map(|i| i.name()).collect::<Vec<_>>(),
        vec!["/features/features.16/Add_output_0"]
    );
    assert_eq!(rg.output.len(), og.output.len());
    // every initializer read by a prefix node travels with it
    let inits: std::collections::HashSet<_> = pg.initializer.iter().map(|t| t.name()).collect();
    let produced: std::collections::HashSet<_> = pg
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(|s| s.as_str()))
        .collect();
    for n in &pg.node {
        for i in &n.input {
            assert!(
                i == "input" || inits.contains(i.as_str()) || produced.contains(i.as_str()),
                "prefix input {i} is dangling"
            );
        }
    }
}

#[test]
fn weights_as_constant_nodes_and_identities_import_like_initializers() {
    let a = compile("tiny_cnn", Layers::All, None).unwrap();
    let b = compile("tiny_constants", Layers::All, None).unwrap();
    assert_eq!(ops(&a.plan), ops(&b.plan));
    // Tensors are numbered in the order the file declares them, which differs; compare sets.
    let shapes = |p: &Plan| {
        let mut v = p
            .buffers
            .iter()
            .map(|b| (b.shape.clone(), b.kind))
            .collect::<Vec<_>>();
        v.sort();
        v
    };
    assert_eq!(shapes(&a.plan), shapes(&b.plan));
    let data = |p: &Plan| {
        let mut v = p.weights.iter().map(|w| w.data.clone()).collect::<Vec<_>>();
        v.sort();
        v
    };
    assert_eq!(data(&a.plan), data(&b.plan));
}

#[test]
fn the_chosen_output_trains_and_the_other_head_is_pruned() {
    let c = compile("tiny_multi_output", Layers::Last(1), None).unwrap();
    assert_eq!(c.plan.source.as_ref().unwrap().output_name, "logits");
    let e = actc::compile_file(
        &model("tiny_multi_output"),
        &actc::CompileOptions {
            outputs: vec!["embedding".into()],
            ..common::options(Layers::Last(1), None)
        },
    )
    .unwrap();
    assert_eq!(e.plan.source.as_ref().unwrap().output_name, "embedding");
    assert_eq!(e.plan.buffer(e.plan.output).shape, vec![8, 8]);
    let gemms = ops(&e.plan).iter().filter(|o| *o == "Gemm").count();
    assert_eq!(gemms, 1, "only the embedding head's Gemm runs");
}

#[test]
fn cross_entropy_trains_on_the_logits_before_a_final_softmax() {
    let c = compile("tiny_matmul", Layers::All, None).unwrap();
    assert!(!ops(&c.plan).contains(&"Softmax".to_string()));
    assert!(ops(&c.plan).contains(&"SoftmaxCrossEntropy".to_string()));
}

#[test]
fn batch_defaults_to_eight_and_input_shape_overrides_the_exported_size() {
    let c = compile("mobilenetv2", Layers::Last(1), None).unwrap();
    assert_eq!(
        c.plan.source.as_ref().unwrap().input_shape,
        vec![8, 3, 224, 224]
    );
    let c = compile("mobilenetv2", Layers::Last(1), Some(vec![64, 3, 32, 32])).unwrap();
    assert_eq!(c.plan.buffer(c.plan.feeds[0]).shape, vec![64, 320, 1, 1]);
}

#[test]
fn an_output_behind_an_identity_is_named_as_the_model_names_it() {
    // tiny_mlp with its logits passed on by an Identity, as some exporters end a graph.
    let mut m = actc::load_onnx(&model("tiny_mlp")).unwrap();
    let g = m.graph.as_mut().unwrap();
    let mut identity = g.node.last().unwrap().clone();
    identity.op_type = Some("Identity".into());
    identity.name = Some("final_identity".into());
    identity.attribute.clear();
    identity.input = vec!["logits".into()];
    identity.output = vec!["scores".into()];
    g.node.push(identity);
    g.output[0].name = Some("scores".into());
    let path = common::scratch("identity_output").join("m.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let with = |output: Option<&str>| {
        actc::compile_file(
            &path,
            &actc::CompileOptions {
                outputs: output.map(str::to_string).into_iter().collect(),
                ..common::options(Layers::Last(1), None)
            },
        )
    };
    for asked in [None, Some("scores"), Some("logits")] {
        let plan = with(asked).unwrap().plan;
        assert_eq!(plan.source.unwrap().output_name, "scores", "{asked:?}");
    }
    let msg = with(Some("nope")).err().unwrap().0;
    assert!(
        msg.contains("--train-output nope") && msg.contains("its outputs are scores"),
        "{msg}"
    );
}

/// The trained tensors' names, in plan order.
fn trained_names(plan: &Plan) -> Vec<String> {
    plan.weights
        .iter()
        .filter(|w| plan.buffer(w.buffer).kind() == BufferKind::Trainable)
        .map(|w| w.source.clone())
        .collect()
}

#[test]
fn transformers_count_linear_layers_and_blocks() {
    // The ViT's patch embedding is a conv, but its linear layers read tokens: they count.
    let c = compile("tiny_vit", Layers::All, None).unwrap();
    assert_eq!(
        (c.selection.total_layers, c.selection.layer_op.as_str()),
        (9, "MatMul")
    );
    // The last block whole: both its LayerNorms (norm1 comes before its first linear layer,
    // which --layers 5 would leave frozen), its 4 linear layers, the final norm and the head.
    let blocks = trained_names(&compile("tiny_vit", Layers::Blocks(1), None).unwrap().plan);
    let layers = trained_names(&compile("tiny_vit", Layers::Last(5), None).unwrap().plan);
    let norm1 = ["blocks.1.norm1.weight", "blocks.1.norm1.bias"];
    assert!(norm1.iter().all(|n| blocks.contains(&n.to_string())));
    assert!(norm1.iter().all(|n| !layers.contains(&n.to_string())));
    let mut rest = blocks.clone();
    rest.retain(|n| !norm1.contains(&n.as_str()));
    assert_eq!(rest.len(), layers.len());
    assert!(rest.iter().all(|n| layers.contains(n)));
    assert!(blocks.iter().all(|n| !n.starts_with("blocks.0")));
    // Post-norm text encoder: the last block's 6 linear layers, its 2 LayerNorms, the head.
    let text = compile("tiny_bert", Layers::Blocks(1), Some(vec![2, 16])).unwrap();
    assert_eq!(trained_names(&text.plan).len(), 7 * 2 + 2 * 2);
    let err = |name: &str, b: usize| compile(name, Layers::Blocks(b), None).err().unwrap();
    assert!(
        err("tiny_vit", 3).contains("has 2 transformer blocks"),
        "{}",
        err("tiny_vit", 3)
    );
    assert!(
        err("mobilenetv2", 1).contains("use --layers"),
        "{}",
        err("mobilenetv2", 1)
    );
}
