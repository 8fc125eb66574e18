//! The records to publish (`records.Outbound`), made from the compiled routing's results in
//! one call per slice, with the fields the Python path fills for the same record.
//! `Router.finish` (`worker/core/records.py`) is the only caller.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple, PyType};

use crate::tuples::named;

/// `FetchedRecord`'s fields that an output carries, by index.
const TOPIC: usize = 0;
const PARTITION: usize = 1;
const OFFSET: usize = 2;
const TIMESTAMP: usize = 3;
const KEY: usize = 5;
const HEADERS: usize = 10;

/// What an output takes from its record: topic, partition, offset, timestamp, key, headers.
fn record_fields<'py>(
    rec: &Bound<'py, PyAny>,
    fetched: &Bound<'py, PyType>,
) -> PyResult<[Bound<'py, PyAny>; 6]> {
    if rec.get_type().is(fetched) {
        let t = rec.cast::<PyTuple>()?;
        return Ok([
            t.get_item(TOPIC)?,
            t.get_item(PARTITION)?,
            t.get_item(OFFSET)?,
            t.get_item(TIMESTAMP)?,
            t.get_item(KEY)?,
            t.get_item(HEADERS)?,
        ]);
    }
    // Any other record (replay's, a test's): by name, as the Python path reads it.
    Ok([
        rec.getattr("topic")?,
        rec.getattr("partition")?,
        rec.getattr("offset")?,
        rec.getattr("timestamp")?,
        rec.getattr("key")?,
        rec.getattr("headers")?,
    ])
}

/// Per record, its `Outbound` from its compiled result (`RouteJob.results`, `route_many`), or
/// `None` where it has none (the Python path then does it). `kinds` is (outbound type,
/// summary type, fetched-record type); `texts` is (routed topic, escalated topic, "routed",
/// "escalated").
#[pyfunction]
pub fn outbounds<'py>(
    py: Python<'py>,
    records: &Bound<'py, PyList>,
    results: &Bound<'py, PyList>,
    kinds: (Bound<'py, PyType>, Bound<'py, PyType>, Bound<'py, PyType>),
    texts: (
        Bound<'py, PyAny>,
        Bound<'py, PyAny>,
        Bound<'py, PyAny>,
        Bound<'py, PyAny>,
    ),
) -> PyResult<Bound<'py, PyList>> {
    if records.len() != results.len() {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "outbounds: records and results of unequal length",
        ));
    }
    let (outbound, summary, fetched) = kinds;
    let (routed_topic, escalated_topic, routed_text, escalated_text) = texts;
    let out = PyList::empty(py);
    for (rec, done) in records.iter().zip(results.iter()) {
        if done.is_none() {
            out.append(py.None())?;
            continue;
        }
        let done = done.cast_into::<PyTuple>()?;
        // (value, routed?, reason, top1, margin, entropy, shadow routed?)
        let routed = done.get_item(1)?.is_truthy()?;
        let [topic, partition, offset, timestamp, key, headers] = record_fields(&rec, &fetched)?;
        let headers =
            unsafe { Bound::from_owned_ptr_or_err(py, ffi::PySequence_List(headers.as_ptr()))? };
        let scores = named(
            py,
            &summary,
            [done.get_item(3)?, done.get_item(4)?, done.get_item(5)?],
        )?;
        let shadow = done.get_item(6)?;
        let shadow = if shadow.is_none() {
            shadow
        } else if shadow.is_truthy()? {
            routed_text.clone()
        } else {
            escalated_text.clone()
        };
        let item = named(
            py,
            &outbound,
            [
                if routed {
                    routed_topic.clone()
                } else {
                    escalated_topic.clone()
                },
                key,
                done.get_item(0)?,
                headers,
                if routed {
                    routed_text.clone()
                } else {
                    escalated_text.clone()
                },
                done.get_item(2)?,
                topic,
                partition,
                offset,
                timestamp,
                scores,
                shadow,
            ],
        )?;
        out.append(item)?;
    }
    Ok(out)
}
