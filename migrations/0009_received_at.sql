-- Completeness (issue 13): when each sample reached ingest, so that samples delivered late
-- (from a probe's disk buffer, after an outage of the probe's link or of ingest) can be told
-- from samples that arrived as they were measured.
--
-- * metrics.received_at: the time ingest appended the sample's batch to the region's stream
--   (the Redis stream entry's id, which Redis assigns from its clock at XADD). NULL for
--   samples stored before this migration and for rows written by hand.
-- * A sample is "late" when received_at is more than 3 of its probe's intervals after its
--   time (the operator's status counts them: FiberProbe status.summary.lateSamples).
--
-- Adding a nullable column without a default rewrites nothing, in both storage modes
-- (TimescaleDB accepts it on a hypertable with compressed chunks).

alter table metrics add column if not exists received_at timestamptz;
