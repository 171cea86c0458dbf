//! Rows of typed cells into Arrow record batches with the table schema's types: what the Parquet and
//! ORC writers consume. Nested columns are assembled from their children's arrays, offsets and
//! validity, so lists, maps and structs nest to any depth the schema allows.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, Int8Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, ListArray, MapArray, RecordBatch, StructArray};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, FieldRef, Fields, SchemaRef};

use super::deserializer::Cell;
use super::schema::{ColumnType, TableSchema};

/// Accumulates rows and produces record batches.
pub struct BatchBuilder {
    schema: SchemaRef,
    columns: Vec<ColumnBuilder>,
    rows: usize,
    bytes: usize,
}

impl BatchBuilder {
    pub fn new(table: &TableSchema) -> BatchBuilder {
        BatchBuilder {
            schema: Arc::new(table.to_arrow()),
            columns: table
                .columns
                .iter()
                .map(|c| ColumnBuilder::new(&c.ty))
                .collect(),
            rows: 0,
            bytes: 0,
        }
    }

    /// The Arrow schema of the batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Appends a row produced by the deserializer for this schema.
    pub fn push(&mut self, row: &[Cell]) {
        debug_assert_eq!(row.len(), self.columns.len());
        for (builder, cell) in self.columns.iter_mut().zip(row) {
            builder.append(cell);
        }
        self.rows += 1;
        self.bytes += row.iter().map(approximate_size).sum::<usize>();
    }

    /// Rows since the last [`BatchBuilder::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Approximate bytes of the rows since the last [`BatchBuilder::finish`] (values, not
    /// overhead), so writers can cut batches, and with them row groups, by size.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The rows so far as a batch; the builder starts over empty.
    pub fn finish(&mut self) -> RecordBatch {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        self.rows = 0;
        self.bytes = 0;
        RecordBatch::try_new(Arc::clone(&self.schema), arrays)
            .expect("column builders follow the schema")
    }
}

/// One column's builder, mirroring its type.
enum ColumnBuilder {
    Utf8(StringBuilder),
    Int8(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, DataType),
    Bool(BooleanBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Date(Date32Builder),
    Binary(BinaryBuilder),
    List {
        field: FieldRef,
        offsets: Vec<i32>,
        valid: Vec<bool>,
        child: Box<ColumnBuilder>,
    },
    Map {
        entries: FieldRef,
        kv: Fields,
        offsets: Vec<i32>,
        valid: Vec<bool>,
        keys: Box<ColumnBuilder>,
        values: Box<ColumnBuilder>,
    },
    Struct {
        fields: Fields,
        valid: Vec<bool>,
        children: Vec<ColumnBuilder>,
    },
}

impl ColumnBuilder {
    fn new(ty: &ColumnType) -> ColumnBuilder {
        match ty {
            ColumnType::String | ColumnType::Char(_) | ColumnType::Varchar(_) => {
                ColumnBuilder::Utf8(StringBuilder::new())
            }
            ColumnType::TinyInt => ColumnBuilder::Int8(Int8Builder::new()),
            ColumnType::SmallInt => ColumnBuilder::Int16(Int16Builder::new()),
            ColumnType::Int => ColumnBuilder::Int32(Int32Builder::new()),
            ColumnType::BigInt => ColumnBuilder::Int64(Int64Builder::new()),
            ColumnType::Float => ColumnBuilder::Float32(Float32Builder::new()),
            ColumnType::Double => ColumnBuilder::Float64(Float64Builder::new()),
            ColumnType::Decimal { .. } => {
                ColumnBuilder::Decimal(Decimal128Builder::new(), ty.to_arrow())
            }
            ColumnType::Boolean => ColumnBuilder::Bool(BooleanBuilder::new()),
            ColumnType::Timestamp => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            ColumnType::Date => ColumnBuilder::Date(Date32Builder::new()),
            ColumnType::Binary => ColumnBuilder::Binary(BinaryBuilder::new()),
            ColumnType::Array(item) => {
                let DataType::List(field) = ty.to_arrow() else {
                    unreachable!("arrays map to lists")
                };
                ColumnBuilder::List {
                    field,
                    offsets: vec![0],
                    valid: Vec::new(),
                    child: Box::new(ColumnBuilder::new(item)),
                }
            }
            ColumnType::Map(k, v) => {
                let DataType::Map(entries, _) = ty.to_arrow() else {
                    unreachable!("maps map to maps")
                };
                let DataType::Struct(kv) = entries.data_type().clone() else {
                    unreachable!("map entries are structs")
                };
                ColumnBuilder::Map {
                    entries,
                    kv,
                    offsets: vec![0],
                    valid: Vec::new(),
                    keys: Box::new(ColumnBuilder::new(k)),
                    values: Box::new(ColumnBuilder::new(v)),
                }
            }
            ColumnType::Struct(members) => {
                let DataType::Struct(fields) = ty.to_arrow() else {
                    unreachable!("structs map to structs")
                };
                ColumnBuilder::Struct {
                    fields,
                    valid: Vec::new(),
                    children: members.iter().map(|(_, t)| ColumnBuilder::new(t)).collect(),
                }
            }
        }
    }

    /// Appends a cell; a cell of another shape than the column (which the deserializer never
    /// produces) is stored as null.
    fn append(&mut self, cell: &Cell) {
        match (self, cell) {
            (ColumnBuilder::Utf8(b), Cell::Str(s)) => b.append_value(s),
            (ColumnBuilder::Int8(b), Cell::Int(i)) => b.append_value(*i as i8),
            (ColumnBuilder::Int16(b), Cell::Int(i)) => b.append_value(*i as i16),
            (ColumnBuilder::Int32(b), Cell::Int(i)) => b.append_value(*i as i32),
            (ColumnBuilder::Int64(b), Cell::Int(i)) => b.append_value(*i),
            (ColumnBuilder::Float32(b), Cell::Float(f)) => b.append_value(*f as f32),
            (ColumnBuilder::Float64(b), Cell::Float(f)) => b.append_value(*f),
            (ColumnBuilder::Decimal(b, _), Cell::Decimal(d)) => b.append_value(*d),
            (ColumnBuilder::Bool(b), Cell::Bool(v)) => b.append_value(*v),
            (ColumnBuilder::Timestamp(b), Cell::Timestamp(t)) => b.append_value(*t),
            (ColumnBuilder::Date(b), Cell::Date(d)) => b.append_value(*d),
            (ColumnBuilder::Binary(b), Cell::Bytes(v)) => b.append_value(v),
            (
                ColumnBuilder::List {
                    offsets,
                    valid,
                    child,
                    ..
                },
                Cell::List(items),
            ) => {
                for item in items {
                    child.append(item);
                }
                offsets.push(offsets.last().copied().unwrap_or(0) + items.len() as i32);
                valid.push(true);
            }
            (
                ColumnBuilder::Map {
                    offsets,
                    valid,
                    keys,
                    values,
                    ..
                },
                Cell::Map(entries),
            ) => {
                for (k, v) in entries {
                    keys.append(k);
                    values.append(v);
                }
                offsets.push(offsets.last().copied().unwrap_or(0) + entries.len() as i32);
                valid.push(true);
            }
            (
                ColumnBuilder::Struct {
                    valid, children, ..
                },
                Cell::Struct(cells),
            ) => {
                for (child, c) in children.iter_mut().zip(cells) {
                    child.append(c);
                }
                valid.push(true);
            }
            (builder, _) => builder.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Int8(b) => b.append_null(),
            ColumnBuilder::Int16(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Decimal(b, _) => b.append_null(),
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Timestamp(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
            ColumnBuilder::List { offsets, valid, .. }
            | ColumnBuilder::Map { offsets, valid, .. } => {
                offsets.push(offsets.last().copied().unwrap_or(0));
                valid.push(false);
            }
            ColumnBuilder::Struct {
                valid, children, ..
            } => {
                // Struct children stay as long as the struct: a null struct has null members.
                for child in children {
                    child.append_null();
                }
                valid.push(false);
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Utf8(b) => Arc::new(b.finish()),
            ColumnBuilder::Int8(b) => Arc::new(b.finish()),
            ColumnBuilder::Int16(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(b, ty) => Arc::new(b.finish().with_data_type(ty.clone())),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish()),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
            ColumnBuilder::List {
                field,
                offsets,
                valid,
                child,
            } => {
                let offsets = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                let nulls = NullBuffer::from(std::mem::take(valid));
                Arc::new(ListArray::new(
                    Arc::clone(field),
                    offsets,
                    child.finish(),
                    Some(nulls),
                ))
            }
            ColumnBuilder::Map {
                entries,
                kv,
                offsets,
                valid,
                keys,
                values,
            } => {
                let offsets = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                let nulls = NullBuffer::from(std::mem::take(valid));
                let pairs =
                    StructArray::new(kv.clone(), vec![keys.finish(), values.finish()], None);
                Arc::new(MapArray::new(
                    Arc::clone(entries),
                    offsets,
                    pairs,
                    Some(nulls),
                    false,
                ))
            }
            ColumnBuilder::Struct {
                fields,
                valid,
                children,
            } => {
                let nulls = NullBuffer::from(std::mem::take(valid));
                let arrays = children.iter_mut().map(ColumnBuilder::finish).collect();
                Arc::new(StructArray::new(fields.clone(), arrays, Some(nulls)))
            }
        }
    }
}

/// The bytes a cell adds to a batch, roughly.
fn approximate_size(cell: &Cell) -> usize {
    match cell {
        Cell::Null => 1,
        Cell::Bool(_) => 1,
        Cell::Int(_) | Cell::Float(_) | Cell::Timestamp(_) | Cell::Date(_) => 8,
        Cell::Decimal(_) => 16,
        Cell::Str(s) => s.len() + 4,
        Cell::Bytes(b) => b.len() + 4,
        Cell::List(items) | Cell::Struct(items) => {
            4 + items.iter().map(approximate_size).sum::<usize>()
        }
        Cell::Map(entries) => {
            4 + entries
                .iter()
                .map(|(k, v)| approximate_size(k) + approximate_size(v))
                .sum::<usize>()
        }
    }
}
