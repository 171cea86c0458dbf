//! Dynamic partitioning: which partition (evaluated prefix) a record belongs to.
//!
//! A partition is named by its partition key values: the keys the prefix names, taken from the
//! `metadata_extraction` query's output object (`!{partitionKeyFromQuery:k}`) or from a plugin
//! (`!{partitionKeyFromLambda:k}`). Values are encoded for keys here ([`crate::prefix`] says how), so
//! the partition's identity and its prefix agree. `!{timestamp:...}` expressions are not part of the
//! partition: they are evaluated at the oldest record of each object, as without partitioning.
//!
//! Routing is a pure function of the record, which the exactly-once replay relies on.

pub mod query;

use std::fmt::Write as _;
use std::sync::Arc;

use crate::error_output::Failure;

use crate::prefix::{
    encode_key_value, encode_key_value_into, KeySource, PartitionKeys, PrefixTemplate,
};
use crate::process::PROCESSING_FAILED;
use query::{ExtractError, MetadataQuery};

/// Finds each record's partition.
#[derive(Debug, Clone)]
pub struct Partitioner {
    query: Option<Arc<MetadataQuery>>,
    /// The keys the prefix names, in order.
    keys: Vec<(KeySource, String)>,
    prefix: PrefixTemplate,
    /// The objects' extension, part of the key whose length `check` bounds.
    extension: String,
}

impl Partitioner {
    /// A partitioner for `prefix`, with the keys of `query`. The configuration has checked that the
    /// prefix's query keys have a query.
    pub fn new(
        prefix: PrefixTemplate,
        query: Option<Arc<MetadataQuery>>,
        extension: &str,
    ) -> Partitioner {
        let keys = prefix
            .partition_keys()
            .map(|(s, n)| (s, n.to_string()))
            .collect();
        Partitioner {
            query,
            keys,
            prefix,
            extension: extension.to_string(),
        }
    }

    /// The partition of a record, or why it has none. `lambda` holds the keys a plugin returned
    /// for it.
    pub fn route(
        &self,
        data: &[u8],
        lambda: &[(String, String)],
    ) -> Result<PartitionKeys, Failure> {
        let mut keys = Vec::with_capacity(self.keys.len());
        self.visit(data, lambda, |source, name, value| {
            let encoded = encode_key_value(value).ok_or_else(|| empty(source, name))?;
            keys.push((source, name.to_string(), encoded));
            Ok(())
        })?;
        Ok(PartitionKeys(keys))
    }

    /// The identity ([`PartitionKeys::id`]) of the record's partition, written into `out`
    /// without building its keys: the per-record path, which needs the keys only when a
    /// partition opens.
    pub fn id_into(
        &self,
        data: &[u8],
        lambda: &[(String, String)],
        out: &mut String,
    ) -> Result<(), Failure> {
        out.clear();
        self.visit(data, lambda, |source, name, value| {
            let _ = write!(out, "{}:{name}=", source.namespace());
            if !encode_key_value_into(value, out) {
                return Err(empty(source, name));
            }
            out.push('/');
            Ok(())
        })
    }

    /// Calls `f` with each key the prefix names and the record's (unencoded) value for it.
    fn visit(
        &self,
        data: &[u8],
        lambda: &[(String, String)],
        mut f: impl FnMut(KeySource, &str, &str) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let extracted = match &self.query {
            Some(q) if self.keys.iter().any(|(s, _)| *s == KeySource::Query) => {
                q.extract(data).map_err(|e| extract_failure(&e))?
            }
            _ => Vec::new(),
        };
        for (source, name) in &self.keys {
            let from = match source {
                KeySource::Query => &extracted,
                KeySource::Lambda => lambda,
            };
            let value = from
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| {
                    failure(
                        "DynamicPartitioning.PartitionKeyMissing",
                        format!(
                            "the record has no value for !{{{}:{name}}}",
                            source.namespace()
                        ),
                    )
                })?;
            f(*source, name, value)?;
        }
        Ok(())
    }

    /// Checks that a new partition's values form valid keys (length limits); run once per
    /// partition, when it opens.
    pub fn check(&self, keys: &PartitionKeys) -> Result<(), Failure> {
        self.prefix
            .check_keys(keys, None, &self.extension)
            .map_err(|e| failure("DynamicPartitioning.InvalidPrefix", e))
    }
}

fn failure(code: &str, message: String) -> Failure {
    Failure {
        output_type: PROCESSING_FAILED,
        code: code.to_string(),
        message: message.into(),
        attempts: 1,
        plugin: None,
    }
}

fn empty(source: KeySource, name: &str) -> Failure {
    failure(
        "DynamicPartitioning.PartitionKeyEmpty",
        format!("the value of !{{{}:{name}}} is empty", source.namespace()),
    )
}

fn extract_failure(e: &ExtractError) -> Failure {
    failure(e.code(), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partitioner(prefix: &str, query: &str) -> Partitioner {
        Partitioner::new(
            PrefixTemplate::parse(prefix).unwrap(),
            Some(Arc::new(MetadataQuery::compile(query).unwrap())),
            ".gz",
        )
    }

    #[test]
    fn keys_come_from_the_query_in_prefix_order_and_encoded() {
        let p = partitioner(
            "c=!{partitionKeyFromQuery:customer}/t=!{partitionKeyFromQuery:type}/",
            "{type: .type, customer: .customer, unused: 1}",
        );
        let keys = p
            .route(br#"{"customer":"a/b c","type":".."}"#, &[])
            .unwrap();
        assert_eq!(
            keys.0,
            vec![
                (KeySource::Query, "customer".into(), "a%2Fb%20c".into()),
                (KeySource::Query, "type".into(), "%2E%2E".into()),
            ]
        );
        p.check(&keys).unwrap();
    }

    #[test]
    fn the_id_path_agrees_with_the_keys_path() {
        let p = partitioner(
            "a=!{partitionKeyFromQuery:a}/b=!{partitionKeyFromQuery:b}/",
            "{a: .a, b: .b}",
        );
        let mut id = String::from("stale");
        for data in [
            &br#"{"a":"x/y","b":2}"#[..],
            br#"{"a":"..","b":true}"#,
            br#"{"a":"","b":1}"#,
            br#"{"a":"v"}"#,
            b"nope",
        ] {
            let by_keys = p.route(data, &[]).map(|k| k.id());
            let by_id = p.id_into(data, &[], &mut id).map(|()| id.clone());
            assert_eq!(format!("{by_keys:?}"), format!("{by_id:?}"), "{data:?}");
        }
    }

    #[test]
    fn records_without_usable_keys_fail_with_a_code() {
        let p = partitioner("c=!{partitionKeyFromQuery:c}/", "{c: .c}");
        for (data, code) in [
            (
                &br#"{"x":1}"#[..],
                "DynamicPartitioning.PartitionKeyMissing",
            ),
            (br#"{"c":""}"#, "DynamicPartitioning.PartitionKeyEmpty"),
        ] {
            let f = p.route(data, &[]).unwrap_err();
            assert_eq!(f.output_type, PROCESSING_FAILED);
            assert!(
                f.code == code || f.code.starts_with("DynamicPartitioning."),
                "{data:?}: {f:?}"
            );
        }
        let f = p.route(b"not json", &[]).unwrap_err();
        assert!(f.code.starts_with("DynamicPartitioning."), "{f:?}");
    }

    #[test]
    fn lambda_keys_are_taken_from_the_plugin() {
        let p = Partitioner::new(
            PrefixTemplate::parse("k=!{partitionKeyFromLambda:k}/").unwrap(),
            None,
            "",
        );
        let keys = p.route(b"anything", &[("k".into(), "v1".into())]).unwrap();
        assert_eq!(keys.id(), "partitionKeyFromLambda:k=v1/");
        assert!(p.route(b"anything", &[]).is_err());
    }

    #[test]
    fn a_value_too_long_for_a_key_is_refused_when_the_partition_opens() {
        let p = partitioner("c=!{partitionKeyFromQuery:c}/", "{c: .c}");
        let long = format!(r#"{{"c":"{}"}}"#, "v".repeat(300));
        let keys = p.route(long.as_bytes(), &[]).unwrap();
        let f = p.check(&keys).unwrap_err();
        assert_eq!(f.code, "DynamicPartitioning.InvalidPrefix");
    }
}
