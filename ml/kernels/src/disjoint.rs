//! A raw pointer handed to parallel work items that each write their own part of one buffer.

/// The start of a buffer whose parts are written by different threads, none overlapping.
#[derive(Clone, Copy)]
pub(crate) struct Disjoint<T>(pub(crate) *mut T);

// SAFETY: the users write disjoint parts of the buffer, which outlives the parallel section.
unsafe impl<T> Send for Disjoint<T> {}
unsafe impl<T> Sync for Disjoint<T> {}

impl<T> Disjoint<T> {
    /// The pointer (a method, so closures capture the `Send` wrapper, not its field).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}
