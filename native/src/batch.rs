//! Kafka record batches (format v2, uncompressed) filled from the worker's outputs in one call
//! per batch, with the bytes aiokafka's `DefaultRecordBatchBuilder` writes for the same records
//! and timestamp. `worker/stream/publish.py` hands them to the producer's `send_batch`, which
//! treats them as its own `BatchBuilder`: the methods below are the ones it calls.

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

/// Bytes of the batch header; the records follow it.
const HEADER: usize = 61;
/// Where the CRC goes, and where the bytes it covers start (the attributes).
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const TRANSACTIONAL: i16 = 0x10;
const MAGIC: i8 = 2;
const NO_PARTITION_LEADER_EPOCH: i32 = -1;
/// Where an output keeps its key, value and headers (`records.Outbound`'s fields).
const KEY: usize = 1;
const VALUE: usize = 2;
const HEADERS: usize = 3;

#[pyclass]
pub struct RecordBatch {
    /// Header room, then the records.
    buf: Vec<u8>,
    records: i32,
    max_bytes: usize,
    timestamp_ms: i64,
    transactional: bool,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    closed: bool,
    built: Option<Py<PyBytes>>,
}

/// Bytes of `v` as a zigzag varint, as Kafka's records write their lengths and deltas.
fn varint_len(v: i64) -> usize {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

fn write_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Bytes or None, as a record's key, value or header value.
fn optional_bytes<'a>(item: &'a Bound<'_, PyAny>, what: &str) -> PyResult<Option<&'a [u8]>> {
    if item.is_none() {
        return Ok(None);
    }
    match item.cast::<PyBytes>() {
        Ok(b) => Ok(Some(b.as_bytes())),
        Err(_) => Err(PyTypeError::new_err(format!(
            "RecordBatch: a record's {what} must be bytes or None"
        ))),
    }
}

fn len_or_null(field: Option<&[u8]>) -> i64 {
    field.map_or(-1, |b| b.len() as i64)
}

fn write_field(out: &mut Vec<u8>, field: Option<&[u8]>) {
    write_varint(out, len_or_null(field));
    if let Some(b) = field {
        out.extend_from_slice(b);
    }
}

/// A record measured by `extend`'s first pass, to be written by its second.
struct Taken<'py> {
    key: Bound<'py, PyAny>,
    value: Bound<'py, PyAny>,
    /// Its headers' range in the pass's list of headers.
    headers: std::ops::Range<usize>,
    /// Bytes of the record after its length.
    body: usize,
}

#[pymethods]
impl RecordBatch {
    /// An empty batch that takes records while it stays below `max_bytes` in all (header
    /// included; the first record is taken whatever its size), each stamped `timestamp_ms`.
    #[new]
    #[pyo3(signature = (max_bytes, timestamp_ms, *, is_transactional))]
    fn new(max_bytes: usize, timestamp_ms: i64, is_transactional: bool) -> Self {
        RecordBatch {
            buf: vec![0; HEADER],
            records: 0,
            max_bytes,
            timestamp_ms,
            transactional: is_transactional,
            // aiokafka's defaults until the producer sets its own state.
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: 0,
            closed: false,
            built: None,
        }
    }

    /// Append `outputs[start:]` in order while they fit; return the index of the first one
    /// left out (`len(outputs)` when all went in). Each output is a tuple whose items 1, 2
    /// and 3 are its key, value and headers (a sequence of (str, bytes or None) pairs).
    ///
    /// Two passes: the records that fit are measured first, so the buffer grows once, to
    /// its size, rather than being copied as it doubles.
    fn extend(&mut self, outputs: &Bound<'_, PyList>, start: usize) -> PyResult<usize> {
        if self.closed {
            return Err(PyRuntimeError::new_err("RecordBatch: closed"));
        }
        let n = outputs.len();
        let mut taken: Vec<Taken<'_>> = Vec::with_capacity(n.saturating_sub(start));
        let mut headers: Vec<(Bound<'_, PyString>, Bound<'_, PyAny>)> = Vec::new();
        let mut size = self.buf.len();
        let mut left_out = n;
        for i in start..n {
            let records = self.records + taken.len() as i32;
            let item = outputs.get_item(i)?;
            let output = item.cast::<PyTuple>()?;
            let key_item = output.get_item(KEY)?;
            let value_item = output.get_item(VALUE)?;
            let key = optional_bytes(&key_item, "key")?;
            let value = optional_bytes(&value_item, "value")?;
            let first_header = headers.len();
            for pair in output.get_item(HEADERS)?.try_iter()? {
                let (name, v): (Bound<'_, PyString>, Bound<'_, PyAny>) = pair?.extract()?;
                headers.push((name, v));
            }
            // attributes, timestamp delta (always 0: one timestamp per batch), offset delta
            let mut body = 1 + varint_len(0) + varint_len(i64::from(records));
            body += varint_len(len_or_null(key)) + key.map_or(0, <[u8]>::len);
            body += varint_len(len_or_null(value)) + value.map_or(0, <[u8]>::len);
            body += varint_len((headers.len() - first_header) as i64);
            for (name, v) in &headers[first_header..] {
                let name = name.to_str()?.as_bytes();
                let v = optional_bytes(v, "header value")?;
                body += varint_len(name.len() as i64) + name.len();
                body += varint_len(len_or_null(v)) + v.map_or(0, <[u8]>::len);
            }
            let required = body + varint_len(body as i64);
            // Strictly below `max_bytes`, as aiokafka's compiled builder keeps its batches.
            if records > 0 && size + required >= self.max_bytes {
                headers.truncate(first_header);
                left_out = i;
                break;
            }
            size += required;
            taken.push(Taken {
                key: key_item,
                value: value_item,
                headers: first_header..headers.len(),
                body,
            });
        }
        let buf = &mut self.buf;
        buf.reserve_exact(size - buf.len());
        for t in &taken {
            write_varint(buf, t.body as i64);
            buf.push(0);
            write_varint(buf, 0);
            write_varint(buf, i64::from(self.records));
            write_field(buf, optional_bytes(&t.key, "key")?);
            write_field(buf, optional_bytes(&t.value, "value")?);
            write_varint(buf, t.headers.len() as i64);
            for (name, v) in &headers[t.headers.clone()] {
                write_field(buf, Some(name.to_str()?.as_bytes()));
                write_field(buf, optional_bytes(v, "header value")?);
            }
            self.records += 1;
        }
        debug_assert_eq!(buf.len(), size);
        if left_out < n {
            self.closed = true;
        }
        Ok(left_out)
    }

    /// Bytes so far, header included.
    fn size(&self, py: Python<'_>) -> usize {
        match &self.built {
            Some(built) => built.bind(py).as_bytes().len(),
            None => self.buf.len(),
        }
    }

    fn record_count(&self) -> i32 {
        self.records
    }

    fn closed(&self) -> bool {
        self.closed
    }

    fn close(&mut self) {
        self.closed = true;
    }

    /// Called by the producer before it sends the batch (idempotence, transactions).
    fn _set_producer_state(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
    }

    /// The finished batch; the same bytes on every later call (a retry sends them again).
    fn _build(&mut self, py: Python<'_>) -> Py<PyBytes> {
        self.closed = true;
        if let Some(built) = &self.built {
            return built.clone_ref(py);
        }
        let buf = &mut self.buf;
        let length = (buf.len() - 12) as i32;
        let attributes = if self.transactional { TRANSACTIONAL } else { 0 };
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(&0i64.to_be_bytes()); // base offset: the broker sets it
        header.extend_from_slice(&length.to_be_bytes());
        header.extend_from_slice(&NO_PARTITION_LEADER_EPOCH.to_be_bytes());
        header.extend_from_slice(&MAGIC.to_be_bytes());
        header.extend_from_slice(&0u32.to_be_bytes()); // CRC, below
        header.extend_from_slice(&attributes.to_be_bytes());
        header.extend_from_slice(&(self.records - 1).max(0).to_be_bytes()); // last offset delta
        let stamp = if self.records > 0 { self.timestamp_ms } else { -1 }; // as aiokafka
        header.extend_from_slice(&stamp.to_be_bytes()); // first timestamp
        header.extend_from_slice(&stamp.to_be_bytes()); // max timestamp
        header.extend_from_slice(&self.producer_id.to_be_bytes());
        header.extend_from_slice(&self.producer_epoch.to_be_bytes());
        header.extend_from_slice(&self.base_sequence.to_be_bytes());
        header.extend_from_slice(&self.records.to_be_bytes());
        debug_assert_eq!(header.len(), HEADER);
        buf[..HEADER].copy_from_slice(&header);
        let crc = crc32c::crc32c(&buf[ATTRIBUTES_AT..]);
        buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        let built: Py<PyBytes> = PyBytes::new(py, buf).unbind();
        self.built = Some(built.clone_ref(py));
        *buf = Vec::new();
        built
    }
}

/// Whether every complete record batch (format v2) in fetched bytes carries the right CRC-32C,
/// computed with the CPU's CRC instruction where it has one. False as soon as a batch of
/// another format or a mismatch is met: the caller then lets the client check them itself.
/// An incomplete batch at the end (a fetch cut at its size limit) is skipped, as the client
/// skips it.
#[pyfunction]
pub fn batches_crc_ok(buf: &[u8]) -> bool {
    let mut at = 0usize;
    while buf.len() - at >= ATTRIBUTES_AT {
        let b = &buf[at..];
        let length = i32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        if length < 0 {
            return false;
        }
        let end = 12 + length as usize;
        if end > b.len() {
            break; // incomplete: not handed out by the client either
        }
        if end < ATTRIBUTES_AT || b[16] != MAGIC as u8 {
            return false;
        }
        let crc = u32::from_be_bytes([b[CRC_AT], b[CRC_AT + 1], b[CRC_AT + 2], b[CRC_AT + 3]]);
        if crc32c::crc32c(&b[ATTRIBUTES_AT..end]) != crc {
            return false;
        }
        at += end;
    }
    true
}
