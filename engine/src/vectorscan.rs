//! A small safe layer over Vectorscan's C API (`vectorscan-rs-sys`): compile
//! a block-mode database, serialize it to bytes and back (the on-disk cache
//! of compiled prefilters, docs/ARCHITECTURE.md "Prefilter cache"), and scan
//! with per-thread scratch space.
//!
//! The `vectorscan-rs` wrapper crate does not expose serialization, hence
//! this module; it holds every `unsafe` block of the engine.

use std::{
    ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr, CString},
    ptr,
};

use vectorscan_rs_sys as hs;

pub const FLAG_CASELESS: u32 = hs::HS_FLAG_CASELESS;
pub const FLAG_SINGLEMATCH: u32 = hs::HS_FLAG_SINGLEMATCH;
pub const FLAG_PREFILTER: u32 = hs::HS_FLAG_PREFILTER;

extern "C" {
    /// Serialized databases are allocated with the C allocator.
    fn free(pointer: *mut c_void);
}

/// Why a database could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VectorscanError {
    /// The pattern at this position (when known) was rejected.
    Compile {
        message: String,
        expression: Option<usize>,
    },
    /// An expression holds a NUL byte.
    Nul { expression: usize },
    /// Any other failure of the library (resources, a corrupt database).
    Library(String),
}

impl std::fmt::Display for VectorscanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VectorscanError::Compile { message, .. } => write!(f, "vectorscan: {message}"),
            VectorscanError::Nul { expression } => {
                write!(f, "vectorscan: expression {expression} contains NUL")
            }
            VectorscanError::Library(message) => write!(f, "vectorscan: {message}"),
        }
    }
}

fn check(code: hs::hs_error_t, what: &str) -> Result<(), VectorscanError> {
    if code == hs::HS_SUCCESS as hs::hs_error_t {
        Ok(())
    } else {
        Err(VectorscanError::Library(format!("{what} failed ({code})")))
    }
}

/// A compiled block-mode database. Immutable, shared by every thread.
pub struct Database {
    raw: *mut hs::hs_database_t,
}

// SAFETY: a Vectorscan database is read-only once compiled; the library
// allows any number of threads to scan it at once, each with its own scratch.
unsafe impl Send for Database {}
unsafe impl Sync for Database {}

impl Drop for Database {
    fn drop(&mut self) {
        // SAFETY: `raw` came from hs_compile_ext_multi or
        // hs_deserialize_database and is freed once.
        unsafe {
            hs::hs_free_database(self.raw);
        }
    }
}

impl Database {
    /// Compiles `(expression, flags, id)` patterns in block mode.
    pub fn compile(patterns: &[(String, u32, u32)]) -> Result<Database, VectorscanError> {
        let expressions: Vec<CString> = patterns
            .iter()
            .enumerate()
            .map(|(index, (expression, _, _))| {
                CString::new(expression.as_bytes())
                    .map_err(|_| VectorscanError::Nul { expression: index })
            })
            .collect::<Result<_, _>>()?;
        let pointers: Vec<*const c_char> = expressions.iter().map(|e| e.as_ptr()).collect();
        let flags: Vec<c_uint> = patterns.iter().map(|(_, flags, _)| *flags).collect();
        let ids: Vec<c_uint> = patterns.iter().map(|(_, _, id)| *id).collect();
        let mut raw: *mut hs::hs_database_t = ptr::null_mut();
        let mut error: *mut hs::hs_compile_error_t = ptr::null_mut();
        // SAFETY: the arrays hold `patterns.len()` elements and live across
        // the call; on failure `error` is set and freed below.
        let code = unsafe {
            hs::hs_compile_ext_multi(
                pointers.as_ptr(),
                flags.as_ptr(),
                ids.as_ptr(),
                ptr::null(),
                patterns.len() as c_uint,
                hs::HS_MODE_BLOCK,
                ptr::null(),
                &mut raw,
                &mut error,
            )
        };
        if code == hs::HS_SUCCESS as hs::hs_error_t {
            return Ok(Database { raw });
        }
        if error.is_null() {
            return Err(VectorscanError::Library(format!("compile failed ({code})")));
        }
        // SAFETY: a non-null error from the compiler, read then freed once.
        let (message, expression) = unsafe {
            let message = if (*error).message.is_null() {
                String::from("unknown compile error")
            } else {
                CStr::from_ptr((*error).message)
                    .to_string_lossy()
                    .into_owned()
            };
            let expression: c_int = (*error).expression;
            hs::hs_free_compile_error(error);
            (message, usize::try_from(expression).ok())
        };
        Err(VectorscanError::Compile {
            message,
            expression,
        })
    }

    /// The database as bytes (for this library version and CPU).
    pub fn serialize(&self) -> Result<Vec<u8>, VectorscanError> {
        let mut bytes: *mut c_char = ptr::null_mut();
        let mut length: usize = 0;
        // SAFETY: on success the library hands over a malloc'd buffer of
        // `length` bytes, copied then freed once.
        unsafe {
            check(
                hs::hs_serialize_database(self.raw, &mut bytes, &mut length),
                "serialize",
            )?;
            let copy = std::slice::from_raw_parts(bytes as *const u8, length).to_vec();
            free(bytes as *mut c_void);
            Ok(copy)
        }
    }

    /// A database from [`Database::serialize`]'s bytes. The library checks
    /// the bytes' header (version, platform); corrupt or foreign bytes are
    /// an error, never undefined behaviour of ours.
    pub fn deserialize(bytes: &[u8]) -> Result<Database, VectorscanError> {
        let mut raw: *mut hs::hs_database_t = ptr::null_mut();
        // SAFETY: `bytes` is valid for its length during the call.
        unsafe {
            check(
                hs::hs_deserialize_database(bytes.as_ptr() as *const c_char, bytes.len(), &mut raw),
                "deserialize",
            )?;
        }
        Ok(Database { raw })
    }

    /// Per-thread scratch space for scanning this database.
    pub fn scratch(&self) -> Result<Scratch<'_>, VectorscanError> {
        let mut raw: *mut hs::hs_scratch_t = ptr::null_mut();
        // SAFETY: allocates scratch sized for this database.
        unsafe {
            check(hs::hs_alloc_scratch(self.raw, &mut raw), "alloc scratch")?;
        }
        Ok(Scratch {
            raw,
            database: self,
        })
    }
}

/// Scratch space of one thread, tied to its database.
pub struct Scratch<'db> {
    raw: *mut hs::hs_scratch_t,
    database: &'db Database,
}

// SAFETY: scratch may move between threads; it is used by one at a time
// (`scan` takes `&mut self`).
unsafe impl Send for Scratch<'_> {}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        // SAFETY: allocated by hs_alloc_scratch, freed once.
        unsafe {
            hs::hs_free_scratch(self.raw);
        }
    }
}

impl Scratch<'_> {
    /// Calls `on_match(id)` for each match of each pattern in `data`.
    pub fn scan<F: FnMut(u32)>(
        &mut self,
        data: &[u8],
        mut on_match: F,
    ) -> Result<(), VectorscanError> {
        unsafe extern "C" fn trampoline<F: FnMut(u32)>(
            id: c_uint,
            _from: c_ulonglong,
            _to: c_ulonglong,
            _flags: c_uint,
            context: *mut c_void,
        ) -> c_int {
            // SAFETY: `context` is the `&mut F` passed to hs_scan below, alive
            // for the whole call.
            let callback = unsafe { &mut *(context as *mut F) };
            callback(id);
            0
        }
        // Vectorscan takes a 32-bit length: scan larger inputs in windows
        // that overlap by 64 KiB (prefilter matches are candidates only, so
        // a match reported twice does no harm).
        const WINDOW: usize = 1 << 30;
        const OVERLAP: usize = 1 << 16;
        let mut start = 0;
        loop {
            let end = data.len().min(start + WINDOW);
            let chunk = &data[start..end];
            // SAFETY: database and scratch belong together (the scratch was
            // allocated for it); `chunk` is valid for its length.
            let code = unsafe {
                hs::hs_scan(
                    self.database.raw,
                    chunk.as_ptr() as *const c_char,
                    chunk.len() as c_uint,
                    0,
                    self.raw,
                    Some(trampoline::<F>),
                    &mut on_match as *mut F as *mut c_void,
                )
            };
            check(code, "scan")?;
            if end == data.len() {
                return Ok(());
            }
            start = end - OVERLAP;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compile_scan_serialize_and_deserialize() {
        let database = Database::compile(&[
            ("abc[0-9]{3}".into(), FLAG_SINGLEMATCH, 7),
            ("xyz".into(), FLAG_CASELESS | FLAG_SINGLEMATCH, 9),
        ])
        .unwrap();
        let mut seen = Vec::new();
        database
            .scratch()
            .unwrap()
            .scan(b"..abc123..XYZ..", |id| seen.push(id))
            .unwrap();
        seen.sort();
        assert_eq!(seen, vec![7, 9]);

        let bytes = database.serialize().unwrap();
        let again = Database::deserialize(&bytes).unwrap();
        let mut seen_again = Vec::new();
        again
            .scratch()
            .unwrap()
            .scan(b"abc999", |id| seen_again.push(id))
            .unwrap();
        assert_eq!(seen_again, vec![7]);
    }

    #[test]
    fn bad_patterns_and_bad_bytes_are_errors() {
        match Database::compile(&[("ok".into(), 0, 0), ("(unclosed".into(), 0, 1)]) {
            Err(VectorscanError::Compile { expression, .. }) => assert_eq!(expression, Some(1)),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("an unclosed group compiled"),
        }
        assert!(Database::deserialize(b"not a database").is_err());
    }
}
