//! A model's inputs and outputs, and the checks a request must pass before it may queue.

use crate::protocol::{NamedTensor, RequestedOutput};
use crate::tensor::{DataType, Tensor};

/// One input or output: name, data type and dims as the model declares them (`-1` = any size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// Why a request does not fit the model. All map to 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidationError {
    #[error("unknown input '{name}' (the model's inputs are: {expected})")]
    UnknownInput { name: String, expected: String },
    #[error("missing input '{name}'")]
    MissingInput { name: String },
    #[error("input '{name}' has datatype {got} but the model expects {expected}")]
    Datatype { name: String, got: DataType, expected: DataType },
    #[error("input '{name}' has shape {got:?} but the model expects {expected}")]
    Shape { name: String, got: Vec<usize>, expected: String },
    #[error("inputs disagree on the batch size: '{first}' has {first_rows} rows, '{name}' has {rows}")]
    BatchMismatch { first: String, first_rows: usize, name: String, rows: usize },
    #[error("batch size {rows} is over the model's max_batch_size of {max}")]
    TooManyRows { rows: usize, max: usize },
    #[error("unknown output '{name}' (the model's outputs are: {expected})")]
    UnknownOutput { name: String, expected: String },
    #[error("the request has no inputs")]
    NoInputs,
    #[error("input '{name}': BYTES element {index} {problem} (ONNX string tensors hold UTF-8 text without NUL bytes)")]
    BadString { name: String, index: usize, problem: &'static str },
}

/// A request that fits the model: inputs in model order, and the rows it adds to a batch (1 for non-batching models).
#[derive(Debug)]
pub struct ValidatedInputs {
    pub tensors: Vec<Tensor>,
    pub rows: usize,
}

impl ModelSignature {
    /// True when every input and output has a dynamic first dimension, so requests can be stacked along it.
    pub fn can_batch(&self) -> bool {
        self.inputs.iter().chain(&self.outputs).all(|s| s.dims.first() == Some(&-1))
    }

    fn names(specs: &[TensorSpec]) -> String {
        specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Checks names, data types and shapes, and orders the inputs as the model wants them.
    /// `max_batch_size` 0 means the model does not batch: shapes must match the declared dims exactly.
    pub fn validate(&self, inputs: Vec<NamedTensor>, max_batch_size: usize) -> Result<ValidatedInputs, ValidationError> {
        if inputs.is_empty() {
            return Err(ValidationError::NoInputs);
        }
        for given in &inputs {
            if !self.inputs.iter().any(|s| s.name == given.name) {
                return Err(ValidationError::UnknownInput { name: given.name.clone(), expected: Self::names(&self.inputs) });
            }
        }
        let mut slots: Vec<Option<NamedTensor>> = inputs.into_iter().map(Some).collect();
        let mut tensors = Vec::with_capacity(self.inputs.len());
        let mut batch: Option<(String, usize)> = None;
        for spec in &self.inputs {
            let given = slots
                .iter_mut()
                .find(|s| s.as_ref().is_some_and(|t| t.name == spec.name))
                .and_then(Option::take)
                .ok_or_else(|| ValidationError::MissingInput { name: spec.name.clone() })?;
            let tensor = given.tensor;
            if tensor.dtype() != spec.dtype {
                return Err(ValidationError::Datatype { name: spec.name.clone(), got: tensor.dtype(), expected: spec.dtype });
            }
            let shape_ok = tensor.shape().len() == spec.dims.len()
                && tensor.shape().iter().zip(&spec.dims).enumerate().all(|(i, (&got, &want))| {
                    (want < 0 && !(i == 0 && max_batch_size > 0 && got == 0)) || got as i64 == want
                });
            if !shape_ok {
                return Err(ValidationError::Shape {
                    name: spec.name.clone(),
                    got: tensor.shape().to_vec(),
                    expected: describe_dims(&spec.dims, max_batch_size > 0),
                });
            }
            if tensor.dtype() == DataType::Bytes {
                check_strings(&spec.name, &tensor)?;
            }
            if max_batch_size > 0 {
                let rows = tensor.rows();
                match &batch {
                    None => batch = Some((spec.name.clone(), rows)),
                    Some((first, first_rows)) if *first_rows != rows => {
                        return Err(ValidationError::BatchMismatch {
                            first: first.clone(),
                            first_rows: *first_rows,
                            name: spec.name.clone(),
                            rows,
                        })
                    }
                    Some(_) => {}
                }
            }
            tensors.push(tensor);
        }
        let rows = batch.map(|(_, rows)| rows).unwrap_or(1);
        if max_batch_size > 0 && rows > max_batch_size {
            return Err(ValidationError::TooManyRows { rows, max: max_batch_size });
        }
        Ok(ValidatedInputs { tensors, rows })
    }

    /// Resolves the requested outputs to indexes into [`ModelSignature::outputs`]; empty means all of them.
    pub fn select_outputs(&self, requested: &[RequestedOutput]) -> Result<Vec<usize>, ValidationError> {
        if requested.is_empty() {
            return Ok((0..self.outputs.len()).collect());
        }
        requested
            .iter()
            .map(|r| {
                self.outputs
                    .iter()
                    .position(|s| s.name == r.name)
                    .ok_or_else(|| ValidationError::UnknownOutput { name: r.name.clone(), expected: Self::names(&self.outputs) })
            })
            .collect()
    }

    /// How `other` (e.g. what a remote server reports) differs from this signature, in words, or `None` when the two
    /// agree: the same tensor names, data types and dims (order aside: tensors travel by name), e.g.
    /// `input 'x': FP32 [-1,4] here, FP16 [-1,4] there; output 'y': missing here, FP32 [-1] there`.
    pub fn difference(&self, other: &ModelSignature) -> Option<String> {
        let mut found = Vec::new();
        spec_differences("input", &self.inputs, &other.inputs, &mut found);
        spec_differences("output", &self.outputs, &other.outputs, &mut found);
        (!found.is_empty()).then(|| found.join("; "))
    }
}

/// Appends one line per tensor of `kind` that is missing on one side or declared differently.
fn spec_differences(kind: &str, here: &[TensorSpec], there: &[TensorSpec], found: &mut Vec<String>) {
    for h in here {
        match there.iter().find(|t| t.name == h.name) {
            None => found.push(format!("{kind} '{}': {} here, missing there", h.name, describe_spec(h))),
            Some(t) if t.dtype != h.dtype || t.dims != h.dims => {
                found.push(format!("{kind} '{}': {} here, {} there", h.name, describe_spec(h), describe_spec(t)))
            }
            Some(_) => {}
        }
    }
    for t in there.iter().filter(|t| !here.iter().any(|h| h.name == t.name)) {
        found.push(format!("{kind} '{}': missing here, {} there", t.name, describe_spec(t)));
    }
}

/// A declaration as metadata shows it, e.g. `FP32 [-1,4]`.
fn describe_spec(spec: &TensorSpec) -> String {
    let dims: Vec<String> = spec.dims.iter().map(i64::to_string).collect();
    format!("{} [{}]", spec.dtype, dims.join(","))
}

/// ONNX string tensors are C strings of UTF-8 text: refuse what would be mangled or truncated, before it queues.
fn check_strings(name: &str, tensor: &Tensor) -> Result<(), ValidationError> {
    let bad = |index, problem| ValidationError::BadString { name: name.to_string(), index, problem };
    // The tensor was checked at decode time, so its layout is sound; an error here would be a bug, reported as such.
    let items = tensor.byte_strings().map_err(|_| bad(0, "is malformed"))?;
    for (index, item) in items.into_iter().enumerate() {
        if item.contains(&0) {
            return Err(bad(index, "contains a NUL byte"));
        }
        if std::str::from_utf8(item).is_err() {
            return Err(bad(index, "is not valid UTF-8"));
        }
    }
    Ok(())
}

/// Human form of declared dims, e.g. `[batch, 64]` or `[8]`.
fn describe_dims(dims: &[i64], batching: bool) -> String {
    let parts: Vec<String> = dims
        .iter()
        .enumerate()
        .map(|(i, &d)| match d {
            _ if i == 0 && batching => "batch (1..max_batch_size)".to_string(),
            d if d < 0 => "any".to_string(),
            d => d.to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> ModelSignature {
        ModelSignature {
            inputs: vec![
                TensorSpec { name: "a".into(), dtype: DataType::F32, dims: vec![-1, 2] },
                TensorSpec { name: "b".into(), dtype: DataType::I64, dims: vec![-1, 1] },
            ],
            outputs: vec![TensorSpec { name: "y".into(), dtype: DataType::F32, dims: vec![-1, 3] }],
        }
    }

    fn named(name: &str, t: Tensor) -> NamedTensor {
        NamedTensor { name: name.into(), tensor: t }
    }

    #[test]
    fn orders_inputs_and_checks_batch_agreement() {
        let a = Tensor::from_slice(DataType::F32, vec![2, 2], &[0f32; 4]).unwrap();
        let b = Tensor::from_slice(DataType::I64, vec![2, 1], &[0i64; 2]).unwrap();
        let v = sig().validate(vec![named("b", b.clone()), named("a", a.clone())], 8).unwrap();
        assert_eq!(v.rows, 2);
        assert_eq!(v.tensors[0].dtype(), DataType::F32);
        let b1 = Tensor::from_slice(DataType::I64, vec![1, 1], &[0i64]).unwrap();
        assert!(matches!(sig().validate(vec![named("a", a.clone()), named("b", b1)], 8), Err(ValidationError::BatchMismatch { .. })));
        assert!(matches!(sig().validate(vec![named("a", a.clone()), named("b", b.clone())], 1), Err(ValidationError::TooManyRows { .. })));
        assert!(matches!(sig().validate(vec![named("a", a)], 8), Err(ValidationError::MissingInput { .. })));
    }

    #[test]
    fn difference_describes_each_disagreement() {
        let here = sig();
        assert_eq!(here.difference(&here), None);
        let mut reordered = sig();
        reordered.inputs.reverse();
        assert_eq!(here.difference(&reordered), None, "tensors travel by name: order is not a difference");
        let mut there = sig();
        there.inputs[0].dtype = DataType::F16;
        there.inputs[1].dims = vec![-1, 2];
        there.outputs.push(TensorSpec { name: "z".into(), dtype: DataType::Bytes, dims: vec![-1] });
        there.outputs.remove(0);
        assert_eq!(
            here.difference(&there).as_deref(),
            Some(
                "input 'a': FP32 [-1,2] here, FP16 [-1,2] there; input 'b': INT64 [-1,1] here, INT64 [-1,2] there; \
                 output 'y': FP32 [-1,3] here, missing there; output 'z': missing here, BYTES [-1] there"
            )
        );
    }
}
