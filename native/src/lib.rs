//! logit-router's hot path in one compiled call per record: read the event, score it, decide,
//! and write the output document, with the bytes and values of the Python path
//! (`worker/core/records.py`, `worker/core/routing.py`). `worker/core/native.py` is the only caller.

mod batch;
mod columns;
mod fetch;
mod job;
mod json;
mod outputs;
mod score;
mod tuples;

// Outputs are built on the routing threads and freed on the event loop's. glibc's malloc locks
// the building thread's arena for each such free, and the two threads waited on each other;
// mimalloc frees across threads without a lock.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

/// A value each record gives its output, named as the output schema's field it fills.
#[derive(Clone, Copy)]
enum Slot {
    Decision,
    Label,
    ClassIndex,
    Probabilities,
    Top1,
    Top2,
    Margin,
    Entropy,
    Reason,
    ShadowDecision,
    ShadowReason,
    ShadowMargin,
    Partition,
    Offset,
    Timestamp,
}

impl Slot {
    fn named(name: &str) -> PyResult<Self> {
        Ok(match name {
            "decision" => Slot::Decision,
            "label" => Slot::Label,
            "class_index" => Slot::ClassIndex,
            "probabilities" => Slot::Probabilities,
            "top1" => Slot::Top1,
            "top2" => Slot::Top2,
            "margin" => Slot::Margin,
            "entropy" => Slot::Entropy,
            "reason" => Slot::Reason,
            "shadow.decision" => Slot::ShadowDecision,
            "shadow.reason" => Slot::ShadowReason,
            "shadow.margin" => Slot::ShadowMargin,
            "source.partition" => Slot::Partition,
            "source.offset" => Slot::Offset,
            "source.timestamp" => Slot::Timestamp,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "Topic: no per-record value named {name:?}"
                )))
            }
        })
    }

    fn is_shadow(self) -> bool {
        matches!(
            self,
            Slot::ShadowDecision | Slot::ShadowReason | Slot::ShadowMargin
        )
    }
}

/// A temperature and the thresholds a decision is taken with (`routing.Policy`'s).
struct Thresholds {
    temperature: f64,
    min_margin: f64,
    min_top1: Option<f64>,
}

impl Thresholds {
    /// `routing.decide` without the audit sample: why these scores are escalated, if they are.
    fn escalation(&self, s: &score::Scores) -> Option<&'static str> {
        if s.margin < self.min_margin {
            Some("low_margin")
        } else if self.min_top1.is_some_and(|m| s.top1 < m) {
            Some("low_top1")
        } else {
            None
        }
    }
}

/// One input topic's policy, what an event must be to be read here, and its outputs' layout:
/// all given by Python, the output encoded once by orjson.
#[pyclass(frozen)]
pub struct Topic {
    live: Thresholds,
    /// `routing.audit_threshold` of the topic's rate: 0 samples nothing.
    audit_threshold: f64,
    /// Evaluated beside the live policy; never where the event goes.
    shadow: Option<Thresholds>,
    /// The topic's labels, each as its JSON string.
    labels: Option<Vec<Vec<u8>>>,
    rules: json::Rules,
    /// The output's constant bytes: `pieces[i]` goes before the value of `slots[i]`, and the
    /// last piece, after the last value, closes the document.
    pieces: Vec<Vec<u8>>,
    slots: Vec<Slot>,
}

#[pymethods]
impl Topic {
    #[new]
    #[pyo3(signature = (
        temperature, min_margin, min_top1, labels, *, audit_threshold, shadow, shadow_min_top1,
        max_bytes, max_classes, min_classes, max_id_chars, max_brackets, output_keys, pieces, slots
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        temperature: f64,
        min_margin: f64,
        min_top1: Option<f64>,
        labels: Option<Vec<Vec<u8>>>,
        audit_threshold: f64,
        shadow: Option<(f64, f64)>,
        shadow_min_top1: Option<f64>,
        max_bytes: usize,
        max_classes: usize,
        min_classes: usize,
        max_id_chars: usize,
        max_brackets: usize,
        output_keys: Vec<Vec<u8>>,
        pieces: Vec<Vec<u8>>,
        slots: Vec<String>,
    ) -> PyResult<Self> {
        if pieces.len() != slots.len() + 1 {
            return Err(PyValueError::new_err(
                "Topic: one piece more than slots expected",
            ));
        }
        let slots = slots
            .iter()
            .map(|s| Slot::named(s))
            .collect::<PyResult<Vec<_>>>()?;
        if slots.iter().any(|s| s.is_shadow()) != shadow.is_some() {
            return Err(PyValueError::new_err(
                "Topic: shadow slots without a shadow policy, or one without them",
            ));
        }
        Ok(Topic {
            live: Thresholds {
                temperature,
                min_margin,
                min_top1,
            },
            audit_threshold,
            shadow: shadow.map(|(temperature, min_margin)| Thresholds {
                temperature,
                min_margin,
                min_top1: shadow_min_top1,
            }),
            labels,
            rules: json::Rules {
                max_bytes,
                max_classes,
                min_classes,
                max_id_chars,
                max_brackets,
                output_keys,
            },
            pieces,
            slots,
        })
    }
}

/// One routed record: the output value and what the metrics read.
pub struct Routed {
    value: Vec<u8>,
    reason: Option<&'static str>,
    top1: f64,
    margin: f64,
    entropy: f64,
    /// The shadow policy's decision: routed?
    shadow_routed: Option<bool>,
}

/// (output value, routed?, reason or None, top1, margin, entropy, shadow routed? or None)
pub type RoutedTuple<'py> = (
    Bound<'py, PyBytes>,
    bool,
    Option<Bound<'py, PyString>>,
    f64,
    f64,
    f64,
    Option<bool>,
);

impl Routed {
    pub fn into_tuple(self, py: Python<'_>) -> RoutedTuple<'_> {
        let routed = self.reason.is_none();
        (
            PyBytes::new(py, &self.value),
            routed,
            self.reason.map(|r| reason_text(py, r)),
            self.top1,
            self.margin,
            self.entropy,
            self.shadow_routed,
        )
    }
}

/// A reason as one shared string per reason: the metrics group outputs by it, by identity first.
fn reason_text<'py>(py: Python<'py>, reason: &'static str) -> Bound<'py, PyString> {
    match reason {
        "low_margin" => intern!(py, "low_margin").clone(),
        "low_top1" => intern!(py, "low_top1").clone(),
        "audit_sample" => intern!(py, "audit_sample").clone(),
        other => PyString::new(py, other),
    }
}

/// Routes a slice of records (one topic per record): per record its output, or `None` when
/// the Python path must do it (see `json.rs`). The GIL is released while it reads, scores
/// and writes.
#[pyfunction]
fn route_many<'py>(
    py: Python<'py>,
    topics: Vec<Bound<'py, Topic>>,
    raws: Vec<Option<Bound<'py, PyBytes>>>,
    partitions: Vec<i64>,
    offsets: Vec<i64>,
    timestamps: Vec<Option<i64>>,
) -> PyResult<Vec<Option<RoutedTuple<'py>>>> {
    let n = topics.len();
    if raws.len() != n || partitions.len() != n || offsets.len() != n || timestamps.len() != n {
        return Err(PyValueError::new_err("route_many: lists of unequal length"));
    }
    let topic_refs: Vec<&Topic> = topics.iter().map(|t| t.get()).collect();
    let slices: Vec<Option<&[u8]>> = raws
        .iter()
        .map(|r| r.as_ref().map(|b| b.as_bytes()))
        .collect();
    // The bytes objects stay referenced by `raws` (and are immutable) until this returns.
    let done: Vec<Option<Routed>> = py.detach(|| {
        (0..n)
            .map(|i| {
                route_one(
                    topic_refs[i],
                    slices[i]?,
                    partitions[i],
                    offsets[i],
                    timestamps[i],
                )
            })
            .collect()
    });
    Ok(done
        .into_iter()
        .map(|r| r.map(|r| r.into_tuple(py)))
        .collect())
}

pub fn route_one(
    topic: &Topic,
    raw: &[u8],
    partition: i64,
    offset: i64,
    timestamp: Option<i64>,
) -> Option<Routed> {
    let mut out = Vec::with_capacity(raw.len() * 2 + 512);
    let event = json::read_event(raw, &topic.rules, &mut out)?;
    let width = event.logits.len();
    if event.labels.is_none() {
        if let Some(l) = &topic.labels {
            if l.len() != width {
                return None; // topic_labels_mismatch: named by the Python path
            }
        }
    }
    let s = score::score(&event.logits, topic.live.temperature)?;
    let reason = topic.live.escalation(&s).or_else(|| {
        // The audit sample's rule is stated in `routing.py`; the threshold comes from there.
        let sampled = topic.audit_threshold > 0.0
            && f64::from(positive_murmur2(event.id)) < topic.audit_threshold;
        sampled.then_some("audit_sample")
    });
    let shadow = match &topic.shadow {
        Some(t) => {
            let sh = score::score(&event.logits, t.temperature)?;
            Some((t.escalation(&sh), sh.margin))
        }
        None => None,
    };
    for (piece, slot) in topic.pieces.iter().zip(&topic.slots) {
        out.extend_from_slice(piece);
        match slot {
            Slot::Decision => write_decision(&mut out, reason),
            Slot::Label => match (&event.labels, &topic.labels) {
                (Some(l), _) => out.extend_from_slice(l[s.class_index]),
                (None, Some(l)) => out.extend_from_slice(&l[s.class_index]),
                (None, None) => {
                    out.push(b'"');
                    json::write_int(&mut out, s.class_index as i64);
                    out.push(b'"');
                }
            },
            Slot::ClassIndex => json::write_int(&mut out, s.class_index as i64),
            Slot::Probabilities => {
                out.push(b'[');
                for (k, &p) in s.probabilities.iter().enumerate() {
                    if k > 0 {
                        out.push(b',');
                    }
                    json::write_f64(&mut out, p);
                }
                out.push(b']');
            }
            Slot::Top1 => json::write_f64(&mut out, s.top1),
            Slot::Top2 => json::write_f64(&mut out, s.top2),
            Slot::Margin => json::write_f64(&mut out, s.margin),
            Slot::Entropy => json::write_f64(&mut out, s.entropy),
            Slot::Reason => write_reason(&mut out, reason),
            Slot::ShadowDecision => write_decision(&mut out, shadow?.0),
            Slot::ShadowReason => write_reason(&mut out, shadow?.0),
            Slot::ShadowMargin => json::write_f64(&mut out, shadow?.1),
            Slot::Partition => json::write_int(&mut out, partition),
            Slot::Offset => json::write_int(&mut out, offset),
            Slot::Timestamp => match timestamp {
                Some(t) => json::write_int(&mut out, t),
                None => out.extend_from_slice(b"null"),
            },
        }
    }
    out.extend_from_slice(topic.pieces.last()?);
    Some(Routed {
        value: out,
        reason,
        top1: s.top1,
        margin: s.margin,
        entropy: s.entropy,
        shadow_routed: shadow.map(|(r, _)| r.is_none()),
    })
}

fn write_decision(out: &mut Vec<u8>, reason: Option<&str>) {
    out.extend_from_slice(match reason {
        None => br#""routed""#.as_slice(),
        Some(_) => br#""escalated""#.as_slice(),
    });
}

fn write_reason(out: &mut Vec<u8>, reason: Option<&str>) {
    match reason {
        None => out.extend_from_slice(b"null"),
        Some(r) => {
            out.push(b'"');
            out.extend_from_slice(r.as_bytes());
            out.push(b'"');
        }
    }
}

/// The index in a topic's sorted partitions of a record with this key, as the Java client's
/// and aiokafka's default partitioner picks it: murmur2 of the key, sign bit cleared, modulo
/// the partition count. (aiokafka's murmur2 is pure Python: about 3.5 µs a record.)
#[pyfunction]
fn partition_index(key: &[u8], partitions: u32) -> u32 {
    positive_murmur2(key) % partitions
}

/// Outputs (tuples whose first two items are the topic and the key) by `(topic, partition)`,
/// each partition's in the order given, the partition picked as `partition_index` picks it
/// among `partitions[topic]` (sorted ids); `None` when an output has no key (the partitioner
/// picks such a partition at random) or a topic is not in `partitions`.
#[pyfunction]
fn partition_slots<'py>(
    py: Python<'py>,
    outputs: &Bound<'py, PyList>,
    partitions: &Bound<'py, PyDict>,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let slots = PyDict::new(py);
    // The last topic seen and its partitions: outputs of one topic tend to come in runs.
    let mut last: Option<(Bound<'py, PyAny>, Bound<'py, PyList>)> = None;
    for output in outputs.iter() {
        let output = output.cast_into::<PyTuple>()?;
        let topic = output.get_item(0)?;
        let key = output.get_item(1)?;
        let Ok(key) = key.cast::<PyBytes>() else {
            return Ok(None);
        };
        let known = match &last {
            Some((t, known)) if t.is(&topic) => known.clone(),
            _ => {
                let Some(known) = partitions.get_item(&topic)? else {
                    return Ok(None);
                };
                let known = known.cast_into::<PyList>()?;
                last = Some((topic.clone(), known.clone()));
                known
            }
        };
        let n = known.len() as u32;
        if n == 0 {
            return Ok(None);
        }
        let partition = known.get_item(partition_index(key.as_bytes(), n) as usize)?;
        let slot = (topic, partition).into_pyobject(py)?;
        match slots.get_item(&slot)? {
            Some(held) => held.cast_into::<PyList>()?.append(output)?,
            None => slots.set_item(slot, PyList::new(py, [output])?)?,
        }
    }
    Ok(Some(slots))
}

/// murmur2 with the sign bit cleared, as Kafka's partitioner and the audit sample read it.
fn positive_murmur2(data: &[u8]) -> u32 {
    murmur2(data) & 0x7fff_ffff
}

/// `org.apache.kafka.common.utils.Utils.murmur2`.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The exactly rounded sum, exposed so that tests can hold it against `math.fsum`.
#[pyfunction]
fn fsum(values: Vec<f64>) -> f64 {
    score::fsum(values.into_iter())
}

/// A finite float as orjson writes it, exposed for the same reason.
#[pyfunction]
fn format_float(py: Python<'_>, v: f64) -> Bound<'_, PyBytes> {
    let mut out = Vec::new();
    json::write_f64(&mut out, v);
    PyBytes::new(py, &out)
}

#[pymodule]
fn logit_router_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Topic>()?;
    m.add_class::<batch::RecordBatch>()?;
    m.add_class::<job::RouteJob>()?;
    m.add_function(wrap_pyfunction!(route_many, m)?)?;
    m.add_function(wrap_pyfunction!(partition_index, m)?)?;
    m.add_function(wrap_pyfunction!(partition_slots, m)?)?;
    m.add_function(wrap_pyfunction!(batch::batches_crc_ok, m)?)?;
    m.add_function(wrap_pyfunction!(fetch::unpack_batches, m)?)?;
    m.add_function(wrap_pyfunction!(columns::output_columns, m)?)?;
    m.add_function(wrap_pyfunction!(outputs::outbounds, m)?)?;
    m.add_function(wrap_pyfunction!(fsum, m)?)?;
    m.add_function(wrap_pyfunction!(format_float, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
