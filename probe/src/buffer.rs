//! The disk buffer: every sample is written here before it is sent, and leaves only once
//! the ingest service has answered 202 for it.
//!
//! Layout: append-only segment files `<id>.seg` (ids rising) holding records
//! `[length u32 LE][crc32 u32 LE][sample JSON]`, and a `cursor` file naming the first record
//! not yet accepted (`segment offset index`). Delivery takes records in order from the
//! cursor, so one position says everything about what is acknowledged.
//!
//! Crash safety: a record is written with one `write` call, so after `kill -9` it is in the
//! page cache and survives. Segments are `fdatasync`ed at most once per second
//! ([`Buffer::sync`], driven by the agent), at rotation and at shutdown: a power loss loses
//! at most the last second. A record cut short by a crash fails its length or checksum; it
//! is cut off at start-up and counted as dropped (reason `corrupt`), never fatal. The cursor
//! is replaced atomically (write, rename); if the rename is lost, the batch is sent again,
//! which the natural key makes harmless.
//!
//! Bound: beyond `maxBytes` whole oldest segments are deleted; every sample in them that was
//! not yet accepted is counted (reason `buffer_full`) and logged.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fiberstack_model::Sample;

use crate::metrics::{DropReason, Stats};

const RECORD_HEADER: u64 = 8;
/// Larger records are corruption: a sample is at most a few KiB (metadata ≤ 8 KiB).
const MAX_RECORD: u32 = 1 << 20;

/// Why the buffer could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("a sample could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

impl BufferError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Encode(_) => "encode",
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BufferError + '_ {
    move |source| BufferError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
struct Segment {
    id: u64,
    bytes: u64,
    records: u64,
}

/// A place in the buffer: a byte offset in a segment and how many records precede it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
    pub index: u64,
}

/// Samples read for one batch, and where the batch ends.
#[derive(Debug)]
pub struct Pending {
    pub samples: Vec<Sample>,
    pub end: Position,
}

/// The disk buffer of one probe process (the directory is not shared).
#[derive(Debug)]
pub struct Buffer {
    dir: PathBuf,
    max_bytes: u64,
    segment_max: u64,
    /// Oldest first; the last is the one written to. Never empty once opened.
    segments: VecDeque<Segment>,
    writer: File,
    cursor: Position,
    unsynced: bool,
    stats: Arc<Stats>,
    /// The record `append` encodes into, kept for its allocation.
    record: Vec<u8>,
}

/// Default `buffer.maxBytes` and why it is enough: a typical config is 20 targets at a 60 s
/// interval, 28,800 samples a day; a sample record is about 250 bytes (ICMP with all figures;
/// HTTP with phases up to 400), so a day is about 7 MiB. The model's default of 64 MiB holds
/// about 9 days of that, and still a day at 180 targets.
pub const TYPICAL_SAMPLE_BYTES: u64 = 250;

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.seg"))
}

/// Reads the valid records of a segment file: their count and the length they cover. Stops
/// at the first torn or corrupt record.
fn scan(path: &Path) -> io::Result<(u64, u64, Vec<u64>)> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut reader = BufReader::new(file);
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    let mut payload = Vec::new();
    while let Ok(Some(n)) = read_record(&mut reader, &mut payload) {
        offsets.push(offset);
        offset += RECORD_HEADER + n as u64;
    }
    Ok((len, offset, offsets))
}

/// Reads one record into `payload`; `None` at a clean end, `Err` for a torn or corrupt one.
fn read_record(reader: &mut impl Read, payload: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let mut header = [0u8; RECORD_HEADER as usize];
    match reader.read_exact(&mut header[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    reader.read_exact(&mut header[1..])?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad record length",
        ));
    }
    payload.resize(len as usize, 0);
    reader.read_exact(payload)?;
    if crc32fast::hash(payload) != crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "checksum mismatch",
        ));
    }
    Ok(Some(len as usize))
}

impl Buffer {
    /// Opens (or creates) the buffer in `dir`, cutting off records torn by a crash.
    pub fn open(dir: &Path, max_bytes: u64, stats: Arc<Stats>) -> Result<Self, BufferError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let cursor_file = dir.join("cursor");
        let saved = fs::read_to_string(&cursor_file).ok().and_then(|t| {
            let v: Vec<u64> = t
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            (v.len() == 3).then(|| Position {
                segment: v[0],
                offset: v[1],
                index: v[2],
            })
        });
        let mut segments = VecDeque::new();
        let mut cursor = None;
        for id in ids {
            let path = segment_path(dir, id);
            if saved.is_some_and(|c| id < c.segment) {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let (len, valid, offsets) = scan(&path).map_err(io_err(&path))?;
            if valid < len {
                tracing::warn!(segment = %path.display(), kept_bytes = valid, cut_bytes = len - valid, "buffer segment ends in a torn or corrupt record (a crash during a write); cutting it off");
                stats.dropped(DropReason::Corrupt, 1);
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(valid))
                    .map_err(io_err(&path))?;
            }
            if cursor.is_none() {
                // The saved cursor holds only if it points into this, the oldest, segment.
                let c = match saved {
                    Some(c) if c.segment == id => {
                        let index = offsets.partition_point(|o| *o < c.offset) as u64;
                        let offset = offsets.get(index as usize).copied().unwrap_or(valid);
                        Position {
                            segment: id,
                            offset,
                            index,
                        }
                    }
                    _ => Position {
                        segment: id,
                        offset: 0,
                        index: 0,
                    },
                };
                cursor = Some(c);
            }
            segments.push_back(Segment {
                id,
                bytes: valid,
                records: offsets.len() as u64,
            });
        }
        if segments.is_empty() {
            let id = saved.map_or(1, |c| c.segment + 1);
            segments.push_back(Segment {
                id,
                bytes: 0,
                records: 0,
            });
            cursor = Some(Position {
                segment: id,
                offset: 0,
                index: 0,
            });
        }
        let last = segments.back().expect("not empty").id;
        let path = segment_path(dir, last);
        let writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let buffer = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            // Dropping whole segments: a sixteenth of the buffer at a time is fine-grained
            // enough, and few files.
            segment_max: (max_bytes / 16).clamp(64 << 10, 8 << 20),
            segments,
            writer,
            cursor: cursor.expect("set with the first segment"),
            unsynced: false,
            stats,
            record: Vec::new(),
        };
        buffer.publish();
        Ok(buffer)
    }

    /// Samples not yet accepted.
    pub fn pending(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum::<u64>() - self.cursor.index
    }

    /// Bytes of the segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    fn publish(&self) {
        self.stats
            .buffer_samples
            .store(self.pending(), Ordering::Relaxed);
        self.stats
            .buffer_bytes
            .store(self.bytes(), Ordering::Relaxed);
    }

    /// Appends a sample; makes room by dropping the oldest segments when full.
    pub fn append(&mut self, sample: &Sample) -> Result<(), BufferError> {
        // Encoded into a buffer kept between appends: one allocation reused, not two per
        // sample (measured: allocation was a sixth of the append's CPU).
        let mut record = std::mem::take(&mut self.record);
        let appended = self.append_record(sample, &mut record);
        self.record = record;
        appended
    }

    fn append_record(&mut self, sample: &Sample, record: &mut Vec<u8>) -> Result<(), BufferError> {
        record.clear();
        record.extend_from_slice(&[0; RECORD_HEADER as usize]);
        serde_json::to_writer(&mut *record, sample)?;
        let payload = &record[RECORD_HEADER as usize..];
        let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
        record[..4].copy_from_slice(&len.to_le_bytes());
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        let size = record.len() as u64;
        let current = self.segments.back().expect("never empty");
        if current.bytes > 0 && current.bytes + size > self.segment_max {
            self.rotate()?;
        }
        while self.bytes() + size > self.max_bytes && self.segments.len() > 1 {
            self.drop_oldest()?;
        }
        let id = self.segments.back().expect("never empty").id;
        self.writer
            .write_all(record)
            .map_err(|e| io_err(&segment_path(&self.dir, id))(e))?;
        let current = self.segments.back_mut().expect("never empty");
        current.bytes += size;
        current.records += 1;
        self.unsynced = true;
        self.publish();
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), BufferError> {
        self.sync()?;
        let id = self.segments.back().expect("never empty").id + 1;
        let path = segment_path(&self.dir, id);
        self.writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.segments.push_back(Segment {
            id,
            bytes: 0,
            records: 0,
        });
        Ok(())
    }

    fn drop_oldest(&mut self) -> Result<(), BufferError> {
        let oldest = self.segments.pop_front().expect("more than one segment");
        let lost = oldest.records - self.cursor.index;
        let path = segment_path(&self.dir, oldest.id);
        fs::remove_file(&path).map_err(io_err(&path))?;
        let next = self.segments.front().expect("more than one segment").id;
        self.cursor = Position {
            segment: next,
            offset: 0,
            index: 0,
        };
        if lost > 0 {
            self.stats.dropped(DropReason::BufferFull, lost);
            tracing::warn!(
                dropped = lost,
                max_bytes = self.max_bytes,
                "buffer full: dropped the oldest samples, which will never be delivered"
            );
        }
        Ok(())
    }

    /// Flushes appended records to the disk (see the module's crash-safety note).
    pub fn sync(&mut self) -> Result<(), BufferError> {
        if self.unsynced {
            let path = segment_path(&self.dir, self.segments.back().expect("never empty").id);
            self.writer.sync_data().map_err(io_err(&path))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// A handle to sync the current segment with off the async thread (an `fdatasync` can
    /// take milliseconds on a busy disk, which would delay every measurement in flight);
    /// `None` when nothing was written since the last one.
    pub fn take_unsynced(&mut self) -> Result<Option<File>, BufferError> {
        if !self.unsynced {
            return Ok(None);
        }
        let path = segment_path(&self.dir, self.segments.back().expect("never empty").id);
        let file = self.writer.try_clone().map_err(io_err(&path))?;
        self.unsynced = false;
        Ok(Some(file))
    }

    /// Reads up to `max` samples from the cursor on, without moving it.
    pub fn peek(&self, max: usize) -> Result<Pending, BufferError> {
        let mut samples = Vec::new();
        let mut end = self.cursor;
        let mut payload = Vec::new();
        for segment in &self.segments {
            if samples.len() >= max {
                break;
            }
            if segment.id < end.segment {
                continue;
            }
            if segment.id > end.segment {
                end = Position {
                    segment: segment.id,
                    offset: 0,
                    index: 0,
                };
            }
            if end.index >= segment.records {
                continue;
            }
            let path = segment_path(&self.dir, segment.id);
            let mut file = File::open(&path).map_err(io_err(&path))?;
            file.seek(SeekFrom::Start(end.offset))
                .map_err(io_err(&path))?;
            let mut reader = BufReader::new(file.take(segment.bytes - end.offset));
            while samples.len() < max && end.index < segment.records {
                let n = match read_record(&mut reader, &mut payload) {
                    Ok(Some(n)) => n,
                    _ => break,
                };
                end.offset += RECORD_HEADER + n as u64;
                end.index += 1;
                match serde_json::from_slice(&payload) {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "a buffered record is not a sample; dropping it");
                        self.stats.dropped(DropReason::Corrupt, 1);
                    }
                }
            }
        }
        Ok(Pending { samples, end })
    }

    /// Marks everything before `end` as accepted: moves the cursor and deletes the segments
    /// left behind. A position in a segment already dropped (buffer full while the batch was
    /// in flight) changes nothing.
    pub fn ack(&mut self, end: Position) -> Result<(), BufferError> {
        let front = self.segments.front().expect("never empty").id;
        if end.segment < front
            || (end.segment == self.cursor.segment && end.offset <= self.cursor.offset)
        {
            return Ok(());
        }
        let mut end = end;
        while self.segments.len() > 1 {
            let front = self.segments.front().expect("never empty");
            let fully_read =
                front.id < end.segment || (front.id == end.segment && end.index >= front.records);
            if !fully_read {
                break;
            }
            let path = segment_path(&self.dir, front.id);
            fs::remove_file(&path).map_err(io_err(&path))?;
            self.segments.pop_front();
            let next = self.segments.front().expect("more than one").id;
            if end.segment < next {
                end = Position {
                    segment: next,
                    offset: 0,
                    index: 0,
                };
            }
        }
        self.cursor = end;
        let tmp = self.dir.join("cursor.tmp");
        let text = format!("{} {} {}\n", end.segment, end.offset, end.index);
        fs::write(&tmp, text).map_err(io_err(&tmp))?;
        fs::rename(&tmp, self.dir.join("cursor")).map_err(io_err(&tmp))?;
        self.publish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use fiberstack_model::CheckKind;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("fiber-probe-buffer-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn sample(i: usize) -> Sample {
        let mut s = Sample::new(Utc::now(), format!("t{i}"), CheckKind::Tcp, true);
        s.latency_ms = Some(i as f64);
        s
    }

    fn names(p: &Pending) -> Vec<String> {
        p.samples.iter().map(|s| s.target.clone()).collect()
    }

    #[test]
    fn samples_stay_until_acknowledged_and_survive_reopening() {
        let d = dir("ack");
        let stats = Arc::new(Stats::default());
        let mut b = Buffer::open(&d, 1 << 20, stats.clone()).unwrap();
        for i in 0..10 {
            b.append(&sample(i)).unwrap();
        }
        let first = b.peek(4).unwrap();
        assert_eq!(names(&first), ["t0", "t1", "t2", "t3"]);
        assert_eq!(
            names(&b.peek(4).unwrap()),
            names(&first),
            "peek does not consume"
        );
        b.ack(first.end).unwrap();
        assert_eq!(b.pending(), 6);
        drop(b);
        let mut b = Buffer::open(&d, 1 << 20, stats.clone()).unwrap();
        assert_eq!(b.pending(), 6);
        let rest = b.peek(100).unwrap();
        assert_eq!(rest.samples.len(), 6);
        assert_eq!(rest.samples[0].target, "t4");
        b.ack(rest.end).unwrap();
        assert_eq!(b.pending(), 0);
        assert_eq!(stats.buffer_samples.load(Ordering::Relaxed), 0);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_last_record_is_cut_off_not_fatal() {
        let d = dir("torn");
        let stats = Arc::new(Stats::default());
        let mut b = Buffer::open(&d, 1 << 20, stats.clone()).unwrap();
        for i in 0..3 {
            b.append(&sample(i)).unwrap();
        }
        drop(b);
        let seg = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
        // Half a record, as a crash in the middle of a write leaves it.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&200u32.to_le_bytes()).unwrap();
        f.write_all(&[1, 2, 3, 4, b'{', b'"']).unwrap();
        drop(f);
        let mut b = Buffer::open(&d, 1 << 20, stats.clone()).unwrap();
        assert_eq!(b.pending(), 3);
        assert_eq!(stats.dropped_total(DropReason::Corrupt), 1);
        b.append(&sample(3)).unwrap();
        assert_eq!(names(&b.peek(10).unwrap()), ["t0", "t1", "t2", "t3"]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_corrupt_checksum_ends_the_valid_part() {
        let d = dir("crc");
        let stats = Arc::new(Stats::default());
        let mut b = Buffer::open(&d, 1 << 20, stats.clone()).unwrap();
        for i in 0..3 {
            b.append(&sample(i)).unwrap();
        }
        drop(b);
        let seg = segment_path(&d, 1);
        let mut bytes = fs::read(&seg).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xFF;
        fs::write(&seg, bytes).unwrap();
        let b = Buffer::open(&d, 1 << 20, stats.clone()).unwrap();
        assert_eq!(names(&b.peek(10).unwrap()), ["t0", "t1"]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_acknowledgement_for_samples_dropped_meanwhile_changes_nothing() {
        let d = dir("ack-dropped");
        let stats = Arc::new(Stats::default());
        let mut b = Buffer::open(&d, 1 << 20, stats.clone()).unwrap();
        b.append(&sample(0)).unwrap();
        // A batch is in flight while the outage fills the buffer past its bound.
        let in_flight = b.peek(10).unwrap();
        let mut i = 1;
        while stats.dropped_total(DropReason::BufferFull) == 0 {
            b.append(&sample(i)).unwrap();
            i += 1;
        }
        let pending = b.pending();
        let head = b.peek(1).unwrap().samples[0].target.clone();
        b.ack(in_flight.end).unwrap();
        assert_eq!(
            b.pending(),
            pending,
            "the late 202 must not acknowledge newer samples"
        );
        assert_eq!(b.peek(1).unwrap().samples[0].target, head);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn full_buffer_drops_oldest_first_and_counts_every_sample() {
        let d = dir("full");
        let stats = Arc::new(Stats::default());
        let max = 1 << 20;
        let mut b = Buffer::open(&d, max, stats.clone()).unwrap();
        let total = 20_000;
        for i in 0..total {
            b.append(&sample(i)).unwrap();
            assert!(b.bytes() <= max, "buffer exceeds its bound at sample {i}");
        }
        let dropped = stats.dropped_total(DropReason::BufferFull);
        assert!(dropped > 0, "20,000 samples do not fit in 1 MiB");
        assert_eq!(
            dropped + b.pending(),
            total as u64,
            "every sample is kept or counted"
        );
        let kept = b.peek(usize::MAX).unwrap();
        assert_eq!(kept.samples.len() as u64, b.pending());
        assert_eq!(
            kept.samples[0].target,
            format!("t{dropped}"),
            "the oldest went first"
        );
        assert_eq!(
            kept.samples.last().unwrap().target,
            format!("t{}", total - 1)
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
