//! Wiring: opens the logs, starts one pipeline per (delivery stream, shard), serves the endpoint, and
//! drains on SIGTERM/SIGINT.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::{Config, DeliveryStreamConfig, Destination, LakeUrl, Source};
use crate::ingest::{self, Endpoint, IngestStream, StreamInfo, Streams};
use crate::log::{now_ms, CheckpointStore, StreamLog};
use crate::partition::Partitioner;
use crate::pipeline::{DeliverySettings, Pipeline};
use crate::process::Processors;
use crate::sink::{LocalStore, ObjectStore, S3Store};
use crate::transform::Transforms;

/// How often sealed segments are checked against retention.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Runs the daemon until a termination signal, then drains. Returns once everything accepted is
/// delivered, or the grace period is over (the rest stays in the log for the next start).
pub async fn run(config: Config) -> anyhow::Result<()> {
    match crate::fs::raise_open_files_limit() {
        Ok(n) => tracing::debug!(open_files = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
    let opts = config.log.options();
    let instance = crate::log::instance_id(&config.data_dir)
        .with_context(|| format!("reading the instance id in {}", config.data_dir.display()))?;
    let checkpoints = CheckpointStore::new(config.data_dir.join("checkpoints"));
    let drain = Arc::new(AtomicBool::new(false));
    let mut streams = Streams::new();
    let mut logs = Vec::new();
    let mut pipelines = Vec::new();
    // Everything is opened before any pipeline starts: opening a store clears temporary files,
    // which must not happen under a running pipeline of another stream sharing that lake.
    for ds in &config.delivery_streams {
        let Source::DirectPut(direct) = &ds.source;
        let log = Arc::new(
            StreamLog::open(
                &config.data_dir,
                ds.name.as_str(),
                direct.shards as u32,
                &opts,
            )
            .with_context(|| format!("opening the log of delivery stream {}", ds.name))?,
        );
        let (settings, store, destination) = destination(ds, &instance, &config.data_dir).await?;
        for shard in log.shards() {
            // Pin until the pipeline knows its checkpoint, so retention cannot delete records a
            // pipeline that cannot start yet has not delivered.
            shard.pin(ds.name.as_str(), shard.trim_horizon());
            pipelines.push(Pipeline::new(
                Arc::clone(&settings),
                Arc::clone(shard),
                Arc::clone(&store),
                checkpoints.clone(),
                Arc::clone(&drain),
            ));
        }
        tracing::info!(stream = %ds.name, shards = log.shards().len(), store = %store.describe(), "delivery stream ready");
        streams.insert(
            ds.name.to_string(),
            IngestStream {
                log: Arc::clone(&log),
                info: StreamInfo {
                    created_ms: now_ms(),
                    destination,
                },
            },
        );
        logs.push(log);
    }
    let pipelines = pipelines
        .into_iter()
        .map(|p| {
            std::thread::Builder::new()
                .name(format!("deliver-{}-{}", p.stream(), p.shard().0))
                .spawn(move || p.run())
        })
        .collect::<Result<Vec<JoinHandle<()>>, _>>()
        .context("starting a pipeline thread")?;

    // Signal handlers first: a SIGTERM that arrives once the port answers must drain, not kill.
    let shutdown = Shutdown::install()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the endpoint to {}", config.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "spillway listening");
    let endpoint = Endpoint::new(streams, (config.ingest.max_inflight_mib << 20) as usize);
    let server = tokio::spawn(ingest::serve(listener, Arc::clone(&endpoint)));
    let retention = {
        let logs = logs.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETENTION_EVERY).await;
                let logs = logs.clone();
                let _ = tokio::task::spawn_blocking(move || enforce_retention(&logs)).await;
            }
        })
    };

    let signal = shutdown.wait().await;
    let grace = Duration::from_secs(config.shutdown_grace_s);
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!(%signal, grace_s = config.shutdown_grace_s, "draining: refusing new records, delivering buffered ones");
    if !endpoint.stop_accepting(grace).await {
        tracing::warn!("requests still in flight at the end of the grace period");
    }
    drain.store(true, Ordering::Release);
    for log in &logs {
        for shard in log.shards() {
            shard.wake_readers();
        }
    }
    let joined = tokio::task::spawn_blocking(move || {
        for p in pipelines {
            let _ = p.join();
        }
    });
    let drained = tokio::time::timeout_at(deadline, joined).await.is_ok();
    retention.abort();
    server.abort();
    if drained {
        for log in &logs {
            log.close();
        }
        tracing::info!("drained; every accepted record is delivered");
    } else {
        tracing::warn!(
            "grace period over before delivery finished; undelivered records stay in the log and are delivered after restart"
        );
    }
    Ok(())
}

/// Builds a stream's delivery settings and object store; also returns its DescribeDeliveryStream view.
async fn destination(
    ds: &DeliveryStreamConfig,
    instance: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<(
    Arc<DeliverySettings>,
    Arc<dyn ObjectStore>,
    serde_json::Value,
)> {
    let Destination::S3(s3) = &ds.destination;
    let (store, bucket_arn): (Arc<dyn ObjectStore>, String) = match &s3.url {
        LakeUrl::LocalDirectory(dir) => (
            Arc::new(
                LocalStore::open(dir)
                    .with_context(|| format!("opening the lake {}", dir.display()))?,
            ),
            format!("arn:aws:s3:::{}", dir.display()),
        ),
        LakeUrl::S3Bucket(bucket) => {
            let location = s3.s3_location().expect("an s3:// URL");
            let state = data_dir.join("s3").join(ds.name.as_str());
            let store = S3Store::open(&location, &state, tokio::runtime::Handle::current())
                .await
                .with_context(|| format!("opening s3://{bucket}"))?;
            (Arc::new(store), format!("arn:aws:s3:::{bucket}"))
        }
    };
    let settings = Arc::new(delivery_settings(ds, instance, data_dir)?);
    let compression = s3.compression.firehose_name();
    let mut description = serde_json::json!({
        "RoleARN": "arn:aws:iam::000000000000:role/spillway",
        "BucketARN": bucket_arn,
        "Prefix": s3.prefix.as_configured(),
        "BufferingHints": {"SizeInMBs": s3.hints().size_mib, "IntervalInSeconds": s3.hints().interval_s},
        "CompressionFormat": compression,
        "EncryptionConfiguration": {"NoEncryptionConfig": "NoEncryption"},
        "S3BackupMode": "Disabled",
    });
    if let Some(fc) = &s3.format_conversion {
        description["DataFormatConversionConfiguration"] = fc.describe();
    }
    if let Some(zone) = &s3.custom_time_zone {
        description["CustomTimeZone"] = zone.name().into();
    }
    if let Some(extension) = &s3.file_extension {
        description["FileExtension"] = extension.as_str().into();
    }
    if s3.partitioning().is_some() {
        description["DynamicPartitioningConfiguration"] = serde_json::json!({
            "Enabled": true,
            "RetryOptions": {"DurationInSeconds": s3.retry.duration_s},
        });
        description["ErrorOutputPrefix"] = s3
            .error_output_prefix
            .as_ref()
            .map(|p| p.as_configured().to_string())
            .into();
    }
    if !ds.processing.is_empty() {
        description["ProcessingConfiguration"] = serde_json::json!({
            "Enabled": true,
            "Processors": ds.processing.iter().map(|p| p.describe()).collect::<Vec<_>>(),
        });
    }
    Ok((settings, store, description))
}

/// What a stream's pipelines do with its records, from its configuration: processors, plugins
/// (compiled modules cached under `data_dir/plugins`), partitioning, buffering, naming.
pub fn delivery_settings(
    ds: &DeliveryStreamConfig,
    instance: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<DeliverySettings> {
    let Destination::S3(s3) = &ds.destination;
    Ok(DeliverySettings {
        instance: instance.to_string(),
        name: ds.name.to_string(),
        version: 1,
        delimiter: if ds.appends_delimiter() {
            b"\n".to_vec()
        } else {
            Vec::new()
        },
        hints: s3.hints(),
        compression: s3.compression,
        compression_level: s3
            .compression
            .level(s3.compression_level)
            .map_err(anyhow::Error::msg)?,
        prefix: s3.prefix.clone(),
        time_zone: s3.custom_time_zone.clone(),
        file_extension: s3.file_extension.clone(),
        errors: crate::error_output::ErrorOutput {
            prefix: s3
                .error_prefix()
                .context("a prefix with expressions needs error_output_prefix")?,
            stream: ds.name.to_string(),
            version: 1,
            instance: instance.to_string(),
            time_zone: s3.custom_time_zone.clone(),
        },
        conversion: s3
            .conversion()
            .map(|fc| fc.settings())
            .transpose()
            .map_err(anyhow::Error::msg)?,
        processors: Processors::from_config(&ds.processing),
        transforms: Transforms::load(&ds.processing, Some(&data_dir.join("plugins")))?,
        partitioner: s3.partitioning().map(|_| {
            Partitioner::new(
                s3.prefix.clone(),
                ds.metadata_query().map(|q| Arc::clone(&q.query)),
                &s3.extension(),
            )
        }),
        max_active_partitions: s3
            .partitioning()
            .map_or(usize::MAX, |d| d.max_active_partitions as usize),
        routing: ds.routing_fingerprint(),
    })
}

fn enforce_retention(logs: &[Arc<StreamLog>]) {
    let now = now_ms();
    for log in logs {
        for shard in log.shards() {
            match shard.enforce_retention(now) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(stream = log.name(), shard = %shard.id(), segments = n, "retention deleted expired segments")
                }
                Err(e) => {
                    tracing::warn!(stream = log.name(), shard = %shard.id(), error = %e, "retention failed")
                }
            }
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Shutdown {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Shutdown {
    fn install() -> anyhow::Result<Shutdown> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Shutdown {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// The name of the first signal received.
    async fn wait(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
