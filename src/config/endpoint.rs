//! The request-based destinations: Firehose's HTTP endpoint (`HttpEndpointDestinationConfiguration`)
//! and OpenSearch (`AmazonopensearchserviceDestinationConfiguration`). Both keep an S3 section, as
//! Firehose does: the bucket of their error documents and, with the "all" backup mode, a copy of
//! every record.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::{in_range, BufferingHints, S3Destination};

/// Firehose's HTTP endpoint destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpEndpointDestination {
    /// `https://` or `http://` (Firehose allows only HTTPS on port 443; a self-hosted receiver
    /// next to the daemon often has no certificate), at most 1000 characters.
    #[serde(deserialize_with = "endpoint_url::<_, 1000>")]
    pub url: String,
    /// A name for the endpoint, shown by DescribeDeliveryStream.
    #[serde(default, deserialize_with = "bounded_string::<_, 1, 256>")]
    pub name: Option<String>,
    /// Sent verbatim as `X-Amz-Firehose-Access-Key`: at most 4096 printable ASCII characters.
    #[serde(default, deserialize_with = "access_key")]
    pub access_key: Option<String>,
    /// Sent as `X-Amz-Firehose-Common-Attributes`: at most 50, names 1–256 and values ≤ 1024
    /// characters.
    #[serde(default, deserialize_with = "common_attributes")]
    pub common_attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub content_encoding: ContentEncoding,
    #[serde(default)]
    pub buffering: EndpointBuffering<64>,
    /// A PEM file of certificate authorities to trust besides the system's (a private CA or a
    /// self-signed endpoint); relative to the configuration file.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// How long a response is awaited (Firehose: 3 minutes).
    #[serde(
        default = "default_http_timeout_s",
        deserialize_with = "in_range::<_, 1, 3600>"
    )]
    pub request_timeout_s: u64,
    #[serde(default)]
    pub retry: EndpointRetry,
    #[serde(default)]
    pub s3_backup_mode: HttpBackupMode,
    /// The bucket of error documents and backups.
    pub s3: S3Destination,
}

/// `ContentEncoding` of HTTP endpoint requests.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ContentEncoding {
    #[default]
    None,
    Gzip,
}

/// `S3BackupMode` of an HTTP endpoint destination.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HttpBackupMode {
    #[default]
    FailedDataOnly,
    AllData,
}

/// Firehose's OpenSearch destination (also any Elasticsearch-compatible `_bulk` API).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenSearchDestination {
    /// The cluster endpoint, `https://` or `http://`, with an optional path prefix (the
    /// requests go to `<endpoint>/_bulk`).
    #[serde(deserialize_with = "cluster_endpoint")]
    pub endpoint: String,
    /// The index name, 1–80 characters, before the rotation suffix.
    #[serde(deserialize_with = "index_name")]
    pub index: String,
    /// Sent as `_type` when set (Elasticsearch 6); OpenSearch has no types.
    #[serde(default, deserialize_with = "bounded_string::<_, 1, 100>")]
    pub type_name: Option<String>,
    #[serde(default)]
    pub index_rotation: IndexRotation,
    #[serde(default)]
    pub document_id: DocumentIdFormat,
    #[serde(default)]
    pub buffering: EndpointBuffering<100>,
    /// A PEM file of certificate authorities to trust besides the system's; relative to the
    /// configuration file.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    #[serde(
        default = "default_bulk_timeout_s",
        deserialize_with = "in_range::<_, 1, 3600>"
    )]
    pub request_timeout_s: u64,
    #[serde(default)]
    pub retry: EndpointRetry,
    #[serde(default)]
    pub auth: Option<OpenSearchAuth>,
    #[serde(default)]
    pub s3_backup_mode: DocumentBackupMode,
    /// The bucket of error documents and backups.
    pub s3: S3Destination,
}

/// `IndexRotationPeriod`: the UTC arrival time appended to the index name.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum IndexRotation {
    NoRotation,
    OneHour,
    #[default]
    OneDay,
    OneWeek,
    OneMonth,
}

impl IndexRotation {
    /// Firehose's name of the period.
    pub fn firehose_name(self) -> &'static str {
        match self {
            IndexRotation::NoRotation => "NoRotation",
            IndexRotation::OneHour => "OneHour",
            IndexRotation::OneDay => "OneDay",
            IndexRotation::OneWeek => "OneWeek",
            IndexRotation::OneMonth => "OneMonth",
        }
    }
}

/// `DocumentIdOptions.DefaultDocumentIdFormat`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DocumentIdFormat {
    /// An id derived from where the record is in the log: the same on every retry and replay.
    #[default]
    FirehoseDefault,
    /// OpenSearch assigns ids; a retried request whose first attempt was indexed duplicates.
    NoDocumentId,
}

/// `S3BackupMode` of an OpenSearch destination.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DocumentBackupMode {
    #[default]
    FailedDocumentsOnly,
    AllDocuments,
}

/// How requests to OpenSearch authenticate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum OpenSearchAuth {
    /// HTTP basic authentication (the fine-grained access control master user, or any cluster's).
    Basic { username: String, password: String },
    /// AWS Signature Version 4 with credentials from the AWS chain (environment, profile, IMDS).
    Sigv4 {
        #[serde(deserialize_with = "aws_region")]
        region: String,
        #[serde(default)]
        service: SigningService,
    },
}

/// The service name a SigV4 signature is made for.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SigningService {
    /// Amazon OpenSearch Service domains.
    #[default]
    Es,
    /// OpenSearch Serverless collections (whose error documents name `osDocumentId` and
    /// `osIndexName`, as Firehose's do).
    Aoss,
}

impl SigningService {
    /// The name signed into the credential scope.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningService::Es => "es",
            SigningService::Aoss => "aoss",
        }
    }
}

/// An AWS region name such as `eu-west-1`: lower-case letters, digits and dashes.
fn aws_region<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    fn check(s: &str) -> Result<(), String> {
        let well_formed = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if well_formed {
            Ok(())
        } else {
            Err(format!(
                "{s:?} is not an AWS region name (lower-case letters, digits and dashes, e.g. eu-west-1)"
            ))
        }
    }
    checked_string(d, "an AWS region name", check)
}

/// Buffering of a request-based destination: 1–`MAX` MiB (default 5), 0–900 s (default 300).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EndpointBuffering<const MAX: u64> {
    #[serde(default = "five", deserialize_with = "in_range::<_, 1, MAX>")]
    pub size_mib: u64,
    #[serde(default = "three_hundred", deserialize_with = "in_range::<_, 0, 900>")]
    pub interval_s: u64,
}

impl<const MAX: u64> Default for EndpointBuffering<MAX> {
    fn default() -> Self {
        EndpointBuffering {
            size_mib: five(),
            interval_s: three_hundred(),
        }
    }
}

impl<const MAX: u64> EndpointBuffering<MAX> {
    pub fn hints(&self) -> BufferingHints {
        BufferingHints {
            size_mib: self.size_mib,
            interval_s: self.interval_s,
        }
    }
}

/// `RetryOptions` of a request-based destination: how long a batch is retried (the waits between
/// attempts; the wait for a response is not counted) before its records go to the error output.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EndpointRetry {
    #[serde(default = "three_hundred", deserialize_with = "in_range::<_, 0, 7200>")]
    pub duration_s: u64,
}

impl Default for EndpointRetry {
    fn default() -> Self {
        EndpointRetry {
            duration_s: three_hundred(),
        }
    }
}

fn five() -> u64 {
    5
}
fn three_hundred() -> u64 {
    300
}
fn default_http_timeout_s() -> u64 {
    180
}
fn default_bulk_timeout_s() -> u64 {
    60
}

/// Deserializes a string and checks it with `check` inside the visitor, so that the parser
/// reports a refusal at the value with its full field path.
fn checked_string<'de, D: Deserializer<'de>>(
    d: D,
    expecting: &'static str,
    check: fn(&str) -> Result<(), String>,
) -> Result<String, D::Error> {
    struct Visitor {
        expecting: &'static str,
        check: fn(&str) -> Result<(), String>,
    }
    impl de::Visitor<'_> for Visitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            (self.check)(v).map_err(E::custom)?;
            Ok(v.to_string())
        }
    }
    d.deserialize_str(Visitor { expecting, check })
}

fn endpoint_url<'de, D: Deserializer<'de>, const MAX: usize>(d: D) -> Result<String, D::Error> {
    checked_string(d, "an http:// or https:// URL", check_url::<MAX>)
}

/// An `http://` or `https://` URL of at most `MAX` bytes with a host and no user info.
fn check_url<const MAX: usize>(s: &str) -> Result<(), String> {
    if s.len() > MAX {
        return Err(format!("must be at most {MAX} characters, got {}", s.len()));
    }
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("{s:?} must start with https:// or http://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    if host.contains('@') {
        return Err(format!(
            "{s:?} has user info; give credentials in their own settings instead"
        ));
    }
    s.parse::<http::Uri>()
        .map(|_| ())
        .map_err(|e| format!("{s:?} is not a valid URL: {e}"))
}

fn access_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    fn check(s: &str) -> Result<(), String> {
        if s.len() > 4096 {
            return Err(format!("must be at most 4096 characters, got {}", s.len()));
        }
        match s.chars().find(|c| !(' '..='~').contains(c)) {
            Some(c) => Err(format!(
                "must be printable ASCII (it is sent as a header), found {c:?}"
            )),
            None => Ok(()),
        }
    }
    checked_string(d, "an access key", check).map(Some)
}

fn cluster_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    fn check(s: &str) -> Result<(), String> {
        check_url::<2048>(s)?;
        if s.contains(['?', '#']) {
            return Err(format!(
                "{s:?} has a query or fragment; the cluster endpoint is a scheme, host and optional path"
            ));
        }
        Ok(())
    }
    checked_string(d, "an http:// or https:// URL", check)
}

fn bounded_string<'de, D: Deserializer<'de>, const MIN: usize, const MAX: usize>(
    d: D,
) -> Result<Option<String>, D::Error> {
    fn check<const MIN: usize, const MAX: usize>(s: &str) -> Result<(), String> {
        let n = s.chars().count();
        if (MIN..=MAX).contains(&n) {
            Ok(())
        } else {
            Err(format!("must be {MIN} to {MAX} characters, got {n}"))
        }
    }
    checked_string(d, "a string", check::<MIN, MAX>).map(Some)
}

fn index_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    fn check(s: &str) -> Result<(), String> {
        let n = s.chars().count();
        if !(1..=80).contains(&n) {
            return Err(format!("must be 1 to 80 characters, got {n}"));
        }
        // OpenSearch's own rules for index names, so that a bad name fails at startup rather
        // than sending every document to the error output.
        if s.starts_with(['_', '-', '+'])
            || s == "."
            || s == ".."
            || s.chars()
                .any(|c| c.is_ascii_uppercase() || " \"*\\<|,>/?#:".contains(c) || c.is_control())
        {
            return Err(format!(
                "{s:?} is not a valid index name (lowercase, not starting with _ - +, none of space \" * \\ < | , > / ? # :)"
            ));
        }
        Ok(())
    }
    checked_string(d, "an index name", check)
}

fn common_attributes<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct Visitor;
    impl<'de> de::Visitor<'de> for Visitor {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of attribute names to values")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((name, value)) = map.next_entry::<String, String>()? {
                let n = name.chars().count();
                if !(1..=256).contains(&n) {
                    return Err(de::Error::custom(format!(
                        "attribute name {name:?} must be 1 to 256 characters"
                    )));
                }
                if value.chars().count() > 1024 {
                    return Err(de::Error::custom(format!(
                        "the value of attribute {name:?} must be at most 1024 characters"
                    )));
                }
                if out.insert(name.clone(), value).is_some() {
                    return Err(de::Error::custom(format!(
                        "attribute {name:?} is given twice"
                    )));
                }
                if out.len() > 50 {
                    return Err(de::Error::custom("at most 50 common attributes"));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(Visitor)
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Destination};

    fn http(fields: &str) -> Result<Config, String> {
        let text = format!(
            "data_dir: ./d\ndelivery_streams:\n  - name: s\n    source: {{ direct_put: {{}} }}\n    destination:\n      http_endpoint:\n        url: http://127.0.0.1:8080/in\n        s3: {{ url: 'file://./lake' }}\n{fields}"
        );
        Config::parse_relative_to(&text, "t.yaml", std::path::Path::new("/etc/spillway"))
            .map_err(|e| e.to_string())
    }

    fn opensearch(fields: &str) -> Result<Config, String> {
        let text = format!(
            "data_dir: ./d\ndelivery_streams:\n  - name: s\n    source: {{ direct_put: {{}} }}\n    destination:\n      opensearch:\n        s3: {{ url: 'file://./lake' }}\n{fields}"
        );
        Config::parse(&text, "t.yaml").map_err(|e| e.to_string())
    }

    #[test]
    fn http_endpoint_defaults_are_firehose_s() {
        let c = http("        ca_file: ca.pem\n").unwrap();
        let Destination::HttpEndpoint(h) = &c.delivery_streams[0].destination else {
            panic!("not an http endpoint")
        };
        assert_eq!((h.buffering.size_mib, h.buffering.interval_s), (5, 300));
        assert_eq!((h.request_timeout_s, h.retry.duration_s), (180, 300));
        assert_eq!(h.s3_backup_mode, super::HttpBackupMode::FailedDataOnly);
        assert_eq!(h.content_encoding, super::ContentEncoding::None);
        assert_eq!(
            h.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/spillway/ca.pem"))
        );
    }

    #[test]
    fn http_endpoint_limits_are_enforced_at_their_edges() {
        assert!(http("        buffering: { size_mib: 64, interval_s: 0 }\n").is_ok());
        let e = http("        buffering: { size_mib: 65 }\n").unwrap_err();
        assert!(
            e.contains("t.yaml:9:") && e.contains("http_endpoint.buffering.size_mib"),
            "{e}"
        );
        assert!(http("        retry: { duration_s: 7200 }\n").is_ok());
        assert!(http("        retry: { duration_s: 7201 }\n").is_err());
        let attrs = |n: usize| {
            let pairs: Vec<String> = (0..n).map(|i| format!("a{i}: v")).collect();
            format!("        common_attributes: {{ {} }}\n", pairs.join(", "))
        };
        assert!(http(&attrs(50)).is_ok());
        let e = http(&attrs(51)).unwrap_err();
        assert!(e.contains("at most 50 common attributes"), "{e}");
        assert!(http(&format!("        access_key: {}\n", "k".repeat(4096))).is_ok());
        assert!(http(&format!("        access_key: {}\n", "k".repeat(4097))).is_err());
        let e = http("        access_key: \"a\\nb\"\n").unwrap_err();
        assert!(e.contains("printable ASCII"), "{e}");
        let e = http("        name: ''\n").unwrap_err();
        assert!(e.contains("http_endpoint.name"), "{e}");
    }

    #[test]
    fn urls_must_be_http_with_a_host_and_no_user_info() {
        for (url, why) in [
            ("ftp://h/x", "must start with"),
            ("https:///x", "has no host"),
            ("https://user:pw@h/x", "user info"),
        ] {
            let text = format!(
                "data_dir: ./d\ndelivery_streams:\n  - name: s\n    source: {{ direct_put: {{}} }}\n    destination:\n      http_endpoint: {{ url: '{url}', s3: {{ url: 'file://./l' }} }}\n"
            );
            let e = Config::parse(&text, "t").unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("http_endpoint.url"),
                "{url}: {e}"
            );
        }
        let long = format!("https://h/{}", "x".repeat(990));
        assert_eq!(long.len(), 1000);
        let text = format!(
            "data_dir: ./d\ndelivery_streams:\n  - name: s\n    source: {{ direct_put: {{}} }}\n    destination:\n      http_endpoint: {{ url: '{long}', s3: {{ url: 'file://./l' }} }}\n"
        );
        assert!(Config::parse(&text, "t").is_ok());
        let text = text.replace(&long, &format!("{long}x"));
        assert!(Config::parse(&text, "t").is_err());
    }

    #[test]
    fn opensearch_index_names_and_endpoints_are_checked() {
        let ok = |index: &str| {
            opensearch(&format!(
                "        endpoint: http://h:9200\n        index: '{index}'\n"
            ))
        };
        assert!(ok(&"a".repeat(80)).is_ok());
        assert!(ok(&"a".repeat(81)).unwrap_err().contains("1 to 80"));
        for bad in ["Logs", "_logs", "a b", "a*b", "a/b"] {
            let e = ok(bad).unwrap_err();
            assert!(
                e.contains("opensearch.index") && e.contains("not a valid index name"),
                "{bad}: {e}"
            );
        }
        let e =
            opensearch("        endpoint: http://h:9200/?x=1\n        index: logs\n").unwrap_err();
        assert!(e.contains("query or fragment"), "{e}");
        let c = opensearch("        endpoint: https://h/prefix\n        index: logs\n").unwrap();
        let Destination::OpenSearch(o) = &c.delivery_streams[0].destination else {
            panic!("not opensearch")
        };
        assert_eq!(o.index_rotation, super::IndexRotation::OneDay);
        assert_eq!(o.document_id, super::DocumentIdFormat::FirehoseDefault);
        assert_eq!((o.buffering.size_mib, o.retry.duration_s), (5, 300));
        assert!(opensearch(
            "        endpoint: http://h\n        index: l\n        buffering: { size_mib: 101 }\n"
        )
        .is_err());
    }

    #[test]
    fn sigv4_names_a_known_service_and_a_region() {
        let auth = |a: &str| {
            opensearch(&format!(
                "        endpoint: https://h\n        index: l\n        auth: {{ sigv4: {a} }}\n"
            ))
        };
        let service = |c: Config| match &c.delivery_streams[0].destination {
            Destination::OpenSearch(o) => match &o.auth {
                Some(super::OpenSearchAuth::Sigv4 { service, .. }) => *service,
                other => panic!("{other:?}"),
            },
            _ => panic!("not opensearch"),
        };
        assert_eq!(
            service(auth("{ region: eu-west-1 }").unwrap()),
            super::SigningService::Es
        );
        assert_eq!(
            service(auth("{ region: us-east-1, service: aoss }").unwrap()),
            super::SigningService::Aoss
        );
        let e = auth("{ region: eu-west-1, service: aos }").unwrap_err();
        assert!(e.contains("sigv4.service") && e.contains("aoss"), "{e}");
        for bad in ["''", "EU-WEST-1", "eu west 1", "-eu"] {
            let e = auth(&format!("{{ region: {bad} }}")).unwrap_err();
            assert!(
                e.contains("sigv4.region") && e.contains("not an AWS region"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_backup_section_refuses_what_only_a_lake_has() {
        let text = "data_dir: ./d\ndelivery_streams:\n  - name: s\n    source: { direct_put: {} }\n    destination:\n      http_endpoint:\n        url: http://h/\n        s3:\n          url: 'file://./l'\n          prefix: 'p/!{partitionKeyFromQuery:k}/'\n          error_output_prefix: 'e/!{firehose:error-output-type}/'\n          dynamic_partitioning: { enabled: true }\n";
        let e = Config::parse(text, "t").unwrap_err().to_string();
        assert!(
            e.contains("http_endpoint.s3.dynamic_partitioning")
                && e.contains("only available with the s3 destination"),
            "{e}"
        );
    }
}
