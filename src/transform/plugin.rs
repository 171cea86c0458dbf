//! One loaded plugin: its compiled module, its limits, and a pool of ready instances.
//!
//! Isolation: every call into the guest (instantiation, `_initialize`, init, alloc, transform) runs
//! under an epoch deadline (a process-wide ticker advances the epoch every [`TICK`]); each
//! instance's linear memory is capped by a store limiter (a refused `memory.grow` returns -1 to the
//! guest); wasm's stack is bounded. A trap of any kind (deadline, out-of-bounds access,
//! `unreachable`, stack overflow, `proc_exit`) is an error value for the batch, never a panic, and
//! the instance it happened in is thrown away. Every buffer the guest names is bounds-checked
//! against its memory before the host reads or writes it.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, ExternType, InstancePre, Linker, Memory, Module, Store, StoreLimits,
    StoreLimitsBuilder, Trap, TypedFunc, ValType,
};

use super::abi::{self, ABI_VERSION, MAX_BATCH_BYTES, MAX_OUTPUT_BYTES};
use super::wasi::{self, Exit, LOG_LINES_PER_CALL, LOG_LINE_BYTES};
use super::TransformError;

/// How often the epoch advances: the resolution of call deadlines.
pub const TICK: Duration = Duration::from_millis(10);
/// wasm's own call stack (not the guest's shadow stack in linear memory).
const MAX_WASM_STACK: usize = 512 << 10;

/// The process's engine, and the thread that advances its epoch.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(MAX_WASM_STACK);
        if std::env::var_os("SPILLWAY_WASM_PERFMAP").is_some() {
            // For profiling plugins: compiled code is named in /tmp/perf-<pid>.map for `perf`.
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).expect("the default wasmtime configuration is valid");
        let ticker = engine.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                ticker.increment_epoch();
            })
            .expect("spawning the epoch thread");
        engine
    })
}

/// What a plugin is and how it may run.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The module file, as configured (for messages and error documents).
    pub path: PathBuf,
    /// The module's bytes (a binary module, or WAT text).
    pub bytes: Arc<Vec<u8>>,
    /// The transform export to call.
    pub function: String,
    /// Passed to `spillway_init`.
    pub config: String,
    /// Deadline of every call into the guest.
    pub timeout: Duration,
    /// Cap of the instance's linear memory, in bytes.
    pub memory_bytes: usize,
}

impl PluginSpec {
    /// Hex SHA-256 of the module bytes: the module's identity in the compile cache and the
    /// routing fingerprint.
    pub fn digest(&self) -> String {
        digest(&self.bytes)
    }

    /// How error documents name the plugin (their `lambdaArn` field).
    pub fn identity(&self) -> String {
        format!("wasm:{}#{}", self.path.display(), self.function)
    }
}

/// Hex SHA-256 of a module.
pub fn digest(module: &[u8]) -> String {
    Sha256::digest(module)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What one call attempt's failure means for the batch and the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// Firehose error code for the batch's records.
    pub code: &'static str,
    pub message: String,
    /// The call ran past its deadline (a failure that depends on the batch's size and the
    /// machine's load, not only on its records).
    pub deadline: bool,
}

impl CallError {
    fn function(message: String) -> CallError {
        CallError {
            code: FUNCTION_ERROR,
            message,
            deadline: false,
        }
    }
}

/// A trap, deadline, `proc_exit` or a call the plugin failed itself.
pub const FUNCTION_ERROR: &str = "Lambda.FunctionError";

/// Per-store state: the memory cap and the plugin's stdout/stderr on their way to the log.
pub struct Host {
    limits: StoreLimits,
    identity: Arc<str>,
    lines: [Vec<u8>; 2],
    lines_left: u32,
    suppressed: u32,
}

impl Host {
    /// Takes bytes the guest wrote to stdout (1) or stderr (2); complete lines are logged.
    pub(super) fn output(&mut self, fd: i32, bytes: &[u8]) {
        let i = usize::from(fd == 2);
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.lines[i]);
                self.log(fd, &line);
            } else if self.lines[i].len() < LOG_LINE_BYTES {
                self.lines[i].push(b);
            }
        }
    }

    fn log(&mut self, fd: i32, line: &[u8]) {
        if self.lines_left == 0 {
            self.suppressed += 1;
            return;
        }
        self.lines_left -= 1;
        // Escaped, so that a plugin cannot forge log lines with control characters.
        let text = String::from_utf8_lossy(line);
        let stream = if fd == 2 { "stderr" } else { "stdout" };
        tracing::info!(plugin = %self.identity, stream, "{}", text.escape_debug());
    }

    /// Starts a call: partial lines are flushed and the per-call line budget renewed.
    fn begin_call(&mut self) {
        for fd in [1, 2] {
            let i = usize::from(fd == 2);
            if !self.lines[i].is_empty() {
                let line = std::mem::take(&mut self.lines[i]);
                self.log(fd, &line);
            }
        }
        if self.suppressed > 0 {
            tracing::info!(plugin = %self.identity, lines = self.suppressed,
                "further plugin output suppressed ({LOG_LINES_PER_CALL} lines per call are logged)");
            self.suppressed = 0;
        }
        self.lines_left = LOG_LINES_PER_CALL;
    }
}

/// An instance ready for a batch.
struct Ready {
    store: Store<Host>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    transform: TypedFunc<(i32, i32), i64>,
}

/// A compiled, checked plugin and its instance pool.
pub struct Plugin {
    spec: PluginSpec,
    identity: Arc<str>,
    pre: InstancePre<Host>,
    deadline_ticks: u64,
    idle: Mutex<Vec<Ready>>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plugin({})", self.identity)
    }
}

impl Plugin {
    /// Compiles (or loads from `cache`, a directory) and checks the module, then makes and
    /// initialises a first instance, so that a plugin that cannot work is refused here.
    pub fn load(spec: PluginSpec, cache: Option<&Path>) -> Result<Plugin, TransformError> {
        let identity: Arc<str> = spec.identity().into();
        let name = spec.identity();
        let refuse = |reason: String| TransformError::Refused {
            plugin: name.clone(),
            reason,
        };
        let module = compile(&spec, cache).map_err(refuse)?;
        check_module(&module, &spec.function).map_err(refuse)?;
        let mut linker = Linker::new(engine());
        wasi::define(&mut linker).map_err(|e| refuse(format!("{e:#}")))?;
        linker
            .define_unknown_imports_as_traps(&module)
            .map_err(|e| refuse(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| refuse(format!("{e:#}")))?;
        let ticks = spec.timeout.as_millis().div_ceil(TICK.as_millis()).max(1) as u64 + 1;
        let plugin = Plugin {
            spec,
            identity,
            pre,
            deadline_ticks: ticks,
            idle: Mutex::new(Vec::new()),
        };
        let first = plugin.instantiate().map_err(|e| refuse(e.message))?;
        plugin.put_back(first);
        Ok(plugin)
    }

    /// The plugin's configuration.
    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    /// How error documents name the plugin.
    pub fn identity(&self) -> &Arc<str> {
        &self.identity
    }

    /// Runs one batch (written into the guest's memory by [`abi::Batch::write_to`]) on a pooled instance
    /// and returns the validated results in input order.
    pub fn call(
        &self,
        batch: &dyn abi::Batch,
        buffers: &mut OutputBuffers,
    ) -> Result<Vec<abi::RecordResult>, CallError> {
        let mut ready = match self.take() {
            Some(r) => r,
            None => self.instantiate()?,
        };
        let outcome = self.call_on(&mut ready, batch, buffers);
        // After any failure the instance is dropped: its state may be what failed (a leak that
        // reached the memory cap, a corrupted heap), and retries must run on a fresh one.
        if outcome.is_ok() {
            self.put_back(ready);
        }
        outcome
    }

    fn take(&self) -> Option<Ready> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Returns an instance to the pool. The pool never holds more instances than were in use at
    /// once (one per pipeline thread calling the plugin, i.e. per shard), so it needs no cap.
    fn put_back(&self, ready: Ready) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ready);
    }

    /// A new instance: instantiated, `_initialize`d, version-checked and `spillway_init`ed.
    fn instantiate(&self) -> Result<Ready, CallError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.spec.memory_bytes)
            .memories(1)
            .instances(1)
            .tables(4)
            .table_elements(1 << 16)
            .build();
        let mut store = Store::new(
            engine(),
            Host {
                limits,
                identity: Arc::clone(&self.identity),
                lines: [Vec::new(), Vec::new()],
                lines_left: LOG_LINES_PER_CALL,
                suppressed: 0,
            },
        );
        store.limiter(|h| &mut h.limits);
        store.epoch_deadline_trap();
        let fail = |stage: &str, e: wasmtime::Error| trapped(stage, &e, self.spec.timeout);
        store.set_epoch_deadline(self.deadline_ticks);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| fail("instantiating", e))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| CallError::function("the module exports no memory".into()))?;
        let typed = |store: &mut Store<Host>, name: &str| {
            instance
                .get_func(&mut *store, name)
                .ok_or_else(|| CallError::function(format!("the module does not export {name}")))
        };
        let alloc = typed(&mut store, "spillway_alloc")?
            .typed::<i32, i32>(&store)
            .map_err(|e| fail("spillway_alloc", e))?;
        let transform = typed(&mut store, &self.spec.function)?
            .typed::<(i32, i32), i64>(&store)
            .map_err(|e| fail(&self.spec.function, e))?;
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            store.set_epoch_deadline(self.deadline_ticks);
            init.call(&mut store, ())
                .map_err(|e| fail("_initialize", e))?;
        }
        let version = instance
            .get_typed_func::<(), i32>(&mut store, "spillway_abi_version")
            .map_err(|e| fail("spillway_abi_version", e))?;
        store.set_epoch_deadline(self.deadline_ticks);
        let v = version
            .call(&mut store, ())
            .map_err(|e| fail("spillway_abi_version", e))?;
        if v != ABI_VERSION {
            return Err(CallError::function(
                format!("the plugin implements ABI version {v}; this Spillway supports version {ABI_VERSION}")));
        }
        let mut ready = Ready {
            store,
            memory,
            alloc,
            transform,
        };
        match instance.get_typed_func::<(i32, i32), i32>(&mut ready.store, "spillway_init") {
            Ok(init) => {
                let config = self.spec.config.as_bytes();
                let ptr = if config.is_empty() {
                    0
                } else {
                    self.copy_in(&mut ready, config.len(), |out| out.copy_from_slice(config))?
                };
                ready.store.set_epoch_deadline(self.deadline_ticks);
                let rc = init
                    .call(&mut ready.store, (ptr as i32, config.len() as i32))
                    .map_err(|e| fail("spillway_init", e))?;
                if rc != 0 {
                    return Err(CallError::function(format!(
                        "spillway_init returned {rc} (the plugin refused its config)"
                    )));
                }
            }
            Err(_) if !self.spec.config.is_empty() => {
                return Err(CallError::function(
                    "a config is set but the plugin exports no spillway_init to take it".into(),
                ))
            }
            Err(_) => {}
        }
        Ok(ready)
    }

    /// `spillway_alloc`s a guest buffer of `len` bytes and has `write` fill it; returns its
    /// address.
    fn copy_in(
        &self,
        ready: &mut Ready,
        len: usize,
        write: impl FnOnce(&mut [u8]),
    ) -> Result<u32, CallError> {
        ready.store.set_epoch_deadline(self.deadline_ticks);
        let ptr = ready
            .alloc
            .call(&mut ready.store, len as i32)
            .map_err(|e| trapped("spillway_alloc", &e, self.spec.timeout))?
            as u32;
        if ptr == 0 {
            return Err(CallError::function(format!(
                "spillway_alloc returned 0 for {len} bytes"
            )));
        }
        let size = ready.memory.data_size(&ready.store) as u64;
        if u64::from(ptr) + len as u64 > size {
            return Err(CallError::function(
                format!(
                    "spillway_alloc returned {ptr:#x} for {len} bytes, outside the plugin's {size}-byte memory"
                )));
        }
        write(&mut ready.memory.data_mut(&mut ready.store)[ptr as usize..ptr as usize + len]);
        Ok(ptr)
    }

    fn call_on(
        &self,
        ready: &mut Ready,
        batch: &dyn abi::Batch,
        buffers: &mut OutputBuffers,
    ) -> Result<Vec<abi::RecordResult>, CallError> {
        debug_assert!(batch.encoded_len() <= MAX_BATCH_BYTES);
        let count = batch.records();
        ready.store.data_mut().begin_call();
        let ptr = self.copy_in(ready, batch.encoded_len(), |out| batch.write_to(out))?;
        ready.store.set_epoch_deadline(self.deadline_ticks);
        let r = ready
            .transform
            .call(&mut ready.store, (ptr as i32, batch.encoded_len() as i32))
            .map_err(|e| trapped(&self.spec.function, &e, self.spec.timeout))?
            as u64;
        if r == 0 {
            return Err(CallError::function(format!(
                "{} returned 0 (the plugin failed the batch)",
                self.spec.function
            )));
        }
        let (out_ptr, out_len) = (r >> 32, r & 0xffff_ffff);
        let size = ready.memory.data_size(&ready.store) as u64;
        let malformed = |message: String| CallError {
            code: "Lambda.JsonProcessingException",
            message,
            deadline: false,
        };
        if out_len > MAX_OUTPUT_BYTES as u64 {
            return Err(malformed(format!(
                "the output of {out_len} bytes exceeds the limit of {MAX_OUTPUT_BYTES}"
            )));
        }
        if out_ptr + out_len > size {
            return Err(malformed(format!(
                "the output at {out_ptr:#x} ({out_len} bytes) lies outside the plugin's {size}-byte memory"
            )));
        }
        let out = buffers
            .copy(&ready.memory.data(&ready.store)[out_ptr as usize..(out_ptr + out_len) as usize]);
        abi::parse_output(&out, count).map_err(|e| CallError {
            code: e.code(),
            message: e.to_string(),
            deadline: false,
        })
    }
}

/// Where plugin outputs are copied out of guest memory. The records cut from an output share its
/// buffer; once they are all delivered the buffer is reused, so that steady-state batches allocate
/// (and fault in) no new memory.
#[derive(Debug, Default)]
pub struct OutputBuffers {
    pool: Vec<BytesMut>,
}

/// Buffers kept per pipeline: one per batch whose records may still be alive, plus one.
const OUTPUT_BUFFERS: usize = 4;

impl OutputBuffers {
    /// `bytes` in a buffer of the pool.
    pub fn copy(&mut self, bytes: &[u8]) -> Bytes {
        let i = match self
            .pool
            .iter_mut()
            .position(|b| b.try_reclaim(bytes.len()))
        {
            Some(i) => i,
            None if self.pool.len() < OUTPUT_BUFFERS => {
                self.pool
                    .push(BytesMut::with_capacity(bytes.len().max(64 << 10)));
                self.pool.len() - 1
            }
            None => 0,
        };
        let b = &mut self.pool[i];
        b.extend_from_slice(bytes);
        b.split().freeze()
    }
}

/// The failure of a guest call that trapped or was interrupted, in `stage`.
fn trapped(stage: &str, e: &wasmtime::Error, timeout: Duration) -> CallError {
    CallError {
        code: FUNCTION_ERROR,
        message: format!("{stage}: {}", describe(e, timeout)),
        deadline: matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)),
    }
}

/// A guest failure in words: what trapped, or why the call ended.
fn describe(e: &wasmtime::Error, timeout: Duration) -> String {
    if let Some(exit) = e.downcast_ref::<Exit>() {
        return exit.to_string();
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!(
            "the call ran past its deadline of {} ms and was interrupted",
            timeout.as_millis()
        ),
        Some(trap) => format!("the plugin trapped: {trap}"),
        None => format!("{e:#}"),
    }
}

/// Compiles the module, through the on-disk cache when there is one. The cache key is the
/// module's SHA-256 and the engine's compatibility hash (wasmtime version and settings), so an
/// upgrade or another configuration never loads stale code; a damaged entry is recompiled.
fn compile(spec: &PluginSpec, cache: Option<&Path>) -> Result<Module, String> {
    let engine = engine();
    let Some(dir) = cache else {
        return Module::new(engine, &*spec.bytes).map_err(|e| format!("{e:#}"));
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let path = dir.join(format!("{}-{:016x}.cwasm", spec.digest(), h.finish()));
    if let Ok(file) = std::fs::read(&path) {
        // The entry is the compiled code after its own SHA-256, checked before wasmtime sees it:
        // a torn or altered file is compiled again, never loaded.
        let (sum, code) = file.split_at(file.len().min(32));
        if sum == Sha256::digest(code).as_slice() {
            // SAFETY: `code` is, byte for byte, what `Module::serialize` produced for this
            // module (its checksum matches), written by this function into the daemon's own
            // data directory; wasmtime checks its header against this engine.
            match unsafe { Module::deserialize(engine, code) } {
                Ok(m) => return Ok(m),
                Err(e) => tracing::warn!(cache = %path.display(), error = %format!("{e:#}"),
                    "the compiled plugin in the cache cannot be used; compiling again"),
            }
        } else {
            tracing::warn!(cache = %path.display(), "the compiled plugin in the cache is damaged; compiling again");
        }
    }
    let module = Module::new(engine, &*spec.bytes).map_err(|e| format!("{e:#}"))?;
    let stored = module
        .serialize()
        .map_err(|e| format!("{e:#}"))
        .and_then(|code| store_entry(dir, &path, &code).map_err(|e| e.to_string()));
    if let Err(e) = stored {
        tracing::warn!(cache = %path.display(), error = %e, "could not cache the compiled plugin");
    }
    Ok(module)
}

/// Writes a cache entry (checksum, then code) under a temporary name unique to this process and
/// call, syncs it and renames it into place, so that concurrent writers and crashes leave either
/// a whole entry or none.
fn store_entry(dir: &Path, path: &Path, code: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&Sha256::digest(code))?;
        f.write_all(code)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Checks imports and exports against ABI version 1 before anything runs.
fn check_module(module: &Module, function: &str) -> Result<(), String> {
    for import in module.imports() {
        if import.module() != wasi::MODULE {
            return Err(format!(
                "imports {}.{}: a plugin may import only {} functions",
                import.module(),
                import.name(),
                wasi::MODULE
            ));
        }
        if !matches!(import.ty(), ExternType::Func(_)) {
            return Err(format!(
                "imports {}.{}, which is not a function",
                import.module(),
                import.name()
            ));
        }
    }
    let i32_ = |v: &ValType| matches!(v, ValType::I32);
    let i64_ = |v: &ValType| matches!(v, ValType::I64);
    type Check = fn(&ValType) -> bool;
    let want: [(&str, &[Check], &[Check], bool); 5] = [
        ("spillway_abi_version", &[], &[i32_], true),
        ("spillway_alloc", &[i32_], &[i32_], true),
        (function, &[i32_, i32_], &[i64_], true),
        ("spillway_init", &[i32_, i32_], &[i32_], false),
        ("_initialize", &[], &[], false),
    ];
    let mut has_memory = false;
    for export in module.exports() {
        if export.name() == "memory" {
            match export.ty() {
                ExternType::Memory(m) if !m.is_64() && !m.is_shared() => has_memory = true,
                _ => return Err("its memory export is not a 32-bit, non-shared memory".into()),
            }
        }
    }
    if !has_memory {
        return Err("it does not export its memory as \"memory\"".into());
    }
    for (name, params, results, required) in want {
        let Some(export) = module.get_export(name) else {
            if required {
                return Err(format!("it does not export {name}"));
            }
            continue;
        };
        let ExternType::Func(f) = export else {
            return Err(format!("its export {name} is not a function"));
        };
        let p: Vec<ValType> = f.params().collect();
        let r: Vec<ValType> = f.results().collect();
        let fits = |have: &[ValType], want: &[fn(&ValType) -> bool]| {
            have.len() == want.len() && have.iter().zip(want).all(|(v, w)| w(v))
        };
        if !fits(&p, params) || !fits(&r, results) {
            return Err(format!(
                "its export {name} has the type ({}) -> ({}), which the ABI does not expect",
                types(&p),
                types(&r)
            ));
        }
    }
    Ok(())
}

fn types(list: &[ValType]) -> String {
    list.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) mod testing {
    //! Plugins written in WAT for the host's own tests: a template whose transform answers a
    //! one-record batch with `Ok` and the piece `ok`, unless its body does something else.

    /// `(16 << 32) | 29`: the template's fixed output (at address 16, 29 bytes).
    pub const OK_OUTPUT: &str = "(i64.const 68719476765)";

    /// A module with `body` as `spillway_transform(p, n) -> i64` and `extra` fields added.
    pub fn wat(body: &str, extra: &str) -> String {
        format!(
            r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))
  (data (i32.const 16) "SPR1\01\00\00\00" "\00\00\00\00\00\00\00\00" "\00" "\01\00\00\00" "\02\00\00\00" "ok" "\00\00")
  (func (export "spillway_abi_version") (result i32) (i32.const 1))
  (func (export "spillway_alloc") (param $n i32) (result i32) (i32.const 4096))
  (func (export "spillway_transform") (param $p i32) (param $n i32) (result i64) {body})
  {extra})"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{wat, OK_OUTPUT};
    use super::*;
    use std::time::Instant;

    fn spec(module: String) -> PluginSpec {
        PluginSpec {
            path: "test.wat".into(),
            bytes: Arc::new(module.into_bytes()),
            function: "spillway_transform".into(),
            config: String::new(),
            timeout: Duration::from_millis(200),
            memory_bytes: 1 << 20,
        }
    }

    fn load(module: String) -> Result<Plugin, TransformError> {
        Plugin::load(spec(module), None)
    }

    fn one(data: &[u8]) -> abi::BatchWriter {
        let mut b = abi::BatchWriter::default();
        b.push(0, data);
        b
    }

    fn call(p: &Plugin, data: &[u8]) -> Result<Vec<abi::RecordResult>, CallError> {
        let b = one(data);
        p.call(&b, &mut OutputBuffers::default())
    }

    fn refusal(module: String) -> String {
        match load(module) {
            Err(TransformError::Refused { reason, .. }) => reason,
            Ok(_) => panic!("the module was accepted"),
        }
    }

    #[test]
    fn the_template_works() {
        let p = load(wat(OK_OUTPUT, "")).unwrap();
        let r = call(&p, b"x").unwrap();
        assert_eq!(
            r,
            vec![abi::RecordResult::Ok {
                pieces: vec![Bytes::from_static(b"ok")].into(),
                keys: vec![]
            }]
        );
    }

    #[test]
    fn modules_that_break_the_abi_are_refused_before_running() {
        let base = wat(OK_OUTPUT, "");
        let cases = [
            (base.replace("(export \"memory\")", ""), "memory"),
            (
                base.replace("(export \"spillway_alloc\")", ""),
                "spillway_alloc",
            ),
            (
                base.replace("(param $n i32) (result i64)", "(param $n i64) (result i64)"),
                "(i32, i64) -> (i64)",
            ),
            (
                base.replace(
                    "\"wasi_snapshot_preview1\" \"proc_exit\"",
                    "\"env\" \"exit\"",
                ),
                "env.exit",
            ),
            (
                base.replace(
                    "(result i32) (i32.const 1))",
                    "(result i32) (i32.const 99))",
                ),
                "ABI version 99",
            ),
            (
                wat(
                    OK_OUTPUT,
                    r#"(func (export "spillway_init") (param i32 i32) (result i32) (i32.const 7))"#,
                ),
                "spillway_init returned 7",
            ),
            (
                wat(OK_OUTPUT, "(func $s (loop $l (br $l))) (start $s)"),
                "deadline of 200 ms",
            ),
            (
                "(module (memory (export \"memory\") 17))".into(),
                "spillway_abi_version",
            ),
            ("not a module".into(), "expected"),
        ];
        for (module, wanted) in cases {
            let reason = refusal(module);
            assert!(reason.contains(wanted), "{wanted:?} not in {reason:?}");
        }
        // Memory beyond the cap at instantiation.
        let big = wat(OK_OUTPUT, "").replace(
            "(memory (export \"memory\") 1)",
            "(memory (export \"memory\") 17)",
        );
        assert!(refusal(big).contains("instantiating"));
        // A config for a plugin that cannot take one.
        let mut s = spec(wat(OK_OUTPUT, ""));
        s.config = "x".into();
        assert!(
            matches!(Plugin::load(s, None), Err(TransformError::Refused { reason, .. }) if reason.contains("spillway_init"))
        );
    }

    #[test]
    fn the_config_reaches_spillway_init() {
        // init succeeds only for the 3-byte config "abc" (checks its length and first byte).
        let init = r#"(func (export "spillway_init") (param $p i32) (param $n i32) (result i32)
            (if (result i32) (i32.and (i32.eq (local.get $n) (i32.const 3))
                                      (i32.eq (i32.load8_u (local.get $p)) (i32.const 97)))
              (then (i32.const 0)) (else (i32.const 1))))"#;
        let mut s = spec(wat(OK_OUTPUT, init));
        s.config = "abc".into();
        assert!(Plugin::load(s.clone(), None).is_ok());
        s.config = "xbc".into();
        assert!(Plugin::load(s.clone(), None).is_err());
        s.config = String::new();
        assert!(Plugin::load(s, None).is_err());
    }

    #[test]
    fn an_endless_loop_costs_its_deadline_and_the_next_call_works() {
        // Loops when the first record starts with 'L' (its data is at batch offset 28).
        let body = format!(
            "(if (i32.eq (i32.load8_u (i32.add (local.get $p) (i32.const 28))) (i32.const 76))
                (then (loop $l (br $l)))) {OK_OUTPUT}"
        );
        let p = load(wat(&body, "")).unwrap();
        let started = Instant::now();
        let e = call(&p, b"L").unwrap_err();
        let took = started.elapsed();
        assert_eq!(e.code, FUNCTION_ERROR);
        assert!(e.message.contains("deadline of 200 ms"), "{}", e.message);
        assert!(e.deadline);
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert!(call(&p, b"x").is_ok());
    }

    #[test]
    fn traps_are_contained_and_named() {
        let cases = [
            ("(unreachable)", "unreachable"),
            ("(call $exit (i32.const 3)) (unreachable)", "proc_exit(3)"),
            ("(i64.load (i32.const -1))", "out of bounds"),
            ("(call $deep) (unreachable)", "call stack exhausted"),
        ];
        for (body, wanted) in cases {
            let p = load(wat(body, "(func $deep (call $deep))")).unwrap();
            let e = call(&p, b"x").unwrap_err();
            assert_eq!(e.code, FUNCTION_ERROR);
            assert!(
                e.message.contains(wanted),
                "{wanted:?} not in {:?}",
                e.message
            );
            assert!(!e.deadline);
        }
    }

    #[test]
    fn stdout_writes_are_answered_and_bounds_checked() {
        // fd_write(1, iovec at 100 = {ptr 200, len 3}, 1, nwritten at 120) must return 0 and
        // store 3; with the iovec array outside memory it must return EFAULT (21). Answers Ok
        // only if both hold.
        let extra = r#"(import "wasi_snapshot_preview1" "fd_write"
                (func $write (param i32 i32 i32 i32) (result i32)))
            (data (i32.const 100) "\c8\00\00\00\03\00\00\00")
            (data (i32.const 200) "hi\n")"#;
        let body = format!(
            "(if (result i64)
               (i32.and
                 (i32.and (i32.eqz (call $write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 120)))
                          (i32.eq (i32.load (i32.const 120)) (i32.const 3)))
                 (i32.eq (call $write (i32.const 1) (i32.const 65532) (i32.const 1) (i32.const 120))
                         (i32.const 21)))
               (then {OK_OUTPUT}) (else (i64.const 0)))"
        );
        // Imports must precede the other fields: put fd_write right after the template's import.
        let module = wat(&body, "").replacen(
            "(memory (export \"memory\") 1)",
            &format!("{extra}\n  (memory (export \"memory\") 1)"),
            1,
        );
        let p = load(module).unwrap();
        assert!(call(&p, b"x").is_ok());
    }

    #[test]
    fn memory_cannot_grow_past_the_cap() {
        // Grows a page at a time until refused, then writes just past what it got.
        let body = "(block $done (loop $l
                (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
                (br $l)))
            (i32.store8 (i32.mul (memory.size) (i32.const 65536)) (i32.const 1))
            (unreachable)";
        let p = load(wat(body, "")).unwrap();
        let e = call(&p, b"x").unwrap_err();
        assert!(e.message.contains("out of bounds"), "{}", e.message);
        // Reports the pages it reached as the output length (outside its 1 MiB = 16 pages, so
        // the host refuses the output and says where it was).
        let body = "(block $done (loop $l
                (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
                (br $l)))
            (i64.or (i64.shl (i64.const 1048576) (i64.const 32)) (i64.extend_i32_u (memory.size)))";
        let p = load(wat(body, "")).unwrap();
        let e = call(&p, b"x").unwrap_err();
        assert!(
            e.message.contains("(16 bytes)") && e.message.contains("1048576-byte memory"),
            "{}",
            e.message
        );
    }

    #[test]
    fn guest_buffers_outside_memory_are_refused() {
        let alloc_at = |addr: &str| {
            wat(OK_OUTPUT, "").replace(
                "(result i32) (i32.const 4096))",
                &format!("(result i32) (i32.const {addr}))"),
            )
        };
        let p = load(alloc_at("0")).unwrap_or_else(|e| panic!("{e}"));
        let e = call(&p, b"x").unwrap_err();
        assert!(e.message.contains("returned 0") && !e.deadline, "{e:?}");
        let p = load(alloc_at("65530")).unwrap();
        let e = call(&p, b"record").unwrap_err();
        assert!(e.message.contains("outside"), "{e:?}");
        for (out, wanted) in [
            ("(i64.const -281474976710640)", "outside"), // 0xFFFF0000 << 32 | 16
            ("(i64.const 281449206906896)", "outside"),  // 65530 << 32 | 16: straddles the end
            ("(i64.const 7340033)", "exceeds the limit"),
            ("(i64.const 0)", "returned 0"),
        ] {
            let p = load(wat(out, "")).unwrap();
            let e = call(&p, b"x").unwrap_err();
            assert!(e.message.contains(wanted), "{out}: {e:?}");
        }
    }

    #[test]
    fn compiled_modules_are_cached_and_a_damaged_entry_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(wat(OK_OUTPUT, ""));
        let p = Plugin::load(s.clone(), Some(dir.path())).unwrap();
        assert!(call(&p, b"x").is_ok());
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(entries.len(), 1);
        let path = entries[0].path();
        assert!(path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&s.digest()));
        let good = std::fs::read(&path).unwrap();
        let p = Plugin::load(s.clone(), Some(dir.path())).unwrap();
        assert!(call(&p, b"x").is_ok());
        std::fs::write(&path, b"garbage").unwrap();
        let p = Plugin::load(s.clone(), Some(dir.path())).unwrap();
        assert!(call(&p, b"x").is_ok());
        assert_eq!(std::fs::read(&path).unwrap(), good);
        // One flipped byte in the code is caught by the checksum, not loaded.
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let p = Plugin::load(s, Some(dir.path())).unwrap();
        assert!(call(&p, b"x").is_ok());
        assert_eq!(std::fs::read(&path).unwrap(), good);
    }
}
