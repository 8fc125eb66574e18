//! Named tuples made in C: the worker's record types are `typing.NamedTuple`s.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// An instance of the named tuple `kind` holding `items`, made as `tuple.__new__(kind, items)`
/// makes it, without the intermediate tuple.
pub fn named<'py, const N: usize>(
    py: Python<'py>,
    kind: &Bound<'py, PyType>,
    items: [Bound<'py, PyAny>; N],
) -> PyResult<Bound<'py, PyAny>> {
    unsafe {
        let obj = ffi::PyType_GenericAlloc(kind.as_ptr().cast(), N as ffi::Py_ssize_t);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        let obj = Bound::from_owned_ptr(py, obj);
        for (i, item) in items.into_iter().enumerate() {
            // Steals the reference; every slot of the new tuple is empty.
            if ffi::PyTuple_SetItem(obj.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr()) != 0 {
                return Err(PyErr::fetch(py));
            }
        }
        Ok(obj)
    }
}
