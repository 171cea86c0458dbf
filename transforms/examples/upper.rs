//! upper: a dependency-free Rust plugin. ASCII-uppercases every record; an empty
//! record -> ProcessingFailed("empty record"). See README.md, "Writing a plugin in Rust".
//!
//! Build (Debian's rustc + libstd-rust-dev-wasm32; build.sh does this):
//!   /usr/bin/rustc --edition 2021 --target wasm32-wasi --crate-type cdylib -O \
//!       -C strip=symbols -o build/upper.wasm examples/upper.rs
use std::alloc::{alloc, dealloc, Layout};
use std::cell::RefCell;

const BATCH_MAGIC: &[u8] = b"SPW1";
const OUTPUT_MAGIC: &[u8] = b"SPR1";
const OK: u8 = 0;
const PROCESSING_FAILED: u8 = 2;

thread_local! {
    // The last output buffer: it must outlive the call that returned it.
    static LAST_OUTPUT: RefCell<Vec<u8>> = RefCell::new(Vec::new());
}

// A reactor: exporting _initialize ourselves keeps wasm-ld from wrapping every
// export in a ctors/dtors "command" wrapper.
extern "C" {
    fn __wasm_call_ctors();
}
#[no_mangle]
pub extern "C" fn _initialize() {
    unsafe { __wasm_call_ctors() }
}

#[no_mangle]
pub extern "C" fn spillway_abi_version() -> i32 {
    1
}

#[no_mangle]
pub extern "C" fn spillway_alloc(len: i32) -> i32 {
    if len <= 0 {
        return 0;
    }
    unsafe { alloc(Layout::from_size_align_unchecked(len as usize, 1)) as usize as i32 }
}

#[no_mangle]
pub extern "C" fn spillway_transform(ptr: i32, len: i32) -> i64 {
    let (ptr, len) = (ptr as u32 as usize as *mut u8, len as u32 as usize);
    let out = transform(unsafe { std::slice::from_raw_parts(ptr, len) });
    // The batch buffer came from spillway_alloc and is ours to free.
    unsafe { dealloc(ptr, Layout::from_size_align_unchecked(len, 1)) };
    match out {
        None => 0,
        Some(buf) => LAST_OUTPUT.with(|last| {
            let mut last = last.borrow_mut();
            *last = buf;
            (((last.as_ptr() as usize as u64) << 32) | last.len() as u64) as i64
        }),
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn piece(out: &mut Vec<u8>, bytes: impl ExactSizeIterator<Item = u8>) {
    out.extend((bytes.len() as u32).to_le_bytes());
    out.extend(bytes);
}

fn transform(input: &[u8]) -> Option<Vec<u8>> {
    if input.get(0..4)? != BATCH_MAGIC {
        return None;
    }
    let count = u32_at(input, 4)?;
    let mut out = Vec::with_capacity(input.len() + 64);
    out.extend(OUTPUT_MAGIC);
    out.extend(count.to_le_bytes());
    let mut pos = 8;
    for _ in 0..count {
        let id = input.get(pos..pos + 8)?; // then arrival_ms (unused), data_len, data
        let len = u32_at(input, pos + 16)? as usize;
        let data = input.get(pos + 20..pos + 20 + len)?;
        pos += 20 + len;
        out.extend(id);
        if data.is_empty() {
            out.push(PROCESSING_FAILED);
            out.extend(1u32.to_le_bytes());
            piece(&mut out, b"empty record".iter().copied());
        } else {
            out.push(OK);
            out.extend(1u32.to_le_bytes());
            piece(&mut out, data.iter().map(u8::to_ascii_uppercase));
        }
        out.extend(0u16.to_le_bytes()); // no partition keys
    }
    if pos != input.len() {
        return None;
    }
    Some(out)
}
