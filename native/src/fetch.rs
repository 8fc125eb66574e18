//! Fetched record batches (format v2, uncompressed) unpacked in one call per fetched buffer:
//! per batch what the consumer's fetcher decides on (offsets, producer, control and
//! transactional flags) and its records as the worker's `FetchedRecord` named tuples, with
//! the values aiokafka's record reader gives. `worker/stream/fetched.py` is the only caller.
//! Anything else (a compressed batch, an older format, bytes that do not parse) returns
//! `None`, and aiokafka unpacks that buffer itself, raising what it raises. A header name that
//! is not UTF-8 is read leniently, as Java's client reads it (see `record`).

use std::borrow::Cow;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple, PyType};

use crate::tuples::named;

const LOG_OVERHEAD: usize = 12;
const HEADER: usize = 61;
const MAGIC: u8 = 2;
const COMPRESSION: i16 = 0x07;
const LOG_APPEND_TIME: i16 = 0x08;
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// A zigzag varint of up to 64 bits, as Kafka's records write lengths and deltas.
    fn varint(&mut self) -> Option<i64> {
        let mut raw: u64 = 0;
        let mut shift = 0;
        loop {
            let b = *self.buf.get(self.at)?;
            self.at += 1;
            raw |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
        Some((raw >> 1) as i64 ^ -((raw & 1) as i64))
    }

    /// `len` bytes, `None` for a negative length (a null field).
    fn field(&mut self, len: i64) -> Option<Option<&'a [u8]>> {
        if len < 0 {
            return Some(None);
        }
        let end = self.at.checked_add(usize::try_from(len).ok()?)?;
        let bytes = self.buf.get(self.at..end)?;
        self.at = end;
        Some(Some(bytes))
    }
}

struct Record<'a> {
    offset: i64,
    timestamp: i64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: Vec<(Cow<'a, str>, Option<&'a [u8]>)>,
}

struct Batch<'a> {
    base_offset: i64,
    next_offset: i64,
    producer_id: i64,
    control: bool,
    transactional: bool,
    timestamp_type: i64,
    records: Vec<Record<'a>>,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

/// One record, as aiokafka's `DefaultRecordBatch._read_msg` reads it, or `None` where it
/// would raise (or read differently).
fn record<'a>(
    c: &mut Cursor<'a>,
    base_offset: i64,
    first_ts: i64,
    max_ts: Option<i64>,
) -> Option<Record<'a>> {
    let length = c.varint()?;
    let start = c.at;
    c.varint()?; // attributes: unused in format v2
    let ts_delta = c.varint()?;
    let offset_delta = c.varint()?;
    let key_len = c.varint()?;
    let key = c.field(key_len)?;
    let value_len = c.varint()?;
    let value = c.field(value_len)?;
    let count = c.varint()?;
    if count < 0 {
        return None;
    }
    let mut headers = Vec::with_capacity(usize::try_from(count.min(64)).ok()?);
    for _ in 0..count {
        let name_len = c.varint()?;
        if name_len < 0 {
            return None;
        }
        // A name that is not UTF-8 (Kafka's protocol says it is) is read as Java's client reads
        // it, each bad sequence as U+FFFD: aiokafka would raise, and stop the partition.
        let name = String::from_utf8_lossy(c.field(name_len)??);
        let value_len = c.varint()?;
        headers.push((name, c.field(value_len)?));
    }
    if i64::try_from(c.at - start).ok()? != length {
        return None;
    }
    Some(Record {
        offset: base_offset.checked_add(offset_delta)?,
        timestamp: match max_ts {
            Some(t) => t,
            None => first_ts.checked_add(ts_delta)?,
        },
        key,
        value,
        headers,
    })
}

/// Every complete batch of `buf` (an incomplete one at the end is left out, as the client
/// leaves it), or `None` if any is not v2, is compressed or does not parse.
fn batches(buf: &[u8]) -> Option<Vec<Batch<'_>>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while buf.len() - at >= LOG_OVERHEAD {
        let b = &buf[at..];
        let length = usize::try_from(be_i32(b, 8)).ok()?;
        let end = LOG_OVERHEAD.checked_add(length)?;
        if end > b.len() {
            break;
        }
        let b = &b[..end];
        if end < HEADER || b[16] != MAGIC {
            return None;
        }
        let attributes = i16::from_be_bytes([b[21], b[22]]);
        if attributes & COMPRESSION != 0 {
            return None;
        }
        let base_offset = be_i64(b, 0);
        let last_offset_delta = i64::from(be_i32(b, 23));
        let first_ts = be_i64(b, 27);
        let log_append = attributes & LOG_APPEND_TIME != 0;
        let max_ts = log_append.then(|| be_i64(b, 35));
        let count = usize::try_from(be_i32(b, 57)).ok()?;
        let mut c = Cursor { buf: b, at: HEADER };
        let mut records = Vec::with_capacity(count.min(end / 8));
        for _ in 0..count {
            records.push(record(&mut c, base_offset, first_ts, max_ts)?);
        }
        if c.at != end {
            return None; // bytes left over: aiokafka refuses the batch
        }
        out.push(Batch {
            base_offset,
            next_offset: base_offset.checked_add(last_offset_delta)?.checked_add(1)?,
            producer_id: be_i64(b, 43),
            control: attributes & CONTROL != 0,
            transactional: attributes & TRANSACTIONAL != 0,
            timestamp_type: i64::from(log_append),
            records,
        });
        at += end;
    }
    Some(out)
}

fn optional_bytes<'py>(py: Python<'py>, field: Option<&[u8]>) -> Bound<'py, PyAny> {
    match field {
        Some(b) => PyBytes::new(py, b).into_any(),
        None => py.None().into_bound(py),
    }
}

fn size(field: Option<&[u8]>) -> i64 {
    field.map_or(-1, |b| b.len() as i64)
}

/// Per complete batch of a fetched buffer: `(base_offset, next_offset, producer_id,
/// is_control, is_transactional, records)`, the records as `record_type`; or `None` when
/// aiokafka must unpack the buffer itself (see the module's comment).
#[pyfunction]
pub fn unpack_batches<'py>(
    py: Python<'py>,
    buf: &[u8],
    record_type: &Bound<'py, PyType>,
    topic: &Bound<'py, PyString>,
    partition: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyList>>> {
    if !record_type.is_subclass_of::<PyTuple>()? {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "record_type must be a tuple type",
        ));
    }
    let Some(parsed) = batches(buf) else {
        return Ok(None);
    };
    let out = PyList::empty(py);
    for batch in parsed {
        let records = PyList::empty(py);
        let timestamp_type = batch.timestamp_type.into_pyobject(py)?.into_any();
        for r in batch.records {
            let headers = PyTuple::new(
                py,
                r.headers
                    .iter()
                    .map(|(name, value)| (PyString::new(py, name), optional_bytes(py, *value))),
            )?;
            let items = [
                topic.clone().into_any(),
                partition.clone(),
                r.offset.into_pyobject(py)?.into_any(),
                r.timestamp.into_pyobject(py)?.into_any(),
                timestamp_type.clone(),
                optional_bytes(py, r.key),
                optional_bytes(py, r.value),
                py.None().into_bound(py),
                size(r.key).into_pyobject(py)?.into_any(),
                size(r.value).into_pyobject(py)?.into_any(),
                headers.into_any(),
            ];
            records.append(named(py, record_type, items)?)?;
        }
        out.append((
            batch.base_offset,
            batch.next_offset,
            batch.producer_id,
            batch.control,
            batch.transactional,
            records,
        ))?;
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_varints() {
        for (bytes, v) in [
            (vec![0x00], 0),
            (vec![0x01], -1),
            (vec![0x02], 1),
            (vec![0xac, 0x02], 150),
            (
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                i64::MIN,
            ),
        ] {
            let mut c = Cursor { buf: &bytes, at: 0 };
            assert_eq!(c.varint(), Some(v));
            assert_eq!(c.at, bytes.len());
        }
        let mut c = Cursor {
            buf: &[0x80],
            at: 0,
        };
        assert_eq!(c.varint(), None);
    }

    #[test]
    fn garbage_is_left_to_the_client() {
        let mut buf = vec![0u8; 70];
        buf[11] = 58; // a batch of 70 bytes
        buf[16] = 1; // format v1
        assert!(batches(&buf).is_none());
        // An incomplete batch at the end is skipped, not refused.
        buf[11] = 200;
        assert_eq!(batches(&buf).map(|b| b.len()), Some(0));
    }
}
