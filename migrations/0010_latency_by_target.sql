-- The fleet's "Worst targets" at fleet scale (issue 17): it ranks targets on uptime and loss
-- from the summaries, then merges the hourly latency histograms only of those that can make
-- the table, not of every target. Finding one target's histograms needs an index by probe and
-- target: without one, each target read every histogram of the range; with one that leaves
-- out the bins, each read its rows from pages all over the table (30 ms a target over 7 days
-- of 1,000 targets on PostgreSQL 15). This one holds what the merge reads, so it is read
-- alone (index-only once vacuum has marked the pages). On a continuous aggregate
-- (TimescaleDB mode) the index goes to its materialized hypertable.

create index if not exists metrics_latency_hourly_probe_target
    on metrics_latency_hourly (probe, target, bucket) include (region, bin, samples);
