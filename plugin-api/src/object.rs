//! Opaque objects: values made by one plugin and called by another.
//!
//! A model handle (a denoiser, a VAE, a text encoder) is an object. The consumer knows only its
//! interface name and calls methods by name with [`Value`] arguments (typed protocols pass one
//! [`crate::value::Record`]); the call runs in the library that made the object. Typed clients
//! for well-known interfaces (`sdk::denoiser`, `sdk::hooks`) are built on [`ObjectHandle::call`].
//!
//! Plugin authors implement the plain-Rust [`ObjectImpl`] and wrap it with [`ObjectHandle::new`],
//! which catches panics at the boundary; [`Object`] is the ABI-level trait behind it.

use std::fmt;

use abi_stable::sabi_trait;
use abi_stable::std_types::{RArc, RResult, RStr, RString, RVec};
use abi_stable::StableAbi;

use crate::abi_value::{from_abi_vec, to_abi_vec, AbiValue};
use crate::error::NodeError;
use crate::host::HostRef;
use crate::value::Value;

/// The interface every object implements.
#[sabi_trait]
pub trait Object: Send + Sync + 'static {
    /// The interface name, e.g. `Denoiser`.
    fn interface(&self) -> RString;

    /// The model family, e.g. `sd1`; empty when it does not apply.
    fn family(&self) -> RString;

    /// Calls `method` with `args`. Unknown methods return an error naming the method.
    fn call(
        &self,
        host: HostRef<'_>,
        method: RStr<'_>,
        args: RVec<AbiValue>,
    ) -> RResult<RVec<AbiValue>, NodeError>;

    /// A short human-readable description (for logs and `--explain`).
    #[sabi(last_prefix_field)]
    fn describe(&self) -> RString;
}

/// What an object method returns.
pub type Reply = Result<Vec<Value>, NodeError>;

/// What a plugin author implements to make an object (see [`ObjectHandle::new`]).
pub trait ObjectImpl: Send + Sync + 'static {
    /// The interface name, e.g. `Denoiser`.
    fn interface(&self) -> String;

    /// The model family, e.g. `sd1`; empty when it does not apply.
    fn family(&self) -> String {
        String::new()
    }

    /// Calls `method` with `args`.
    fn call(&self, host: HostRef<'_>, method: &str, args: Vec<Value>) -> Reply;

    /// A short human-readable description.
    fn describe(&self) -> String {
        self.interface()
    }
}

/// Adapts an [`ObjectImpl`] to the ABI trait, turning panics into errors.
struct Guarded<T>(T);

fn text_or(f: impl FnOnce() -> String, fallback: &str) -> RString {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| fallback.to_string())
        .into()
}

impl<T: ObjectImpl> Object for Guarded<T> {
    fn interface(&self) -> RString {
        text_or(|| self.0.interface(), "?")
    }

    fn family(&self) -> RString {
        text_or(|| self.0.family(), "")
    }

    fn call(
        &self,
        host: HostRef<'_>,
        method: RStr<'_>,
        args: RVec<AbiValue>,
    ) -> RResult<RVec<AbiValue>, NodeError> {
        crate::sdk::guard(|| {
            let args = from_abi_vec(args)?;
            self.0.call(host, method.as_str(), args).map(to_abi_vec)
        })
        .into()
    }

    fn describe(&self) -> RString {
        text_or(|| self.0.describe(), "object (its describe() panicked)")
    }
}

/// A shared, refcounted handle to an object. Cloning is cheap; the object is dropped (in its own
/// library) when the last handle goes.
#[repr(transparent)]
#[derive(StableAbi)]
pub struct ObjectHandle {
    inner: Object_TO<RArc<()>>,
}

impl ObjectHandle {
    /// Wraps a plugin-side object. Its methods run inside `catch_unwind`: a panic becomes an
    /// error of kind `Panicked` for the caller.
    pub fn new<T: ObjectImpl>(object: T) -> Self {
        ObjectHandle {
            inner: Object_TO::from_ptr(
                RArc::new(Guarded(object)),
                abi_stable::sabi_trait::TD_Opaque,
            ),
        }
    }

    /// Interface name.
    pub fn interface(&self) -> String {
        self.inner.interface().into()
    }

    /// Model family.
    pub fn family(&self) -> String {
        self.inner.family().into()
    }

    /// Description.
    pub fn describe(&self) -> String {
        self.inner.describe().into()
    }

    /// Calls a method.
    pub fn call(&self, host: HostRef<'_>, method: &str, args: Vec<Value>) -> Reply {
        let out = self
            .inner
            .call(host, method.into(), to_abi_vec(args))
            .into_result()?;
        from_abi_vec(out)
    }

    /// A stable identity for the object while it lives (its address), used for hashing.
    pub fn identity(&self) -> usize {
        self.inner.obj.sabi_erased_ref().get() as *const _ as *const () as usize
    }
}

impl Clone for ObjectHandle {
    fn clone(&self) -> Self {
        ObjectHandle {
            inner: Object_TO::from_sabi(self.inner.obj.shallow_clone()),
        }
    }
}

impl fmt::Debug for ObjectHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Object({})", self.describe())
    }
}
