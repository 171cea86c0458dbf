//! JSON → Parquet / ORC conversion throughput, side by side with the reference tools on the same
//! NDJSON file and schema: DuckDB's `COPY (SELECT … FROM read_ndjson(…, columns=…)) TO … (FORMAT
//! parquet, COMPRESSION snappy)` and pyarrow's `read_json` + ORC `write_table`.
//!
//! Spillway's side runs the delivery path's conversion (record → rows → Arrow batches → Parquet /
//! ORC writer → file) on N threads, each converting its share of the file's lines into its own file,
//! as N shards' pipelines do. Every tool reads the file from the page cache and writes its output to
//! the same disk without fsync; each figure is the median of `SPILLWAY_BENCH_RUNS` (default 3) runs,
//! wall clock, whole conversion. Every run is its own process (this binary re-runs itself for
//! Spillway's side), and peak RSS is that process's high-water mark (VmHWM / `ru_maxrss`).
//!
//! `cargo bench --bench convert` after `bash tests/run-all.sh` has created `.venv` (pinned duckdb
//! and pyarrow). Env: SPILLWAY_BENCH_RECORDS (default 1,000,000), SPILLWAY_BENCH_THREADS ("1,2"),
//! SPILLWAY_BENCH_PYTHON (default `.venv/bin/python`), SPILLWAY_BENCH_FORMATS ("parquet,orc").

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use memchr::memchr;

use spillway::format::{
    ColumnarWriter, Deserializer, FormatConversion, OrcOptions, OutputFormat, ParquetOptions,
    TableSchema,
};

const NESTED: &[(&str, &str)] = &[
    ("event_id", "string"),
    ("customer_id", "string"),
    ("ts", "timestamp"),
    ("event_type", "string"),
    ("url", "string"),
    ("amount", "double"),
    ("qty", "int"),
    ("tags", "array<string>"),
    ("geo", "struct<country:string,lat:double,lon:double>"),
];

/// The ORC writer takes flat columns only, so the ORC comparison uses the flat part of the schema
/// (both tools skip the other keys).
const FLAT: &[(&str, &str)] = NESTED.split_at(7).0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Byte offsets splitting `path` into `n` runs of whole lines.
fn split_lines(path: &Path, n: usize) -> Vec<(u64, u64)> {
    let len = std::fs::metadata(path).unwrap().len();
    let mut f = BufReader::new(File::open(path).unwrap());
    let mut cuts = vec![0u64];
    for i in 1..n {
        let at = len * i as u64 / n as u64;
        f.seek(SeekFrom::Start(at)).unwrap();
        let mut skip = Vec::new();
        let read = f.read_until(b'\n', &mut skip).unwrap() as u64;
        cuts.push(at + read);
    }
    cuts.push(len);
    cuts.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Converts lines `range` of `input` into `output`; returns the rows written. Lines are handed
/// to the writer as slices of large reads, as the pipeline hands it records of a log chunk.
fn convert(input: &Path, range: (u64, u64), output: &Path, conversion: &FormatConversion) -> u64 {
    let mut f = File::open(input).unwrap();
    f.seek(SeekFrom::Start(range.0)).unwrap();
    let mut reader = f.take(range.1 - range.0);
    let out = BufWriter::with_capacity(1 << 20, File::create(output).unwrap());
    let mut writer = ColumnarWriter::new(out, conversion).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let (mut filled, mut rows) = (0, 0);
    loop {
        let n = reader.read(&mut buf[filled..]).unwrap();
        filled += n;
        let mut start = 0;
        while let Some(end) = memchr(b'\n', &buf[start..filled]) {
            rows += writer.push_record(&buf[start..start + end]).unwrap() as u64;
            start += end + 1;
        }
        if n == 0 {
            if start < filled {
                rows += writer.push_record(&buf[start..filled]).unwrap() as u64;
            }
            break;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
    writer.finish().unwrap();
    rows
}

fn spillway_run(
    input: &Path,
    dir: &Path,
    threads: usize,
    conversion: &FormatConversion,
    ext: &str,
) -> (f64, u64) {
    let ranges = split_lines(input, threads);
    let start = Instant::now();
    let rows: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let out = dir.join(format!("spillway-{i}.{ext}"));
                s.spawn(move || convert(input, *r, &out, conversion))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    (start.elapsed().as_secs_f64(), rows)
}

fn duckdb_code(input: &Path, output: &Path, threads: usize) -> String {
    format!(
        r#"
import duckdb, resource, time
con = duckdb.connect()
con.execute("SET threads = {threads}")
con.execute("SET enable_progress_bar = false")
t = time.perf_counter()
con.execute("""COPY (SELECT * FROM read_ndjson('{input}', columns = {{event_id: 'VARCHAR', customer_id: 'VARCHAR', ts: 'TIMESTAMPTZ', event_type: 'VARCHAR', url: 'VARCHAR', amount: 'DOUBLE', qty: 'INTEGER', tags: 'VARCHAR[]', geo: 'STRUCT(country VARCHAR, lat DOUBLE, lon DOUBLE)'}})) TO '{output}' (FORMAT parquet, COMPRESSION snappy)""")
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"#,
        input = input.display(),
        output = output.display(),
    )
}

fn pyarrow_orc_code(input: &Path, output: &Path, threads: usize) -> String {
    format!(
        r#"
import pyarrow as pa, pyarrow.json as pj, pyarrow.orc as orc, resource, time
pa.set_cpu_count({threads}); pa.set_io_thread_count({threads})
schema = pa.schema([("event_id", pa.string()), ("customer_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")),
                    ("event_type", pa.string()), ("url", pa.string()), ("amount", pa.float64()), ("qty", pa.int32())])
t = time.perf_counter()
table = pj.read_json('{input}', parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"))
orc.write_table(table, '{output}', compression="snappy")
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"#,
        input = input.display(),
        output = output.display(),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Row {
    tool: String,
    threads: usize,
    secs: f64,
    rss_mib: f64,
}

/// In a child process: one Spillway run, printing `seconds peak_rss_kib`.
fn child(spec: &str) {
    let mut it = spec.splitn(4, ',');
    let (ext, threads, input, dir) = (
        it.next().unwrap(),
        it.next().unwrap().parse::<usize>().unwrap(),
        PathBuf::from(it.next().unwrap()),
        PathBuf::from(it.next().unwrap()),
    );
    let conversion = if ext == "parquet" { parquet() } else { orc() };
    let (secs, _) = spillway_run(&input, &dir, threads, &conversion, ext);
    println!("{secs} {}", vm_hwm_mib() * 1024.0);
}

fn parquet() -> FormatConversion {
    FormatConversion {
        schema: TableSchema::from_columns(NESTED.iter().copied()).unwrap(),
        deserializer: Deserializer::default(),
        output: OutputFormat::Parquet(ParquetOptions::default()),
    }
}

fn orc() -> FormatConversion {
    FormatConversion {
        schema: TableSchema::from_columns(FLAT.iter().copied()).unwrap(),
        deserializer: Deserializer::default(),
        output: OutputFormat::Orc(OrcOptions::default()),
    }
}

/// Runs `command`, which prints `seconds peak_rss_kib`.
fn measured(command: &mut Command) -> (f64, f64) {
    let out = command.output().expect("run a benchmark process");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let secs: f64 = it.next().unwrap().parse().unwrap();
    let rss: f64 = it.next().unwrap().parse().unwrap();
    (secs, rss / 1024.0)
}

fn main() {
    if let Ok(spec) = std::env::var("SPILLWAY_BENCH_CHILD") {
        return child(&spec);
    }
    let records: usize = env_or("SPILLWAY_BENCH_RECORDS", 1_000_000);
    let runs: usize = env_or("SPILLWAY_BENCH_RUNS", 3);
    let python =
        std::env::var("SPILLWAY_BENCH_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let thread_counts: Vec<usize> = std::env::var("SPILLWAY_BENCH_THREADS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    let formats = std::env::var("SPILLWAY_BENCH_FORMATS").unwrap_or_else(|_| "parquet,orc".into());
    let dir = tempfile::tempdir().unwrap();
    let input: PathBuf = dir.path().join("records.ndjson");
    let status = Command::new(&python)
        .arg("benches/gen.py")
        .arg(records.to_string())
        .arg(&input)
        .status()
        .expect("python for benches/gen.py");
    assert!(status.success());
    let bytes = std::fs::metadata(&input).unwrap().len();
    println!(
        "input: {records} records, {:.0} MB of NDJSON (benches/gen.py)",
        bytes as f64 / 1e6
    );

    let me = std::env::current_exe().expect("the bench binary");
    for (title, ext, reference) in [
        ("JSON → Parquet (snappy)", "parquet", "DuckDB 1.5.5 COPY"),
        (
            "JSON → ORC (snappy)",
            "orc",
            "pyarrow 26 read_json + orc.write_table",
        ),
    ] {
        if !formats.split(',').any(|f| f == ext) {
            continue;
        }
        let mut rows = Vec::new();
        for &threads in &thread_counts {
            let spec = format!(
                "{ext},{threads},{},{}",
                input.display(),
                dir.path().display()
            );
            let ours: Vec<(f64, f64)> = (0..runs)
                .map(|_| measured(Command::new(&me).env("SPILLWAY_BENCH_CHILD", &spec)))
                .collect();
            let out = dir.path().join(format!("reference.{ext}"));
            let code = if ext == "parquet" {
                duckdb_code(&input, &out, threads)
            } else {
                pyarrow_orc_code(&input, &out, threads)
            };
            let theirs: Vec<(f64, f64)> = (0..runs)
                .map(|_| measured(Command::new(&python).args(["-c", &code])))
                .collect();
            for (tool, results) in [("spillway", ours), (reference, theirs)] {
                rows.push(Row {
                    tool: tool.into(),
                    threads,
                    secs: median(results.iter().map(|r| r.0).collect()),
                    rss_mib: results.iter().map(|r| r.1).fold(0.0, f64::max),
                });
            }
        }
        println!("\n{title}\n");
        println!("| tool | threads | seconds | records/s | MB/s | peak RSS MiB | vs reference |");
        println!("|---|---|---|---|---|---|---|");
        for pair in rows.chunks(2) {
            for r in pair {
                println!(
                    "| {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2}× |",
                    r.tool,
                    r.threads,
                    r.secs,
                    records as f64 / r.secs,
                    bytes as f64 / 1e6 / r.secs,
                    r.rss_mib,
                    pair[1].secs / r.secs,
                );
            }
        }
    }
}
