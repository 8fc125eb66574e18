//! `RouteJob`: a slice of records routed off the event loop, by two threads that live as long
//! as the process.
//!
//! The threads never take the GIL. They read the topics (frozen) and each record's value in the
//! buffer of its Python `bytes`, which never changes and which the job keeps alive: nothing is
//! copied when a job begins. A job of `PARALLEL_FROM`
//! records or more is cut in two halves, one per thread. When the last part is routed, `done()`
//! turns true and one byte goes to the job's `notify_fd`, for the event loop to wake on.
//! Two threads for the process, not one per job: each thread that allocates gets a malloc
//! arena of its own, and arenas keep what they once held.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::{route_one, Routed, RoutedTuple, Topic};

/// Records from which a job is cut in two, one half per thread.
const PARALLEL_FROM: usize = 1_000;
const THREADS: usize = 2;

type Task = Box<dyn FnOnce() + Send>;

/// The routing threads' queue; `Err` if they could not be started.
static POOL: OnceLock<Result<Mutex<Sender<Task>>, String>> = OnceLock::new();

fn submit(task: Task) -> PyResult<()> {
    let pool = POOL.get_or_init(|| {
        let (tx, rx) = channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..THREADS {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("logit-router-routing-{i}"))
                .spawn(move || loop {
                    // The lock is released as soon as a task is received.
                    let task = match rx.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    match task {
                        Ok(task) => task(),
                        Err(_) => return, // the sender is gone: the process is ending
                    }
                })
                .map_err(|e| format!("RouteJob: no routing thread: {e}"))?;
        }
        Ok(Mutex::new(tx))
    });
    let tx = pool.as_ref().map_err(|e| PyRuntimeError::new_err(e.clone()))?;
    tx.lock()
        .map_err(|_| PyRuntimeError::new_err("RouteJob: poisoned queue"))?
        .send(task)
        .map_err(|_| PyRuntimeError::new_err("RouteJob: the routing threads are gone"))
}

/// Where a record's value is: the buffer of a Python `bytes` that `Input::values` holds.
#[derive(Clone, Copy)]
struct Span(*const u8, usize);

// SAFETY: a `bytes` object's buffer is immutable and lives as long as the object, and
// `Input::values` holds every object a span points into for as long as the spans are read.
unsafe impl Send for Span {}
unsafe impl Sync for Span {}

/// What a job's threads read.
struct Input {
    topics: Vec<Py<Topic>>,
    topic_of: Vec<usize>,
    /// The records' values, held for `spans` (dropped without the GIL, PyO3 defers the
    /// decrements to the next time it is held).
    #[allow(dead_code)] // held, never read: the spans read the buffers
    values: Vec<Py<PyBytes>>,
    /// Per record its value, or `None` for a record without one.
    spans: Vec<Option<Span>>,
    partitions: Vec<i64>,
    offsets: Vec<i64>,
    timestamps: Vec<Option<i64>>,
}

impl Input {
    fn route(&self, from: usize, to: usize) -> Vec<Option<Routed>> {
        let topics: Vec<&Topic> = self.topics.iter().map(|t| t.get()).collect();
        (from..to)
            .map(|i| {
                let Span(at, len) = self.spans[i]?;
                // SAFETY: see `Span`.
                let value = unsafe { std::slice::from_raw_parts(at, len) };
                route_one(
                    topics[self.topic_of[i]],
                    value,
                    self.partitions[i],
                    self.offsets[i],
                    self.timestamps[i],
                )
            })
            .collect()
    }
}

/// Each part's outputs once routed (`Err`: its thread panicked), and how many are still out.
struct Parts {
    routed: Vec<Option<Result<Vec<Option<Routed>>, ()>>>,
    remaining: usize,
}

struct Shared {
    input: Input,
    parts: Mutex<Parts>,
    finished: Condvar,
    done: AtomicBool,
    notify_fd: i32,
}

impl Shared {
    fn run(&self, part: usize, from: usize, to: usize) {
        let routed = catch_unwind(AssertUnwindSafe(|| self.input.route(from, to))).map_err(|_| ());
        let Ok(mut parts) = self.parts.lock() else {
            return;
        };
        parts.routed[part] = Some(routed);
        parts.remaining -= 1;
        if parts.remaining == 0 {
            self.done.store(true, Ordering::Release);
            notify(self.notify_fd);
            self.finished.notify_all();
        }
    }
}

#[pyclass(frozen)]
pub struct RouteJob {
    shared: Arc<Shared>,
    taken: AtomicBool,
}

#[pymethods]
impl RouteJob {
    #[new]
    fn new(
        topics: Vec<Bound<'_, Topic>>,
        raws: Vec<Option<Bound<'_, PyBytes>>>,
        partitions: Vec<i64>,
        offsets: Vec<i64>,
        timestamps: Vec<Option<i64>>,
        notify_fd: i32,
    ) -> PyResult<Self> {
        let n = topics.len();
        if raws.len() != n || partitions.len() != n || offsets.len() != n || timestamps.len() != n
        {
            return Err(PyValueError::new_err("RouteJob: lists of unequal length"));
        }
        let mut distinct: Vec<Py<Topic>> = Vec::new();
        let topic_of = topics
            .iter()
            .map(|t| match distinct.iter().position(|d| d.as_ptr() == t.as_ptr()) {
                Some(k) => k,
                None => {
                    distinct.push(t.clone().unbind());
                    distinct.len() - 1
                }
            })
            .collect();
        let mut values = Vec::with_capacity(n);
        let spans = raws
            .into_iter()
            .map(|r| {
                r.map(|b| {
                    let value = b.as_bytes();
                    let span = Span(value.as_ptr(), value.len());
                    values.push(b.unbind());
                    span
                })
            })
            .collect();
        let cuts: Vec<(usize, usize)> = if n >= PARALLEL_FROM {
            vec![(0, n / 2), (n / 2, n)]
        } else {
            vec![(0, n)]
        };
        let shared = Arc::new(Shared {
            input: Input {
                topics: distinct,
                topic_of,
                values,
                spans,
                partitions,
                offsets,
                timestamps,
            },
            parts: Mutex::new(Parts {
                routed: (0..cuts.len()).map(|_| None).collect(),
                remaining: cuts.len(),
            }),
            finished: Condvar::new(),
            done: AtomicBool::new(false),
            notify_fd,
        });
        for (part, (from, to)) in cuts.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            submit(Box::new(move || shared.run(part, from, to)))?;
        }
        Ok(RouteJob {
            shared,
            taken: AtomicBool::new(false),
        })
    }

    /// Whether the records are routed: `results()` will not wait.
    fn done(&self) -> bool {
        self.shared.done.load(Ordering::Acquire)
    }

    /// Per record its output, or `None` when the Python path must do it; waits (without the
    /// GIL) while the threads are routing. Once only.
    fn results<'py>(&self, py: Python<'py>) -> PyResult<Vec<Option<RoutedTuple<'py>>>> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return Err(PyRuntimeError::new_err("RouteJob: results taken already"));
        }
        let routed = py.detach(|| -> Result<Vec<_>, &'static str> {
            let mut parts = self.shared.parts.lock().map_err(|_| "poisoned")?;
            while parts.remaining > 0 {
                parts = self.shared.finished.wait(parts).map_err(|_| "poisoned")?;
            }
            let mut all = Vec::new();
            for part in parts.routed.iter_mut() {
                match part.take() {
                    Some(Ok(routed)) => all.extend(routed),
                    _ => return Err("a routing thread panicked"),
                }
            }
            Ok(all)
        });
        let routed = routed.map_err(|e| PyRuntimeError::new_err(format!("RouteJob: {e}")))?;
        Ok(routed
            .into_iter()
            .map(|r| r.map(|r| r.into_tuple(py)))
            .collect())
    }
}

/// One byte to `fd`, which the caller keeps open while jobs run; a full pipe wakes it already.
fn notify(fd: i32) {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // Borrowed, not owned: ManuallyDrop keeps it from being closed here.
    let mut file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let _ = file.write(&[1]);
}
