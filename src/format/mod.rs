//! Record format conversion: JSON records to columnar files (Parquet, ORC) with a table schema,
//! Firehose's `DataFormatConversionConfiguration`.
//!
//! Built so far: the schema ([`schema`]): Glue / Hive column types, parsed and mapped to Arrow; and
//! the timestamp forms the OpenX and Hive JSON SerDes read ([`timestamp`]); and the deserializers
//! that turn a JSON record into typed cells, one per column ([`deserializer`]).
//! The deserializers (OpenX / Hive JSON SerDe) and the Parquet and ORC serializers build on it; until
//! they exist, `format_conversion` is not accepted in the configuration.

pub mod columnar;
pub mod deserializer;
pub mod parquet;
pub mod schema;
pub mod timestamp;
