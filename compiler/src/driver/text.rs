//! Text data: a CSV's text column tokenized with the model's own tokenizer (a Hugging Face
//! `tokenizer.json`, or a BERT `vocab.txt`), truncated and padded to the compiled sequence
//! length, into the rows a text encoder's plan feeds: each input the tokenizer fills
//! (`input_ids`, `attention_mask`, `token_type_ids`) by the model's input names.

use crate::{Result, bail, err};
use actc_runtime::data::{Dataset, SampleValues};
use std::path::{Path, PathBuf};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Where the text and labels are, and how to tokenize them.
#[derive(Clone, Debug, PartialEq)]
pub struct TextOptions {
    pub tokenizer: PathBuf,
    pub text_column: String,
    pub label_column: String,
}

/// The CSV at `path` as packed rows for `inputs` (name, per-sample shape [sequence]), with
/// the class label of each row.
pub fn load(path: &Path, opts: &TextOptions, inputs: &[(String, Vec<usize>)]) -> Result<Dataset> {
    let seq = match inputs.first().map(|(_, s)| s.as_slice()) {
        Some(&[s]) if inputs.iter().all(|(_, shape)| shape == &[s]) => s,
        _ => bail!(
            "{}: text feeds inputs of shape [batch, sequence]; this model's are {}",
            path.display(),
            describe(inputs)
        ),
    };
    let tokenizer = tokenizer(&opts.tokenizer, seq)?;
    let (texts, labels) = read_csv(path, opts)?;
    let encodings = tokenizer
        .encode_batch(texts, true)
        .map_err(|e| err!("{}: tokenizing failed: {e}", path.display()))?;
    let mut rows = Vec::with_capacity(encodings.len() * seq * inputs.len());
    for e in &encodings {
        for (name, _) in inputs {
            let values = match name.as_str() {
                "input_ids" => e.get_ids(),
                "attention_mask" => e.get_attention_mask(),
                "token_type_ids" => e.get_type_ids(),
                other => bail!(
                    "model input '{other}' is not one a tokenizer fills (input_ids, attention_mask, token_type_ids); feed an .npz with one array per input"
                ),
            };
            rows.extend(values.iter().map(|&v| v as f32));
        }
    }
    let shape = vec![encodings.len(), seq * inputs.len()];
    Dataset::from_arrays(
        &path.display().to_string(),
        shape,
        SampleValues::F32(rows),
        labels,
        None,
    )
    .map_err(|e| err!("{e}"))
}

fn describe(inputs: &[(String, Vec<usize>)]) -> String {
    inputs
        .iter()
        .map(|(n, s)| format!("{n} {s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tokenizer at `path`, truncating and padding every text to `seq` tokens.
fn tokenizer(path: &Path, seq: usize) -> Result<Tokenizer> {
    let fail = |e: &dyn std::fmt::Display| err!("--tokenizer {}: {e}", path.display());
    let mut t = if path.extension().is_some_and(|e| e == "json") {
        Tokenizer::from_file(path).map_err(|e| fail(&e))?
    } else {
        bert_from_vocab(path)?
    };
    let pad_id = t
        .get_padding()
        .map(|p| p.pad_id)
        .or_else(|| t.token_to_id("[PAD]"))
        .or_else(|| t.token_to_id("<pad>"))
        .ok_or_else(|| fail(&"it has no padding token ([PAD] or <pad>)"))?;
    let pad_token = t.id_to_token(pad_id).unwrap_or_default();
    t.with_truncation(Some(TruncationParams {
        max_length: seq,
        ..Default::default()
    }))
    .map_err(|e| fail(&e))?;
    t.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(seq),
        pad_id,
        pad_token,
        ..Default::default()
    }));
    Ok(t)
}

/// BERT's uncased pipeline over a WordPiece `vocab.txt` (what `BertTokenizer` does with
/// `do_lower_case`): normalize, split on whitespace and punctuation, WordPiece, [CLS] … [SEP].
fn bert_from_vocab(path: &Path) -> Result<Tokenizer> {
    let fail = |e: &dyn std::fmt::Display| err!("--tokenizer {}: {e}", path.display());
    let vocab = path.to_str().ok_or_else(|| fail(&"not a UTF-8 path"))?;
    let model = WordPiece::from_file(vocab)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| {
            fail(&format!(
                "not a WordPiece vocab.txt or tokenizer.json ({e})"
            ))
        })?;
    let mut t = Tokenizer::new(model);
    let id = |token: &str| {
        t.token_to_id(token)
            .ok_or_else(|| fail(&format!("the vocabulary has no {token}")))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    t.with_normalizer(Some(BertNormalizer::default()));
    t.with_pre_tokenizer(Some(BertPreTokenizer));
    t.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), sep),
        ("[CLS]".into(), cls),
    )));
    Ok(t)
}

/// The text and integer label of every row.
fn read_csv(path: &Path, opts: &TextOptions) -> Result<(Vec<String>, Vec<i64>)> {
    let fail = |e: &dyn std::fmt::Display| err!("{}: {e}", path.display());
    let mut reader = csv::Reader::from_path(path).map_err(|e| fail(&e))?;
    let headers = reader.headers().map_err(|e| fail(&e))?.clone();
    let column = |name: &str, flag: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            fail(&format!(
                "no column '{name}' ({flag}); its columns are {}",
                headers.iter().collect::<Vec<_>>().join(", ")
            ))
        })
    };
    let text = column(&opts.text_column, "--text-column")?;
    let label = column(&opts.label_column, "--label-column")?;
    let (mut texts, mut labels) = (Vec::new(), Vec::new());
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| fail(&e))?;
        let value = record.get(label).unwrap_or_default().trim();
        let class = value
            .parse::<i64>()
            .ok()
            .filter(|&c| c >= 0)
            .ok_or_else(|| {
                fail(&format!(
                    "row {}: label '{value}' is not a class index (a non-negative integer)",
                    i + 2
                ))
            })?;
        texts.push(record.get(text).unwrap_or_default().to_string());
        labels.push(class);
    }
    Ok((texts, labels))
}
