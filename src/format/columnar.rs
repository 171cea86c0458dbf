//! Rows of typed cells into Arrow record batches with the table schema's types: what the Parquet and
//! ORC writers consume. Nested columns are assembled from their children's arrays, offsets and
//! validity, so lists, maps and structs nest to any depth the schema allows.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int16Array, Int32Array, Int64Array, Int8Array, ListArray, MapArray, RecordBatch, StringArray,
    StructArray, TimestampMicrosecondArray,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer};
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

    /// The column builders, for the decoder, which appends to them directly.
    pub(crate) fn columns_mut(&mut self) -> &mut [ColumnBuilder] {
        &mut self.columns
    }

    /// Sets the row count after the decoder appended (or cut off) rows.
    pub(crate) fn set_len(&mut self, rows: usize) {
        self.rows = rows;
    }

    /// Counts `n` more bytes of input towards [`BatchBuilder::bytes`].
    pub(crate) fn add_bytes(&mut self, n: usize) {
        self.bytes += n;
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

/// A column being built. Leaves are plain vectors so that a half-decoded record can be cut off
/// again ([`ColumnBuilder::truncate`]); nested columns keep offsets and validity and build their
/// children the same way.
pub(crate) enum ColumnBuilder {
    Bool(Leaf<bool>),
    /// Every integer width, stored as i64 and narrowed (range-checked by the decoder) at finish.
    Int(Leaf<i64>, DataType),
    Float32(Leaf<f32>),
    Float64(Leaf<f64>),
    Decimal(Leaf<i128>, DataType),
    Timestamp(Leaf<i64>),
    Date(Leaf<i32>),
    /// Strings (valid UTF-8, checked by the decoder) and binary.
    Bytes {
        utf8: bool,
        offsets: Vec<i32>,
        data: Vec<u8>,
        valid: Vec<bool>,
    },
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

/// Takes a builder's vector for an Arrow array and leaves an empty one with room for as many
/// items: batches are alike, so the next one fills without growing (each growth is a copy, and
/// fresh memory costs page faults).
fn take_sized<T>(v: &mut Vec<T>) -> Vec<T> {
    let room = Vec::with_capacity(v.len());
    std::mem::replace(v, room)
}

/// [`take_sized`] for offsets, which start again at 0.
fn take_offsets(v: &mut Vec<i32>) -> Vec<i32> {
    let mut room = Vec::with_capacity(v.len());
    room.push(0);
    std::mem::replace(v, room)
}

/// Values and validity of a primitive column.
#[derive(Default)]
pub(crate) struct Leaf<T> {
    pub values: Vec<T>,
    pub valid: Vec<bool>,
}

impl<T: Default + Copy> Leaf<T> {
    pub fn push(&mut self, v: T) {
        self.values.push(v);
        self.valid.push(true);
    }
    fn push_null(&mut self) {
        self.values.push(T::default());
        self.valid.push(false);
    }
    fn truncate(&mut self, n: usize) {
        self.values.truncate(n);
        self.valid.truncate(n);
    }
    fn take(&mut self) -> (Vec<T>, Option<NullBuffer>) {
        let valid = take_sized(&mut self.valid);
        let nulls = valid.iter().any(|v| !v).then(|| NullBuffer::from(valid));
        (take_sized(&mut self.values), nulls)
    }
}

impl ColumnBuilder {
    pub(crate) fn new(ty: &ColumnType) -> ColumnBuilder {
        match ty {
            ColumnType::String | ColumnType::Char(_) | ColumnType::Varchar(_) => {
                ColumnBuilder::Bytes {
                    utf8: true,
                    offsets: vec![0],
                    data: Vec::new(),
                    valid: Vec::new(),
                }
            }
            ColumnType::Binary => ColumnBuilder::Bytes {
                utf8: false,
                offsets: vec![0],
                data: Vec::new(),
                valid: Vec::new(),
            },
            ColumnType::TinyInt | ColumnType::SmallInt | ColumnType::Int | ColumnType::BigInt => {
                ColumnBuilder::Int(Leaf::default(), ty.to_arrow())
            }
            ColumnType::Float => ColumnBuilder::Float32(Leaf::default()),
            ColumnType::Double => ColumnBuilder::Float64(Leaf::default()),
            ColumnType::Decimal { .. } => ColumnBuilder::Decimal(Leaf::default(), ty.to_arrow()),
            ColumnType::Boolean => ColumnBuilder::Bool(Leaf::default()),
            ColumnType::Timestamp => ColumnBuilder::Timestamp(Leaf::default()),
            ColumnType::Date => ColumnBuilder::Date(Leaf::default()),
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

    /// Rows (or list items) in the column.
    pub(crate) fn len(&self) -> usize {
        match self {
            ColumnBuilder::Bool(l) => l.valid.len(),
            ColumnBuilder::Int(l, _) | ColumnBuilder::Timestamp(l) => l.valid.len(),
            ColumnBuilder::Float32(l) => l.valid.len(),
            ColumnBuilder::Float64(l) => l.valid.len(),
            ColumnBuilder::Decimal(l, _) => l.valid.len(),
            ColumnBuilder::Date(l) => l.valid.len(),
            ColumnBuilder::Bytes { valid, .. }
            | ColumnBuilder::List { valid, .. }
            | ColumnBuilder::Map { valid, .. }
            | ColumnBuilder::Struct { valid, .. } => valid.len(),
        }
    }

    /// Cuts the column back to its first `n` rows (and nested columns to those rows' items).
    pub(crate) fn truncate(&mut self, n: usize) {
        match self {
            ColumnBuilder::Bool(l) => l.truncate(n),
            ColumnBuilder::Int(l, _) | ColumnBuilder::Timestamp(l) => l.truncate(n),
            ColumnBuilder::Float32(l) => l.truncate(n),
            ColumnBuilder::Float64(l) => l.truncate(n),
            ColumnBuilder::Decimal(l, _) => l.truncate(n),
            ColumnBuilder::Date(l) => l.truncate(n),
            ColumnBuilder::Bytes {
                offsets,
                data,
                valid,
                ..
            } => {
                // Also when `n` is the row count: items of a row cut off mid-way go too.
                valid.truncate(n);
                offsets.truncate(n + 1);
                data.truncate(offsets[n] as usize);
            }
            ColumnBuilder::List {
                offsets,
                valid,
                child,
                ..
            } => {
                // Also when `n` is the row count: items of a row cut off mid-way go too.
                valid.truncate(n);
                offsets.truncate(n + 1);
                child.truncate(offsets[n] as usize);
            }
            ColumnBuilder::Map {
                offsets,
                valid,
                keys,
                values,
                ..
            } => {
                // Also when `n` is the row count: items of a row cut off mid-way go too.
                valid.truncate(n);
                offsets.truncate(n + 1);
                keys.truncate(offsets[n] as usize);
                values.truncate(offsets[n] as usize);
            }
            ColumnBuilder::Struct {
                valid, children, ..
            } => {
                valid.truncate(n);
                for c in children {
                    c.truncate(n);
                }
            }
        }
    }

    /// Appends bytes (a string's UTF-8, checked by the caller, or binary) as one value.
    pub(crate) fn push_bytes(&mut self, v: &[u8]) {
        if let ColumnBuilder::Bytes {
            offsets,
            data,
            valid,
            ..
        } = self
        {
            data.extend_from_slice(v);
            offsets.push(data.len() as i32);
            valid.push(true);
        }
    }

    /// Appends a cell; a cell of another shape than the column (which the deserializer never
    /// produces) is stored as null.
    pub(crate) fn append(&mut self, cell: &Cell) {
        match (&mut *self, cell) {
            (ColumnBuilder::Bytes { utf8: true, .. }, Cell::Str(s)) => {
                self.push_bytes(s.as_bytes())
            }
            (ColumnBuilder::Bytes { utf8: false, .. }, Cell::Bytes(b)) => self.push_bytes(b),
            (ColumnBuilder::Int(l, _), Cell::Int(i)) => l.push(*i),
            (ColumnBuilder::Float32(l), Cell::Float(f)) => l.push(*f as f32),
            (ColumnBuilder::Float64(l), Cell::Float(f)) => l.push(*f),
            (ColumnBuilder::Decimal(l, _), Cell::Decimal(d)) => l.push(*d),
            (ColumnBuilder::Bool(l), Cell::Bool(v)) => l.push(*v),
            (ColumnBuilder::Timestamp(l), Cell::Timestamp(t)) => l.push(*t),
            (ColumnBuilder::Date(l), Cell::Date(d)) => l.push(*d),
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
                offsets.push(child.len() as i32);
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
                offsets.push(keys.len() as i32);
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

    pub(crate) fn append_null(&mut self) {
        match self {
            ColumnBuilder::Bool(l) => l.push_null(),
            ColumnBuilder::Int(l, _) | ColumnBuilder::Timestamp(l) => l.push_null(),
            ColumnBuilder::Float32(l) => l.push_null(),
            ColumnBuilder::Float64(l) => l.push_null(),
            ColumnBuilder::Decimal(l, _) => l.push_null(),
            ColumnBuilder::Date(l) => l.push_null(),
            ColumnBuilder::Bytes {
                offsets,
                data,
                valid,
                ..
            } => {
                offsets.push(data.len() as i32);
                valid.push(false);
            }
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
            ColumnBuilder::Bool(l) => {
                let (values, nulls) = l.take();
                Arc::new(BooleanArray::new(BooleanBuffer::from(values), nulls))
            }
            ColumnBuilder::Int(l, ty) => {
                let (values, nulls) = l.take();
                match ty {
                    DataType::Int8 => Arc::new(Int8Array::new(
                        values.iter().map(|v| *v as i8).collect(),
                        nulls,
                    )),
                    DataType::Int16 => Arc::new(Int16Array::new(
                        values.iter().map(|v| *v as i16).collect(),
                        nulls,
                    )),
                    DataType::Int32 => Arc::new(Int32Array::new(
                        values.iter().map(|v| *v as i32).collect(),
                        nulls,
                    )),
                    _ => Arc::new(Int64Array::new(values.into(), nulls)),
                }
            }
            ColumnBuilder::Float32(l) => {
                let (values, nulls) = l.take();
                Arc::new(Float32Array::new(values.into(), nulls))
            }
            ColumnBuilder::Float64(l) => {
                let (values, nulls) = l.take();
                Arc::new(Float64Array::new(values.into(), nulls))
            }
            ColumnBuilder::Decimal(l, ty) => {
                let (values, nulls) = l.take();
                Arc::new(Decimal128Array::new(values.into(), nulls).with_data_type(ty.clone()))
            }
            ColumnBuilder::Timestamp(l) => {
                let (values, nulls) = l.take();
                Arc::new(TimestampMicrosecondArray::new(values.into(), nulls).with_timezone("UTC"))
            }
            ColumnBuilder::Date(l) => {
                let (values, nulls) = l.take();
                Arc::new(Date32Array::new(values.into(), nulls))
            }
            ColumnBuilder::Bytes {
                utf8,
                offsets,
                data,
                valid,
            } => {
                let offsets = OffsetBuffer::new(take_offsets(offsets).into());
                let data = Buffer::from_vec(take_sized(data));
                let valid = take_sized(valid);
                let nulls = valid.iter().any(|v| !v).then(|| NullBuffer::from(valid));
                if *utf8 {
                    // SAFETY: the decoder only appends valid UTF-8 to string columns (from `&str`
                    // or after `std::str::from_utf8`), and offsets come from the data's length.
                    Arc::new(unsafe { StringArray::new_unchecked(offsets, data, nulls) })
                } else {
                    Arc::new(BinaryArray::new(offsets, data, nulls))
                }
            }
            ColumnBuilder::List {
                field,
                offsets,
                valid,
                child,
            } => {
                let offsets = OffsetBuffer::new(take_offsets(offsets).into());
                let nulls = NullBuffer::from(take_sized(valid));
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
                let offsets = OffsetBuffer::new(take_offsets(offsets).into());
                let nulls = NullBuffer::from(take_sized(valid));
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
                let nulls = NullBuffer::from(take_sized(valid));
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
