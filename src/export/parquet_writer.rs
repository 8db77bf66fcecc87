//! Parquet through arrow-rs: rows are appended to Arrow builders, and every [`BATCH_ROWS`] rows
//! the `RecordBatch` goes through a bounded channel ([`ENCODE_QUEUE`] batches) to an
//! `export-parquet` thread whose `ArrowWriter` encodes it into ZSTD-compressed row groups of at
//! most [`ROW_GROUP_ROWS`] rows or [`ROW_GROUP_BYTES`] (whichever comes first). Reading SQLite
//! and building batches on one core, encoding and compressing on the other, about halves the
//! time of one thread doing both (`bench export`); memory stays bounded whatever the run's
//! size. The thread is joined by `finish` or, on an error, by `Drop`. Every column is
//! nullable: Int64, Float64 or Utf8.

use std::fs::File;
use std::sync::Arc;
use std::thread::JoinHandle;

use arrow_array::builder::{Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use rusqlite::types::ValueRef;

use super::write::{Column, Kind, Mismatches, OutputFile, TableWriter, Typed, WriteError, Written};

/// Rows per Arrow batch handed to the Parquet writer (`bench export` measured).
pub(crate) const BATCH_ROWS: usize = 8_192;
/// Most rows in one row group.
pub(crate) const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Most encoded bytes held for one row group before it is written out.
pub(crate) const ROW_GROUP_BYTES: usize = 32 << 20;
/// Batches waiting for the encoder thread.
pub(crate) const ENCODE_QUEUE: usize = 2;
/// zstd's fastest level: level 3 made a file only 0.5 % smaller (`bench export`, 1M events:
/// 79.9 vs 80.3 MB); its time difference was within the noise of a loaded box.
const ZSTD_LEVEL: i32 = 1;

pub(crate) struct ParquetTable {
    output: Option<OutputFile>,
    /// To the encoder thread; None once closed.
    batches: Option<crossbeam_channel::Sender<RecordBatch>>,
    encoder: Option<JoinHandle<Result<File, WriteError>>>,
    schema: SchemaRef,
    columns: Vec<Column>,
    builders: Vec<Builder>,
    rows: usize,
    mismatches: Mismatches,
}

enum Builder {
    Integer(Int64Builder),
    Real(Float64Builder),
    Text(StringBuilder),
}

impl Builder {
    fn new(kind: Kind) -> Builder {
        match kind {
            Kind::Integer => Builder::Integer(Int64Builder::with_capacity(BATCH_ROWS)),
            Kind::Real => Builder::Real(Float64Builder::with_capacity(BATCH_ROWS)),
            Kind::Text | Kind::Json => Builder::Text(StringBuilder::new()),
        }
    }

    /// The batch so far; the builder starts the next one with room for as many bytes as this
    /// one took (plus an eighth), so it is not grown by doubling and copying every batch.
    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Integer(b) => Arc::new(b.finish()),
            Builder::Real(b) => Arc::new(b.finish()),
            Builder::Text(b) => {
                let array = b.finish();
                let bytes = array.value_data().len();
                *b = StringBuilder::with_capacity(BATCH_ROWS, bytes + bytes / 8);
                Arc::new(array)
            }
        }
    }
}

impl ParquetTable {
    pub(crate) fn new(
        output: OutputFile,
        file: File,
        columns: &[Column],
    ) -> Result<ParquetTable, WriteError> {
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| {
                let data_type = match c.kind {
                    Kind::Integer => DataType::Int64,
                    Kind::Real => DataType::Float64,
                    Kind::Text | Kind::Json => DataType::Utf8,
                };
                Field::new(&c.name, data_type, true)
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES));
        // Keys and lines are unique per row: a dictionary would only be built to be dropped,
        // and min/max statistics of whole lines help no query.
        for unique in ["event_key", "ts", "data"] {
            if columns.iter().any(|c| c.name == unique) {
                let path = ColumnPath::from(unique);
                props = props.set_column_dictionary_enabled(path.clone(), false);
                if unique == "data" {
                    props = props.set_column_statistics_enabled(path, EnabledStatistics::None);
                }
            }
        }
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props.build()))?;
        let (batches, received) = crossbeam_channel::bounded::<RecordBatch>(ENCODE_QUEUE);
        let encoder = std::thread::Builder::new().name("export-parquet".into()).spawn(
            move || -> Result<File, WriteError> {
                for batch in received {
                    writer.write(&batch)?;
                }
                Ok(writer.into_inner()?)
            },
        )?;
        Ok(ParquetTable {
            output: Some(output),
            batches: Some(batches),
            encoder: Some(encoder),
            schema,
            columns: columns.to_vec(),
            builders: columns.iter().map(|c| Builder::new(c.kind)).collect(),
            rows: 0,
            mismatches: Mismatches::new(columns.len()),
        })
    }

    fn flush_batch(&mut self) -> Result<(), WriteError> {
        if self.rows == 0 {
            return Ok(());
        }
        let arrays = self.builders.iter_mut().map(Builder::finish).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        self.rows = 0;
        let sent = self.batches.as_ref().map(|batches| batches.send(batch).is_ok());
        if sent != Some(true) {
            // The encoder stopped: its error says why.
            self.join_encoder()?;
        }
        Ok(())
    }

    /// Closes the channel and waits for the encoder: the finished file, or its error.
    fn join_encoder(&mut self) -> Result<File, WriteError> {
        self.batches = None;
        match self.encoder.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => {
                Err(std::io::Error::other("the Parquet encoder thread panicked").into())
            }
            None => Err(std::io::Error::other("the Parquet encoder already stopped").into()),
        }
    }
}

impl Drop for ParquetTable {
    fn drop(&mut self) {
        // Only after an error (finish joined it otherwise): the temp file goes with `output`.
        let _ = self.join_encoder();
    }
}

impl TableWriter for ParquetTable {
    fn write_row(&mut self, row: &[ValueRef<'_>]) -> Result<(), WriteError> {
        for (idx, (column, &value)) in self.columns.iter().zip(row).enumerate() {
            let typed = self.mismatches.typed(idx, column.kind, value);
            match (&mut self.builders[idx], typed) {
                (Builder::Integer(b), Typed::Integer(i)) => b.append_value(i),
                (Builder::Real(b), Typed::Real(r)) => b.append_value(r),
                (Builder::Text(b), Typed::Text(t)) => b.append_value(t),
                (Builder::Integer(b), _) => b.append_null(),
                (Builder::Real(b), _) => b.append_null(),
                (Builder::Text(b), _) => b.append_null(),
            }
        }
        self.rows += 1;
        if self.rows == BATCH_ROWS {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Written, WriteError> {
        self.flush_batch()?;
        let file = self.join_encoder()?;
        let output = self.output.take().expect("output until finished");
        let bytes = output.commit(file)?;
        Ok(Written { bytes, mismatched: self.mismatches.report(&self.columns) })
    }
}
