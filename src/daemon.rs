//! Wiring: opens the logs, starts one pipeline per (delivery stream, shard), serves the endpoint, and
//! drains on SIGTERM/SIGINT.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::{
    BufferingHints, Config, ContentEncoding, DeliveryStreamConfig, Destination, DocumentBackupMode,
    DocumentIdFormat, HttpBackupMode, LakeUrl, OpenSearchAuth, S3Destination, Source,
};
use crate::ingest::{self, Endpoint, IngestStream, StreamInfo, Streams};
use crate::log::{now_ms, CheckpointStore, StreamLog};
use crate::partition::Partitioner;
use crate::pipeline::{DeliverySettings, Pipeline};
use crate::process::Processors;
use crate::sink::{HttpEndpoint, LocalStore, ObjectStore, OpenSearch, S3Store};
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
        let delivery = destination(ds, &instance, &config.data_dir).await?;
        let store = &delivery.store;
        for shard in log.shards() {
            for settings in std::iter::once(&delivery.settings).chain(&delivery.backup) {
                // Pin until the pipeline knows its checkpoint, so retention cannot delete records
                // a pipeline that cannot start yet has not delivered.
                shard.pin(&settings.consumer, shard.trim_horizon());
                pipelines.push(Pipeline::new(
                    Arc::clone(settings),
                    Arc::clone(shard),
                    Arc::clone(store),
                    checkpoints.clone(),
                    Arc::clone(&drain),
                ));
            }
        }
        let to = match &delivery.settings.destination {
            Some(d) => d.describe(),
            None => store.describe(),
        };
        tracing::info!(stream = %ds.name, shards = log.shards().len(), destination = %to,
            errors = %store.describe(), backup = delivery.backup.is_some(), "delivery stream ready");
        streams.insert(
            ds.name.to_string(),
            IngestStream {
                log: Arc::clone(&log),
                info: StreamInfo {
                    created_ms: now_ms(),
                    destination: delivery.description,
                },
            },
        );
        logs.push(log);
    }
    let pipelines = pipelines
        .into_iter()
        .map(|p| {
            std::thread::Builder::new()
                .name(format!("deliver-{}-{}", p.consumer(), p.shard().0))
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

/// A stream's delivery: its pipelines' settings (the stream's own, and the `AllData` backup's if
/// any), the object store, and its DescribeDeliveryStream `Destinations` entry.
struct Delivery {
    settings: Arc<DeliverySettings>,
    backup: Option<Arc<DeliverySettings>>,
    store: Arc<dyn ObjectStore>,
    description: serde_json::Value,
}

/// Builds a stream's delivery: opens its store and, for a request-based destination, its client.
async fn destination(
    ds: &DeliveryStreamConfig,
    instance: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<Delivery> {
    let s3 = ds.destination.s3();
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
    let mut settings = delivery_settings(ds, instance, data_dir)?;
    let runtime = tokio::runtime::Handle::current();
    let name = ds.name.as_str();
    settings.destination = match &ds.destination {
        Destination::S3(_) => None,
        Destination::HttpEndpoint(h) => Some(Arc::new(
            HttpEndpoint::new(h, name, runtime).context("setting up the HTTP endpoint")?,
        )),
        Destination::OpenSearch(o) => {
            let credentials = match &o.auth {
                Some(OpenSearchAuth::Sigv4 { region, .. }) => {
                    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                        .region(aws_config::Region::new(region.clone()))
                        .load()
                        .await;
                    Some(config.credentials_provider().context(
                        "SigV4 signing for OpenSearch needs AWS credentials (environment, profile or instance role)",
                    )?)
                }
                _ => None,
            };
            Some(Arc::new(
                OpenSearch::new(o, name, instance, runtime, credentials)
                    .context("setting up the OpenSearch destination")?,
            ))
        }
    };
    let backup = if ds.destination.backs_up_all() {
        Some(Arc::new(backup_settings(ds, instance)?))
    } else {
        None
    };
    let description = describe(ds, &bucket_arn);
    Ok(Delivery {
        settings: Arc::new(settings),
        backup,
        store,
        description,
    })
}

/// The `ExtendedS3DestinationDescription` of an S3 section (a destination, or a backup).
fn describe_s3(
    ds: &DeliveryStreamConfig,
    s3: &S3Destination,
    bucket_arn: &str,
) -> serde_json::Value {
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
    }
    if let Some(prefix) = &s3.error_output_prefix {
        description["ErrorOutputPrefix"] = prefix.as_configured().into();
    }
    if !ds.processing.is_empty() {
        description["ProcessingConfiguration"] = serde_json::json!({
            "Enabled": true,
            "Processors": ds.processing.iter().map(|p| p.describe()).collect::<Vec<_>>(),
        });
    }
    description
}

/// The stream's entry of DescribeDeliveryStream's `Destinations`, without its id.
fn describe(ds: &DeliveryStreamConfig, bucket_arn: &str) -> serde_json::Value {
    let mut s3 = describe_s3(ds, ds.destination.s3(), bucket_arn);
    let processing = match &ds.destination {
        Destination::S3(_) => None,
        _ => s3
            .as_object_mut()
            .and_then(|m| m.remove("ProcessingConfiguration")),
    };
    let hints = |h: BufferingHints| serde_json::json!({"SizeInMBs": h.size_mib, "IntervalInSeconds": h.interval_s});
    let mut description = match &ds.destination {
        Destination::S3(_) => return serde_json::json!({ "ExtendedS3DestinationDescription": s3 }),
        Destination::HttpEndpoint(h) => {
            let mut endpoint = serde_json::json!({ "Url": h.url });
            if let Some(n) = &h.name {
                endpoint["Name"] = n.as_str().into();
            }
            let attributes: Vec<_> = h
                .common_attributes
                .iter()
                .map(|(k, v)| serde_json::json!({"AttributeName": k, "AttributeValue": v}))
                .collect();
            serde_json::json!({ "HttpEndpointDestinationDescription": {
                "EndpointConfiguration": endpoint,
                "BufferingHints": hints(ds.destination.hints()),
                "RequestConfiguration": {
                    "ContentEncoding": match h.content_encoding {
                        ContentEncoding::None => "NONE",
                        ContentEncoding::Gzip => "GZIP",
                    },
                    "CommonAttributes": attributes,
                },
                "RetryOptions": {"DurationInSeconds": h.retry.duration_s},
                "S3BackupMode": match h.s3_backup_mode {
                    HttpBackupMode::FailedDataOnly => "FailedDataOnly",
                    HttpBackupMode::AllData => "AllData",
                },
                "RoleARN": "arn:aws:iam::000000000000:role/spillway",
                "S3DestinationDescription": s3,
            }})
        }
        Destination::OpenSearch(o) => {
            serde_json::json!({ "AmazonopensearchserviceDestinationDescription": {
                "ClusterEndpoint": o.endpoint,
                "IndexName": o.index,
                "TypeName": o.type_name.clone().unwrap_or_default(),
                "IndexRotationPeriod": o.index_rotation.firehose_name(),
                "BufferingHints": hints(ds.destination.hints()),
                "RetryOptions": {"DurationInSeconds": o.retry.duration_s},
                "S3BackupMode": match o.s3_backup_mode {
                    DocumentBackupMode::FailedDocumentsOnly => "FailedDocumentsOnly",
                    DocumentBackupMode::AllDocuments => "AllDocuments",
                },
                "DocumentIdOptions": {"DefaultDocumentIdFormat": match o.document_id {
                    DocumentIdFormat::FirehoseDefault => "FIREHOSE_DEFAULT",
                    DocumentIdFormat::NoDocumentId => "NO_DOCUMENT_ID",
                }},
                "RoleARN": "arn:aws:iam::000000000000:role/spillway",
                "S3DestinationDescription": s3,
            }})
        }
    };
    if let (Some(p), Some(d)) = (
        processing,
        description
            .as_object_mut()
            .and_then(|m| m.values_mut().next()),
    ) {
        d["ProcessingConfiguration"] = p;
    }
    description
}

/// What a stream's pipelines do with its records, from its configuration: processors, plugins
/// (compiled modules cached under `data_dir/plugins`), partitioning, buffering, naming. A
/// request-based destination's client is added by the daemon.
pub fn delivery_settings(
    ds: &DeliveryStreamConfig,
    instance: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<DeliverySettings> {
    let s3 = ds.destination.s3();
    let mut settings = s3_settings(ds, s3, instance, Some(data_dir))?;
    settings.hints = ds.destination.hints();
    Ok(settings)
}

/// The settings of the pipeline that copies every record into the S3 section of an `AllData` /
/// `AllDocuments` destination: each record as it arrived (before processors and plugins, like
/// Firehose's source record backup), with the delimiter if `append_delimiter` is on. It is a
/// consumer of its own, so the copy is exactly-once and buffered by the section's own hints
/// whatever the destination does; and since it runs no processors it cannot fail a record (or
/// fail it differently from the stream's own pipeline, as a plugin's deadline could).
fn backup_settings(ds: &DeliveryStreamConfig, instance: &str) -> anyhow::Result<DeliverySettings> {
    let s3 = ds.destination.s3();
    let mut settings = s3_settings(ds, s3, instance, None)?;
    settings.consumer = format!("{}+backup", ds.name);
    settings.errors.consumer = settings.consumer.clone();
    settings.skip_failures = true;
    settings.routing = crate::fs::md5_hex(
        format!(
            "backup\0{}\0{}\0{}",
            ds.appends_delimiter(),
            s3.prefix.as_configured(),
            s3.hints().size_mib
        )
        .as_bytes(),
    );
    Ok(settings)
}

/// Where a stream's inferred schema is pinned (see [`crate::format::infer`]).
fn pinned_schema_path(data_dir: &std::path::Path, stream: &str) -> std::path::PathBuf {
    data_dir.join("schemas").join(format!("{stream}.json"))
}

/// The settings of delivering into `s3`; with processors and plugins (their compiled modules
/// cached under `data_dir/plugins`) when `data_dir` is given, else records as they arrived.
fn s3_settings(
    ds: &DeliveryStreamConfig,
    s3: &S3Destination,
    instance: &str,
    data_dir: Option<&std::path::Path>,
) -> anyhow::Result<DeliverySettings> {
    let (processors, transforms) = match data_dir {
        Some(dir) => (
            Processors::from_config(&ds.processing),
            Transforms::load(&ds.processing, Some(&dir.join("plugins")))?,
        ),
        None => (Processors::default(), Transforms::default()),
    };
    Ok(DeliverySettings {
        instance: instance.to_string(),
        name: ds.name.to_string(),
        consumer: ds.name.to_string(),
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
            consumer: ds.name.to_string(),
            version: 1,
            instance: instance.to_string(),
            time_zone: s3.custom_time_zone.clone(),
        },
        conversion: s3
            .conversion()
            .map(|fc| match data_dir {
                Some(dir) => fc.conversion(&pinned_schema_path(dir, ds.name.as_str())),
                None => fc.settings().map(crate::format::Conversion::Fixed),
            })
            .transpose()
            .map_err(anyhow::Error::msg)?,
        processors,
        transforms,
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
        destination: None,
        skip_failures: false,
        drop_cache: !ds.destination.backs_up_all(),
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
