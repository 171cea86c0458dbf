//! The little of WASI preview 1 a plugin gets: what wasi-libc and Rust's std call at start-up and
//! for `printf`, and nothing that reaches outside the process.
//!
//! No preopened directories, no sockets, no environment, no arguments, an empty stdin; clocks and
//! `random_get` work; stdout and stderr go to the daemon's log, line by line, bounded per call;
//! `proc_exit` ends the call as a failure. Written by hand rather than with `wasmtime-wasi`, whose
//! filesystem and socket layers are all this host would have to disable (and half its build time).
//! Any other `wasi_snapshot_preview1` function a module imports traps when called.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Extern, Linker, Memory};

use super::plugin::Host;

/// The WASI preview 1 module name.
pub const MODULE: &str = "wasi_snapshot_preview1";

const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ESPIPE: i32 = 70;
/// `filetype::character_device`: what stdin, stdout and stderr claim to be.
const CHARACTER_DEVICE: u8 = 2;

/// Output lines a plugin may log per call; the rest are counted and summarised.
pub const LOG_LINES_PER_CALL: u32 = 20;
/// A logged line is cut to this many bytes.
pub const LOG_LINE_BYTES: usize = 1024;

/// The process's monotonic clock origin.
fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn memory(caller: &mut Caller<'_, Host>) -> Option<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

/// Writes `bytes` at guest address `ptr`; false if that is outside the memory.
fn write(caller: &mut Caller<'_, Host>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(m) = memory(caller) else {
        return false;
    };
    m.write(caller, ptr as u32 as usize, bytes).is_ok()
}

/// [`write`] as an errno: `SUCCESS`, or `EFAULT` if `ptr` is outside the memory.
fn put(caller: &mut Caller<'_, Host>, ptr: i32, bytes: &[u8]) -> i32 {
    if write(caller, ptr, bytes) {
        SUCCESS
    } else {
        EFAULT
    }
}

fn write_u32s(caller: &mut Caller<'_, Host>, pairs: &[(i32, u32)]) -> i32 {
    for (ptr, v) in pairs {
        if !write(caller, *ptr, &v.to_le_bytes()) {
            return EFAULT;
        }
    }
    SUCCESS
}

/// The bytes of the iovec array at `iovs` (`iovs_len` entries of {ptr u32, len u32}), gathered
/// up to 64 KiB, and the total length the guest asked to write; `None` if any of it lies outside
/// the memory.
fn gather(caller: &mut Caller<'_, Host>, iovs: i32, iovs_len: i32) -> Option<(Vec<u8>, u32)> {
    let m = memory(caller)?;
    let data = m.data(&*caller);
    let at = |p: u64, n: u64| -> Option<&[u8]> {
        let end = p.checked_add(n)?;
        data.get(usize::try_from(p).ok()?..usize::try_from(end).ok()?)
    };
    let table = at(iovs as u32 as u64, u64::from(iovs_len as u32) * 8)?;
    let mut out = Vec::new();
    let mut total = 0u32;
    for iov in table.chunks_exact(8) {
        let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        let piece = at(u64::from(ptr), u64::from(len))?;
        total = total.saturating_add(len);
        // A plugin writing megabytes to stdout gets its first lines logged, not a copy of it all.
        let room = (64usize << 10).saturating_sub(out.len());
        out.extend_from_slice(&piece[..piece.len().min(room)]);
    }
    Some((out, total))
}

/// Defines the supported functions in `linker`.
pub fn define(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "args_sizes_get",
        |mut c: Caller<'_, Host>, argc: i32, size: i32| write_u32s(&mut c, &[(argc, 0), (size, 0)]),
    )?;
    linker.func_wrap(MODULE, "args_get", |_: Caller<'_, Host>, _: i32, _: i32| {
        SUCCESS
    })?;
    linker.func_wrap(
        MODULE,
        "environ_sizes_get",
        |mut c: Caller<'_, Host>, count: i32, size: i32| {
            write_u32s(&mut c, &[(count, 0), (size, 0)])
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_get",
        |_: Caller<'_, Host>, _: i32, _: i32| SUCCESS,
    )?;
    linker.func_wrap(
        MODULE,
        "clock_res_get",
        |mut c: Caller<'_, Host>, id: i32, out: i32| {
            if !(0..4).contains(&id) {
                return EINVAL;
            }
            put(&mut c, out, &1_000u64.to_le_bytes())
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut c: Caller<'_, Host>, id: i32, _precision: i64, out: i32| {
            let ns = match id {
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                1..=3 => origin().elapsed().as_nanos() as u64,
                _ => return EINVAL,
            };
            put(&mut c, out, &ns.to_le_bytes())
        },
    )?;
    linker.func_wrap(
        MODULE,
        "random_get",
        |mut c: Caller<'_, Host>, buf: i32, len: i32| {
            let mut bytes = vec![0u8; (len as u32 as usize).min(1 << 20)];
            if bytes.len() != len as u32 as usize || getrandom::fill(&mut bytes).is_err() {
                return EINVAL;
            }
            put(&mut c, buf, &bytes)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut c: Caller<'_, Host>, fd: i32, iovs: i32, iovs_len: i32, written: i32| {
            if fd != 1 && fd != 2 {
                return EBADF;
            }
            let Some((bytes, total)) = gather(&mut c, iovs, iovs_len) else {
                return EFAULT;
            };
            // The guest is told everything was written, even what the log bound cut off.
            let answered = write_u32s(&mut c, &[(written, total)]);
            if answered == SUCCESS {
                c.data_mut().output(fd, &bytes);
            }
            answered
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_read",
        |mut c: Caller<'_, Host>, fd: i32, _iovs: i32, _iovs_len: i32, read: i32| {
            if fd != 0 {
                return EBADF;
            }
            write_u32s(&mut c, &[(read, 0)])
        },
    )?;
    linker.func_wrap(MODULE, "fd_close", |_: Caller<'_, Host>, fd: i32| {
        if (0..3).contains(&fd) {
            SUCCESS
        } else {
            EBADF
        }
    })?;
    linker.func_wrap(
        MODULE,
        "fd_seek",
        |_: Caller<'_, Host>, fd: i32, _offset: i64, _whence: i32, _out: i32| {
            if (0..3).contains(&fd) {
                ESPIPE
            } else {
                EBADF
            }
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_fdstat_get",
        |mut c: Caller<'_, Host>, fd: i32, out: i32| {
            if !(0..3).contains(&fd) {
                return EBADF;
            }
            // struct fdstat { u8 filetype; u16 flags; u64 rights_base; u64 rights_inheriting; }
            let mut stat = [0u8; 24];
            stat[0] = CHARACTER_DEVICE;
            stat[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
            put(&mut c, out, &stat)
        },
    )?;
    // No preopened directories: libc asks from fd 3 on and stops at the first EBADF.
    linker.func_wrap(
        MODULE,
        "fd_prestat_get",
        |_: Caller<'_, Host>, _: i32, _: i32| EBADF,
    )?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |_: Caller<'_, Host>, _: i32, _: i32, _: i32| EBADF,
    )?;
    linker.func_wrap(MODULE, "sched_yield", |_: Caller<'_, Host>| SUCCESS)?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_: Caller<'_, Host>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(Exit(code)))
        },
    )?;
    Ok(())
}

/// `proc_exit(code)`: the plugin ended its own call.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the plugin called proc_exit({0})")]
pub struct Exit(pub i32);
