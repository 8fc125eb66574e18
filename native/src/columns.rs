//! What the metrics read of a batch of outputs, in one pass: the label sets with their counts,
//! and the columns the histograms take, as bytes numpy reads without a copy.
//! `worker/observability/metrics.py` is the only caller.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

/// `records.Outbound`'s fields that the metrics read.
const KIND: usize = 4;
const REASON: usize = 5;
const SOURCE_TOPIC: usize = 6;
const SOURCE_TIMESTAMP: usize = 9;
const SCORES: usize = 10;
const SHADOW: usize = 11;

fn same(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
    if a.is(b) {
        return Ok(true);
    }
    a.eq(b)
}

/// The index of `item` in `seen` (by identity, else by equality), added if new.
fn index_of<'py, const N: usize>(
    seen: &mut Vec<([Bound<'py, PyAny>; N], u64)>,
    item: [Bound<'py, PyAny>; N],
) -> PyResult<usize> {
    // The last one matched is the likeliest: outputs of one kind tend to come in runs.
    for (k, (held, _)) in seen.iter().enumerate().rev() {
        let mut all = true;
        for (a, b) in held.iter().zip(item.iter()) {
            if !same(a, b)? {
                all = false;
                break;
            }
        }
        if all {
            return Ok(k);
        }
    }
    seen.push((item, 0));
    Ok(seen.len() - 1)
}

fn to_bytes<'py, T: Copy>(
    py: Python<'py>,
    values: &[T],
    to: fn(T) -> [u8; 8],
) -> Bound<'py, PyBytes> {
    let mut out = Vec::with_capacity(values.len() * 8);
    for &v in values {
        out.extend_from_slice(&to(v));
    }
    PyBytes::new(py, &out)
}

/// For `outputs` (`Outbound`s): the label sets `(source_topic, kind, reason, shadow, count)`;
/// the distinct source topics in order of first appearance; per output the index of its source
/// topic (`int64`) and its source timestamp (`float64`); per output whether it has scores
/// (`uint8`); and the scores `(top1, margin, entropy)` of those that have them (`float64`).
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn output_columns<'py>(
    py: Python<'py>,
    outputs: &Bound<'py, PyList>,
) -> PyResult<(
    Vec<Bound<'py, PyTuple>>,
    Vec<Bound<'py, PyAny>>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
)> {
    let n = outputs.len();
    let mut labels: Vec<([Bound<'py, PyAny>; 4], u64)> = Vec::new();
    let mut topics: Vec<([Bound<'py, PyAny>; 1], u64)> = Vec::new();
    let mut codes: Vec<i64> = Vec::with_capacity(n);
    let mut stamps: Vec<f64> = Vec::with_capacity(n);
    let mut scored: Vec<u8> = Vec::with_capacity(n);
    let mut values: Vec<f64> = Vec::with_capacity(3 * n);
    for output in outputs.iter() {
        let o = output.cast_into::<PyTuple>()?;
        let topic = o.get_item(SOURCE_TOPIC)?;
        let key = [
            topic.clone(),
            o.get_item(KIND)?,
            o.get_item(REASON)?,
            o.get_item(SHADOW)?,
        ];
        let k = index_of(&mut labels, key)?;
        labels[k].1 += 1;
        codes.push(index_of(&mut topics, [topic])? as i64);
        stamps.push(o.get_item(SOURCE_TIMESTAMP)?.extract::<f64>()?);
        let scores = o.get_item(SCORES)?;
        if scores.is_none() {
            scored.push(0);
        } else {
            let s = scores.cast_into::<PyTuple>()?;
            for i in 0..3 {
                values.push(s.get_item(i)?.extract::<f64>()?);
            }
            scored.push(1);
        }
    }
    let labels = labels
        .into_iter()
        .map(|([t, kind, reason, shadow], count)| {
            PyTuple::new(
                py,
                [t, kind, reason, shadow, count.into_pyobject(py)?.into_any()],
            )
        })
        .collect::<PyResult<_>>()?;
    Ok((
        labels,
        topics.into_iter().map(|([t], _)| t).collect(),
        to_bytes(py, &codes, i64::to_ne_bytes),
        to_bytes(py, &stamps, f64::to_ne_bytes),
        PyBytes::new(py, &scored),
        to_bytes(py, &values, f64::to_ne_bytes),
    ))
}
